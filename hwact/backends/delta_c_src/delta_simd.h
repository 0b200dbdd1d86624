/* Shared by the delta kernels (delta.c, delta_conv.c, delta_gru.c): the loops they all run per frame:
 * quantize the inputs to codes, compact the codes that fire into (index, delta) lists, and the SIMD
 * column update acc[o] += d * col[o] over a contiguous int8 weight column; the flavour's name; the code
 * thresholds; the header of a net file (delta.c, delta_gru.c) and the file reader of the stand-alone
 * runners (delta_main.c, delta_gru_main.c, delta_conv.c's DC_MAIN, delta_cuda.cu).
 * Build without -ffast-math and with -ffp-contract=off: x / step and rint must round like PyTorch. */
#ifndef HWACT_DELTA_SIMD_H
#define HWACT_DELTA_SIMD_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <math.h>

#if defined(__AVX2__)
#include <immintrin.h>
#elif defined(__ARM_NEON)
#include <arm_neon.h>
#endif

/* codes[j] = clamp(round_half_even(v[j] / step[j * step_stride]), -levels, levels) for j < n (NaN: 0);
 * step_stride 1: one step per input, 0: one step for all n. */
static inline void delta_quantize(const float *v, const float *step, int32_t step_stride, int32_t levels, int32_t n,
                                  int32_t *codes) {
    const float top = (float)levels;
    for (int32_t j = 0; j < n; j++) {
        float r = rintf(v[j] / step[(size_t)j * step_stride]);   /* round half to even, like torch.round */
        r = r > top ? top : r;
        r = r < -top ? -top : r;
        codes[j] = (int32_t)(r == r ? r : 0.0f);
    }
}

/* The codes k that fire against the last sent ones: d = k[j] - sent[j], fired when |d| >= limit[j *
 * limit_stride] (any d != 0 on a key frame). Appends first + j to list and d to deltas without branches;
 * returns how many fired. */
static inline int32_t delta_compact(const int32_t *k, const int32_t *sent, const int32_t *limit, int32_t limit_stride,
                                    int32_t n, int key, int32_t first, int32_t *list, int32_t *deltas) {
    int32_t used = 0;
    for (int32_t j = 0; j < n; j++) {
        int32_t d = k[j] - sent[j];
        int32_t magnitude = d < 0 ? -d : d;
        int32_t fire = key ? d != 0 : magnitude >= limit[(size_t)j * limit_stride];
        list[used] = first + j;
        deltas[used] = d;
        used += fire;
    }
    return used;
}

/* acc[o] += d * col[o] for o < n. |d| <= 254 and |col| <= 127, so every product fits int16. */
static inline void delta_column_update(int32_t *acc, const int8_t *col, int32_t d, int32_t n) {
    int32_t o = 0;
#if defined(__AVX2__)
    const __m256i dv = _mm256_set1_epi16((int16_t)d);
    for (; o + 16 <= n; o += 16) {
        __m256i w = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(col + o)));
        __m256i p = _mm256_mullo_epi16(w, dv);
        __m256i lo = _mm256_cvtepi16_epi32(_mm256_castsi256_si128(p));
        __m256i hi = _mm256_cvtepi16_epi32(_mm256_extracti128_si256(p, 1));
        __m256i *low = (__m256i *)(acc + o), *high = (__m256i *)(acc + o + 8);
        _mm256_storeu_si256(low, _mm256_add_epi32(_mm256_loadu_si256(low), lo));
        _mm256_storeu_si256(high, _mm256_add_epi32(_mm256_loadu_si256(high), hi));
    }
#elif defined(__ARM_NEON)
    const int16_t d16 = (int16_t)d;
    for (; o + 8 <= n; o += 8) {
        int16x8_t w = vmovl_s8(vld1_s8(col + o));
        vst1q_s32(acc + o, vmlal_n_s16(vld1q_s32(acc + o), vget_low_s16(w), d16));
        vst1q_s32(acc + o + 4, vmlal_n_s16(vld1q_s32(acc + o + 4), vget_high_s16(w), d16));
    }
#endif
    for (; o < n; o++) acc[o] += d * (int32_t)col[o];
}

/* limit[j] = max(1, ceil(threshold / step[j])) for j < n, in float32 like the reference, at most 1e9
 * (no code change reaches it: "never"). */
static inline void delta_code_limits(const float *step, int32_t n, float threshold, int32_t *limit) {
    for (int32_t j = 0; j < n; j++) {
        float t = ceilf(threshold / step[j]);
        limit[j] = t < 1.0f ? 1 : (t > 1e9f ? 1000000000 : (int32_t)t);
    }
}

static inline int32_t delta_read_i32(const uint8_t **p) { int32_t v; memcpy(&v, *p, 4); *p += 4; return v; }
static inline float delta_read_f32(const uint8_t **p) { float v; memcpy(&v, *p, 4); *p += 4; return v; }

/* The 16 bytes a net file starts with: `magic`, int32 version 1, n_layers (1..1024), key_interval (>= 0).
 * Returns n_layers and sets *key_interval, with *p just after the header; 0 on a malformed header. */
static inline int32_t delta_net_header(const uint8_t *blob, size_t size, const char *magic, const uint8_t **p,
                                       int32_t *key_interval) {
    *p = blob + 4;
    if (size < 16 || memcmp(blob, magic, 4) != 0 || delta_read_i32(p) != 1) return 0;
    int32_t n_layers = delta_read_i32(p);
    *key_interval = delta_read_i32(p);
    return n_layers <= 0 || n_layers > 1024 || *key_interval < 0 ? 0 : n_layers;
}

/* A whole file in memory (malloc'ed, the caller frees it) and its size; NULL when it cannot be read. */
static inline uint8_t *delta_read_file(const char *path, size_t *size) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *data = (uint8_t *)malloc(n > 0 ? (size_t)n : 1);
    if (n < 0 || fread(data, 1, (size_t)n, f) != (size_t)n) { fclose(f); free(data); return NULL; }
    fclose(f);
    *size = (size_t)n;
    return data;
}

/* A runner's frames file: int32 batch, steps, n_in, then float32 x[batch][steps][n_in], checked to hold
 * `n_in` values per frame. Returns x and sets *batch, *steps; NULL, after a message, when it does not fit. */
static inline const float *delta_read_frames(const char *path, int32_t n_in, int32_t *batch, int32_t *steps) {
    size_t size;
    uint8_t *data = delta_read_file(path, &size);
    int32_t dims[3] = {0, 0, 0};
    if (data && size >= 12) memcpy(dims, data, 12);
    if (!data || dims[0] < 0 || dims[1] < 0 || dims[2] != n_in || size != 12 + 4 * (size_t)dims[0] * dims[1] * n_in) {
        fprintf(stderr, "%s: not a frames file of %d inputs per frame\n", path, n_in);
        return NULL;
    }
    *batch = dims[0];
    *steps = dims[1];
    return (const float *)(data + 12);
}

static inline const char *delta_simd_name(void) {
#if defined(__AVX2__)
    return "avx2";
#elif defined(__ARM_NEON)
    return "neon";
#else
    return "scalar";
#endif
}

#endif
