/* hwact delta-network runtime: stateful sparse (delta) matrix-vector layers, one frame at a time.
 * Semantics: hwact/ir/delta_ops.py (hwact::delta_linear); the net format: hwact/backends/delta_c.py. */
#ifndef HWACT_DELTA_H
#define HWACT_DELTA_H
#include <stddef.h>
#include <stdint.h>

typedef struct {
    int32_t n_in, n_out, levels, relu;
    float threshold;
    const float *step;       /* n_in: input quantization step */
    const float *scale;      /* n_out: output = acc * scale */
    const int32_t *bias_acc; /* n_out: accumulator start value (the bias, added once) */
    const int8_t *wt;        /* n_in x n_out: column j of W is contiguous (skipped when its delta is 0) */
    int32_t *limit;          /* n_in: code threshold max(1, ceil(threshold / step_j)) */
} dl_layer;

typedef struct {
    int32_t n_layers, key_interval, max_width;
    int64_t state_len;       /* int32 values of state per stream: sum over layers of n_in + n_out */
    dl_layer *layers;
    float *scratch;          /* two activation buffers of max_width */
} dl_net;

/* Parse a net blob (kept alive by the caller). Returns NULL on a malformed blob. */
dl_net *dl_load(const uint8_t *blob, size_t size);
/* The net in file `path` (for the stand-alone runners). Returns NULL, after a message, when it cannot be
 * read or is malformed. */
dl_net *dl_read_net(const char *path);
void dl_free(dl_net *net);
int64_t dl_state_len(const dl_net *net);
int32_t dl_input_size(const dl_net *net);
int32_t dl_output_size(const dl_net *net);
/* threshold >= 0 in activation units; layer < 0: every layer. Returns -1 on a bad value. */
int dl_set_threshold(dl_net *net, int32_t layer, float threshold);
void dl_set_key_interval(dl_net *net, int32_t key_interval);
/* state: batch x state_len int32; frame: batch int64. Starts every stream. */
void dl_reset(const dl_net *net, int32_t batch, int32_t *state, int64_t *frame);
/* Run `steps` frames of `batch` streams: x (batch, steps, n_in0), y (batch, steps, n_out_last).
 * dense = 0: delta update (skips the columns of unchanged inputs); dense = 1: the dense baseline with
 * the same column kernel over every column (state untouched). fired[l] += columns used by layer l. */
void dl_run(const dl_net *net, int32_t steps, int32_t batch, const float *x, float *y,
            int32_t *state, int64_t *frame, int32_t dense, int64_t *fired);
/* Which column kernel this build uses: "avx2", "neon" or "scalar". */
const char *dl_kernel_name(void);
#endif
