/* hwact delta conv runtime: one hwact::delta_conv2d layer (hwact/ir/delta_conv_ops.py) over
 * (batch, time, C, H, W) sequences with its state carried in and out (hwact/backends/delta_conv_c.py).
 *
 * Per stream and frame: quantize every input, compact the inputs whose code changed by at least the
 * channel's code threshold into an (index, delta) list, then for each fired input (c, iy, ix) add
 * delta * W[:, c, ky, kx] into every output position (oy, ox) that tap reaches:
 *     oy * stride_y + ky * dilation_y = iy + pad_y      (same for x)
 * The accumulator is kept channel-last (oy, ox, O) so each tap is one contiguous row of O int32 adds
 * (AVX2 on x86-64, NEON on aarch64, scalar otherwise); work scales with the number of fired inputs.
 * Build without -ffast-math and with -ffp-contract=off: x / step, rint and acc * scale must round
 * exactly like the PyTorch reference. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "delta_simd.h"

/* dims: the layer's shape, as written by delta_conv_c.layer_dims() */
enum { D_C, D_H, D_W, D_O, D_KH, D_KW, D_OH, D_OW, D_SY, D_SX, D_PY, D_PX, D_DY, D_DX, D_LEVELS, D_COUNT };


const char *dc_kernel_name(void) { return delta_simd_name(); }

/* limit[c] = max(1, ceil(threshold / step[c])), float32 like the reference. Returns -1 on threshold < 0. */
int dc_limits(int32_t channels, const float *step, float threshold, int32_t *limit) {
    if (!(threshold >= 0.0f)) return -1;
    delta_code_limits(step, channels, threshold, limit);
    return 0;
}

/* The output index (>= 0) that input coordinate i reaches through tap k, or -1. */
static int32_t reach(int32_t i, int32_t k, int32_t pad, int32_t stride, int32_t dilation, int32_t size) {
    int32_t t = i + pad - k * dilation;
    if (t < 0 || t % stride != 0) return -1;
    t /= stride;
    return t < size ? t : -1;
}

/* Scatter one fired input (c, iy, ix) with code change d into the channel-last accumulator. */
static void scatter(const int32_t *dims, const int8_t *wt, int32_t *acc, int32_t c, int32_t iy, int32_t ix,
                    int32_t d) {
    const int32_t O = dims[D_O], KH = dims[D_KH], KW = dims[D_KW];
    for (int32_t ky = 0; ky < KH; ky++) {
        int32_t oy = reach(iy, ky, dims[D_PY], dims[D_SY], dims[D_DY], dims[D_OH]);
        if (oy < 0) continue;
        for (int32_t kx = 0; kx < KW; kx++) {
            int32_t ox = reach(ix, kx, dims[D_PX], dims[D_SX], dims[D_DX], dims[D_OW]);
            if (ox < 0) continue;
            delta_column_update(acc + ((size_t)oy * dims[D_OW] + ox) * O, wt + (((size_t)c * KH + ky) * KW + kx) * O, d, O);
        }
    }
}

/* One frame of one stream: in (C, H, W) -> out (O, OH, OW); codes (C, H, W) and acc (OH, OW, O) are
 * the stream's state. Returns the number of fired inputs. */
static int64_t frame_step(const int32_t *dims, const float *step, const float *scale, const int8_t *wt,
                          const int32_t *limit, const float *in, float *out, int32_t *codes, int32_t *acc,
                          int32_t *list, int key) {
    const int32_t C = dims[D_C], HW = dims[D_H] * dims[D_W], O = dims[D_O], OHW = dims[D_OH] * dims[D_OW];
    int32_t *deltas = list + (size_t)C * HW, *kbuf = deltas + (size_t)C * HW;
    int32_t used = 0;
    for (int32_t c = 0; c < C; c++) {   /* one step and one code threshold per channel */
        delta_quantize(in + (size_t)c * HW, step + c, 0, dims[D_LEVELS], HW, kbuf + (size_t)c * HW);
        used += delta_compact(kbuf + (size_t)c * HW, codes + (size_t)c * HW, limit + c, 0, HW, key, c * HW,
                              list + used, deltas + used);
    }
    for (int32_t i = 0; i < used; i++) {
        int32_t j = list[i], c = j / HW, p = j % HW;
        codes[j] += deltas[i];
        scatter(dims, wt, acc, c, p / dims[D_W], p % dims[D_W], deltas[i]);
    }
    for (int32_t q = 0; q < OHW; q++)
        for (int32_t o = 0; o < O; o++) out[(size_t)o * OHW + q] = (float)acc[(size_t)q * O + o] * scale[o];
    return used;
}

