/* hwact delta-GRU runtime: GRU layers driven by thresholded deltas of quantized inputs and hidden
 * state, one frame at a time. Semantics: hwact/ir/delta_gru_ops.py (hwact::delta_gru); the net
 * format: hwact/backends/delta_gru_c.py. */
#ifndef HWACT_DELTA_GRU_H
#define HWACT_DELTA_GRU_H
#include <stddef.h>
#include <stdint.h>

typedef struct {
    int32_t n_in, hidden, levels;
    float theta_x, theta_h;       /* thresholds in activation units (0: every change is sent) */
    const float *step_x;          /* n_in */
    const float *step_h;          /* hidden */
    const float *scale_x;         /* 3 * hidden: x pre-activation = acc_x * scale_x (rows r, z, n) */
    const float *scale_h;         /* 3 * hidden */
    const int32_t *bias_x;        /* 3 * hidden: accumulator start values (the biases, added once) */
    const int32_t *bias_h;
    const int8_t *wx;             /* n_in x 3 * hidden: column j of W_x contiguous */
    const int8_t *wh;             /* hidden x 3 * hidden */
    int32_t *limit_x, *limit_h;   /* code thresholds max(1, ceil(theta / step_j)) */
} dg_layer;

typedef struct {
    int32_t n_layers, key_interval, max_width;
    int64_t state_len;            /* int32 per stream: per layer codes_x, codes_h, acc_x, acc_h */
    int64_t hidden_len;           /* float per stream: per layer h */
    dg_layer *layers;
} dg_net;

/* Parse a net blob (kept alive by the caller). Returns NULL on a malformed blob. */
dg_net *dg_load(const uint8_t *blob, size_t size);
void dg_free(dg_net *net);
int64_t dg_state_len(const dg_net *net);
int64_t dg_hidden_len(const dg_net *net);
/* thresholds >= 0; layer < 0: every layer. Returns -1 on a bad value. */
int dg_set_threshold(dg_net *net, int32_t layer, float theta_x, float theta_h);
void dg_set_key_interval(dg_net *net, int32_t key_interval);
/* state: batch x state_len int32, hidden: batch x hidden_len float, frame: batch int64. */
void dg_reset(const dg_net *net, int32_t batch, int32_t *state, float *hidden, int64_t *frame);
/* Run `steps` frames of `batch` streams: x (batch, steps, n_in0) -> y (batch, steps, hidden_last).
 * Each layer reads the previous layer's h. fired[2 l] += x columns used by layer l, fired[2 l + 1]
 * += h columns used (only those weight columns are read). */
void dg_run(const dg_net *net, int32_t steps, int32_t batch, const float *x, float *y,
            int32_t *state, float *hidden, int64_t *frame, int64_t *fired);
/* Which column kernel this build uses: "avx2", "neon" or "scalar". */
const char *dg_kernel_name(void);
#endif