/* Run `steps` frames of `batch` streams through one layer.
 * x (batch, steps, C, H, W) float32 -> y (batch, steps, O, OH, OW) float32;
 * state (batch, C, H, W) int32, acc (batch, OH, OW, O) int32, frame (batch) int64: read and updated.
 * wt (C, KH, KW, O) int8; limit (C) from dc_limits. Returns the fired inputs over all frames. */
int64_t dc_run(const int32_t *dims, const float *step, const float *scale, const int8_t *wt, const int32_t *limit,
               int32_t key_interval, int32_t batch, int32_t steps, const float *x, float *y, int32_t *state,
               int32_t *acc, int64_t *frame) {
    const size_t in_size = (size_t)dims[D_C] * dims[D_H] * dims[D_W];
    const size_t out_size = (size_t)dims[D_O] * dims[D_OH] * dims[D_OW];
    int32_t *list = malloc(3 * sizeof(int32_t) * in_size);   /* fired indices, their deltas, the codes */
    int64_t fired = 0;
    for (int32_t b = 0; b < batch; b++) {
        for (int32_t t = 0; t < steps; t++) {
            int key = key_interval > 0 && (frame[b] % key_interval) == 0;
            fired += frame_step(dims, step, scale, wt, limit, x + ((size_t)b * steps + t) * in_size,
                                y + ((size_t)b * steps + t) * out_size, state + (size_t)b * in_size,
                                acc + (size_t)b * out_size, list, key);
            frame[b] += 1;
        }
    }
    free(list);
    return fired;
}

#ifdef DC_MAIN
/* Stand-alone runner (the aarch64 check under qemu-user): one layer from fresh streams.
 *   delta_conv IN OUT    IN: dims[15] i32, key_interval i32, threshold f32, batch i32, steps i32,
 *                        step[C] f32, scale[O] f32, bias_acc[O] i32, weight[C][KH][KW][O] i8, x f32
 *                        OUT: y f32 (batch, steps, O, OH, OW), fired i64; prints the kernel name. */
static void *take(const uint8_t **p, size_t bytes) {
    void *out = malloc(bytes ? bytes : 1);
    memcpy(out, *p, bytes);
    *p += bytes;
    return out;
}

int main(int argc, char **argv) {
    if (argc != 3) { fprintf(stderr, "usage: %s IN OUT\n", argv[0]); return 2; }
    size_t size;
    uint8_t *blob = delta_read_file(argv[1], &size);
    if (!blob) { perror(argv[1]); return 1; }
    const uint8_t *p = blob;
    int32_t *dims = take(&p, 4 * D_COUNT), *head = take(&p, 16);
    int32_t key_interval = head[0], batch = head[2], steps = head[3];
    float threshold;
    memcpy(&threshold, head + 1, 4);
    const int32_t C = dims[D_C], O = dims[D_O];
    const size_t in_size = (size_t)C * dims[D_H] * dims[D_W], out_size = (size_t)O * dims[D_OH] * dims[D_OW];
    float *step = take(&p, 4 * (size_t)C), *scale = take(&p, 4 * (size_t)O);
    int32_t *bias_acc = take(&p, 4 * (size_t)O);
    int8_t *wt = take(&p, (size_t)C * dims[D_KH] * dims[D_KW] * O);
    float *x = take(&p, 4 * (size_t)batch * steps * in_size);
    float *y = malloc(4 * (size_t)batch * steps * out_size + 4);
    int32_t *limit = malloc(4 * (size_t)C), *state = calloc((size_t)batch * in_size + 1, 4);
    int32_t *acc = malloc(4 * (size_t)batch * out_size + 4);
    int64_t *frame = calloc((size_t)batch + 1, 8);
    for (size_t i = 0; i < (size_t)batch * out_size; i++) acc[i] = bias_acc[i % O];   /* channel-last */
    if (dc_limits(C, step, threshold, limit) != 0) return 1;
    int64_t fired = dc_run(dims, step, scale, wt, limit, key_interval, batch, steps, x, y, state, acc, frame);
    FILE *out = fopen(argv[2], "wb");
    if (!out) { perror(argv[2]); return 1; }
    fwrite(y, 4, (size_t)batch * steps * out_size, out);
    fwrite(&fired, 8, 1, out);
    fclose(out);
    printf("%s\n", dc_kernel_name());
    return 0;
}
#endif
