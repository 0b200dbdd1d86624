/* GEMM family of the integer CPU runtime (hwact_int.h): packed-weight linear with a fused requantization
   (+ LUT) epilogue, batched activation matmul, im2col, depthwise conv.

   One driver, one packed layout shape, one micro-kernel per ISA. Weights (N x K) are packed as
   [N/nr][K/ku][nr][ku] (N and K zero-padded to multiples of nr and ku), elements int16 or int8 per ISA;
   a packed buffer starts with a header naming the ISA it was packed for (hw_linear runs that ISA's
   kernel) and the column sums Σ_k W[j, k] (int32, for the offset corrections below).

   The activation rows a thread owns are converted once into the layout its kernel reads (padding rows
   and columns are 0). A kernel computes an mr x nr int32 tile over the whole (padded) K; the epilogue
   adds bias and correction in int64, applies rs(), the clamp and the LUT, and stores with the out
   strides. Accumulation is exact in int32 on every path (|Σ| <= K·255·128 < 2^31 for K < 65793).

     ISA          mr x nr  ku  weights  activations (what the kernel reads)        exactness
     scalar        1 x 1    1  int16    int16                                       plain int32 MACs
     AVX2          6 x 16   2  int16    int16 pairs (broadcast)                    vpmaddwd: 16x16->32 bit, the
                                                                                    pair sum <= 2·255·128 fits
                                                                                    int32: no saturation (we never
                                                                                    use vpmaddubsw, whose int16
                                                                                    pair sums saturate)
     AVX-512 VNNI 8 x 32    4  int8     uint8 quads (int8 a: a + 128)               vpdpbusd: u8 x s8 -> int32, no
                                                                                    intermediate saturation; the
                                                                                    +128 costs −128·Σ_k W[j,k]
     NEON         4 x 16    1  int16    int16 [k][4 rows]                           smlal (vmlal_lane_s16)
     NEON dotprod 4 x 16    4  int8     int8 [k/4][4 rows][4] (uint8 a: a − 128)    sdot s8 x s8 -> int32; the
                                                                                    −128 costs +128·Σ_k W[j,k]
*/
#include "hwact_int.h"

#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__)
#include <immintrin.h>
#elif defined(__aarch64__)
#include <arm_neon.h>
#endif

/* ----- geometry of each ISA's packed layout and micro-kernel ----------------------------------------- */
typedef struct {
    int mr, nr, ku;   /* tile rows, tile columns, K unroll (the K padding) */
    int esw, esa;     /* bytes per packed weight, per converted activation */
    int corr_i8;      /* correction factor times Σ_k W[j, k] for int8 activations */
    int corr_u8;      /* ... for uint8 activations */
    int wide_weights; /* weights held in int16: any 8-bit value (uint8 too) may be packed */
} geometry;

static geometry geometry_of(int isa) {
    switch (isa) {
    case HW_ISA_AVX2: return (geometry){6, 16, 2, 2, 2, 0, 0, 1};
    case HW_ISA_AVX512VNNI: return (geometry){8, 32, 4, 1, 1, -128, 0, 0};
    case HW_ISA_NEON: return (geometry){4, 16, 1, 2, 2, 0, 0, 1};
    case HW_ISA_NEON_DOTPROD: return (geometry){4, 16, 4, 1, 1, 0, 128, 0};
    default: return (geometry){1, 1, 1, 2, 2, 0, 0, 1};
    }
}

#define PACK_MAGIC 0x31504348u /* "HCP1" */
typedef struct {
    uint32_t magic;
    int32_t isa;
    int64_t n, k, kp, np;
    int64_t reserved[3];
} pack_header; /* 64 bytes */

static int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

static size_t pack_bytes(int isa, int64_t n, int64_t k) {
    geometry g = geometry_of(isa);
    int64_t np = round_up(n, g.nr), kp = round_up(k, g.ku);
    return sizeof(pack_header) + (size_t)round_up(4 * np, 64) + (size_t)(np * kp * g.esw);
}

static const int32_t *pack_sums(const pack_header *h) { return (const int32_t *)(h + 1); }
static const void *pack_weights(const pack_header *h) {
    return (const char *)(h + 1) + round_up(4 * h->np, 64);
}

/* An 8-bit matrix read through strides: element (i, j) at p + i·s0 + j·s1. */
typedef struct {
    const void *p;
    int type;
    int64_t s0, s1;
} view2d;

/* Row i of an 8-bit view as int16 into dst[0..k), zeros up to kp. */
static void view_row(const view2d *v, int64_t i, int64_t k, int64_t kp, int16_t *dst) {
    int64_t s1 = v->s1;
    if (v->type == HW_U8) {
        const uint8_t *src = (const uint8_t *)v->p + i * v->s0;
        if (s1 == 1)
            for (int64_t j = 0; j < k; j++) dst[j] = src[j];
        else
            for (int64_t j = 0; j < k; j++) dst[j] = src[j * s1];
    } else {
        const int8_t *src = (const int8_t *)v->p + i * v->s0;
        if (s1 == 1)
            for (int64_t j = 0; j < k; j++) dst[j] = src[j];
        else
            for (int64_t j = 0; j < k; j++) dst[j] = src[j * s1];
    }
    for (int64_t j = k; j < kp; j++)
        dst[j] = 0;
}

/* Pack the n x k matrix `w` (any 8-bit view; int8-weight ISAs need values in int8) for `isa`. */
static void pack_view(int isa, const view2d *w, int64_t n, int64_t k, void *packed) {
    geometry g = geometry_of(isa);
    pack_header *h = packed;
    memset(h, 0, sizeof *h);
    h->magic = PACK_MAGIC;
    h->isa = isa;
    h->n = n;
    h->k = k;
    h->kp = round_up(k, g.ku);
    h->np = round_up(n, g.nr);
    int32_t *sums = (int32_t *)(h + 1);
    char *dst = (char *)pack_weights(h);
    int64_t kp = h->kp, kblocks = kp / g.ku;
    int16_t *row = malloc((size_t)(kp + 1) * sizeof(int16_t));
    if (!row) {
        h->magic = 0; /* unusable: hw_linear refuses it */
        return;
    }
    for (int64_t j = 0; j < h->np; j++) {
        if (j < n)
            view_row(w, j, k, kp, row);
        else
            memset(row, 0, (size_t)kp * sizeof(int16_t));
        int32_t total = 0;
        for (int64_t kk = 0; kk < kp; kk++)
            total += row[kk];
        sums[j] = total;
        int64_t base = (j / g.nr) * kblocks * g.nr * g.ku + (j % g.nr) * g.ku, step = (int64_t)g.nr * g.ku;
        for (int64_t kb = 0; kb < kblocks; kb++)
            for (int u = 0; u < g.ku; u++) {
                int64_t at = base + kb * step + u;
                if (g.esw == 2)
                    ((int16_t *)dst)[at] = row[kb * g.ku + u];
                else
                    ((int8_t *)dst)[at] = (int8_t)row[kb * g.ku + u];
            }
    }
    free(row);
}

size_t hw_pack_size(int64_t n, int64_t k) { return pack_bytes(hw_isa(), n, k); }

void hw_pack(const int8_t *w, int64_t n, int64_t k, void *packed) {
    view2d v = {w, HW_I8, k, 1};
    pack_view(hw_isa(), &v, n, k, packed);
}

/* ----- activation conversion: mr rows (row0.., `valid` of them real) into the kernel's layout ------- */
static void convert_rows(int isa, const geometry *g, const view2d *a, int64_t row0, int64_t valid, int64_t k,
                         int64_t kp, void *buf, int16_t *row) {
    int mr = g->mr;
    if (valid < mr)
        memset(buf, 0, (size_t)(mr * kp * g->esa));
    for (int64_t r = 0; r < valid; r++) {
        if (isa == HW_ISA_AVX512VNNI && a->s1 == 1) { /* contiguous 8-bit row: one pass, a + 128 = a ^ 0x80 */
            const uint8_t *src = (const uint8_t *)a->p + (row0 + r) * a->s0;
            uint8_t *d = (uint8_t *)buf + r * kp, flip = a->type == HW_U8 ? 0 : 0x80;
            for (int64_t kk = 0; kk < k; kk++) d[kk] = src[kk] ^ flip;
            for (int64_t kk = k; kk < kp; kk++) d[kk] = 0;
            continue;
        }
        view_row(a, row0 + r, k, kp, row);
        switch (isa) {
        case HW_ISA_AVX512VNNI: { /* uint8 [mr][kp]; int8 a -> a + 128 (padding stays 0: W is 0 there) */
            uint8_t *d = (uint8_t *)buf + r * kp;
            int bias = a->type == HW_U8 ? 0 : 128;
            for (int64_t kk = 0; kk < k; kk++) d[kk] = (uint8_t)(row[kk] + bias);
            for (int64_t kk = k; kk < kp; kk++) d[kk] = 0;
            break;
        }
        case HW_ISA_NEON: { /* int16 [kp][mr] */
            int16_t *d = (int16_t *)buf + r;
            for (int64_t kk = 0; kk < kp; kk++) d[kk * mr] = row[kk];
            break;
        }
        case HW_ISA_NEON_DOTPROD: { /* int8 [kp/4][mr][4]; uint8 a -> a − 128 */
            int8_t *d = (int8_t *)buf + r * 4;
            int bias = a->type == HW_U8 ? -128 : 0;
            for (int64_t kb = 0; kb < kp / 4; kb++)
                for (int u = 0; u < 4; u++) {
                    int64_t kk = kb * 4 + u;
                    d[kb * mr * 4 + u] = (int8_t)(kk < k ? row[kk] + bias : 0);
                }
            break;
        }
        default: /* scalar, AVX2: int16 [mr][kp] */
            memcpy((int16_t *)buf + r * kp, row, (size_t)kp * sizeof(int16_t));
        }
    }
}

/* ----- micro-kernels: acc[mr][nr] = Σ_k a[r][k]·W[c][k] over the padded K ---------------------------- */
static inline int32_t load32(const void *p) {
    int32_t v;
    memcpy(&v, p, 4);
    return v;
}

static void kernel_scalar(const void *a_, const void *w_, int64_t kp, int32_t *acc) {
    const int16_t *a = a_, *w = w_;
    int32_t s = 0;
    for (int64_t k = 0; k < kp; k++)
        s += (int32_t)a[k] * (int32_t)w[k];
    acc[0] = s;
}

#if defined(__x86_64__)
__attribute__((target("avx2"))) static void kernel_avx2(const void *a_, const void *w_, int64_t kp,
                                                        int32_t *acc) {
    const int16_t *a = a_, *w = w_;
    __m256i c00 = _mm256_setzero_si256(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00, c30 = c00,
            c31 = c00, c40 = c00, c41 = c00, c50 = c00, c51 = c00;
    for (int64_t k = 0; k < kp; k += 2, w += 32) {
        __m256i w0 = _mm256_loadu_si256((const __m256i *)w), w1 = _mm256_loadu_si256((const __m256i *)(w + 16));
#define AVX2_ROW(r)                                                                                           \
    {                                                                                                         \
        __m256i av = _mm256_set1_epi32(load32(a + (r) * kp + k));                                             \
        c##r##0 = _mm256_add_epi32(c##r##0, _mm256_madd_epi16(av, w0));                                       \
        c##r##1 = _mm256_add_epi32(c##r##1, _mm256_madd_epi16(av, w1));                                       \
    }
        AVX2_ROW(0) AVX2_ROW(1) AVX2_ROW(2) AVX2_ROW(3) AVX2_ROW(4) AVX2_ROW(5)
#undef AVX2_ROW
    }
    _mm256_storeu_si256((__m256i *)(acc + 0), c00);
    _mm256_storeu_si256((__m256i *)(acc + 8), c01);
    _mm256_storeu_si256((__m256i *)(acc + 16), c10);
    _mm256_storeu_si256((__m256i *)(acc + 24), c11);
    _mm256_storeu_si256((__m256i *)(acc + 32), c20);
    _mm256_storeu_si256((__m256i *)(acc + 40), c21);
    _mm256_storeu_si256((__m256i *)(acc + 48), c30);
    _mm256_storeu_si256((__m256i *)(acc + 56), c31);
    _mm256_storeu_si256((__m256i *)(acc + 64), c40);
    _mm256_storeu_si256((__m256i *)(acc + 72), c41);
    _mm256_storeu_si256((__m256i *)(acc + 80), c50);
    _mm256_storeu_si256((__m256i *)(acc + 88), c51);
}

__attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni"))) static void
kernel_vnni(const void *a_, const void *w_, int64_t kp, int32_t *acc) {
    const uint8_t *a = a_;
    const int8_t *w = w_;
    __m512i c00 = _mm512_setzero_si512(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00, c30 = c00,
            c31 = c00, c40 = c00, c41 = c00, c50 = c00, c51 = c00, c60 = c00, c61 = c00, c70 = c00, c71 = c00;
    for (int64_t k = 0; k < kp; k += 4, w += 128) {
        __m512i w0 = _mm512_loadu_si512((const void *)w), w1 = _mm512_loadu_si512((const void *)(w + 64));
#define VNNI_ROW(r)                                                                                           \
    {                                                                                                         \
        __m512i av = _mm512_set1_epi32(load32(a + (r) * kp + k));                                             \
        c##r##0 = _mm512_dpbusd_epi32(c##r##0, av, w0);                                                       \
        c##r##1 = _mm512_dpbusd_epi32(c##r##1, av, w1);                                                       \
    }
        VNNI_ROW(0) VNNI_ROW(1) VNNI_ROW(2) VNNI_ROW(3) VNNI_ROW(4) VNNI_ROW(5) VNNI_ROW(6) VNNI_ROW(7)
#undef VNNI_ROW
    }
#define VNNI_STORE(r)                                                                                         \
    _mm512_storeu_si512((void *)(acc + (r) * 32), c##r##0);                                                   \
    _mm512_storeu_si512((void *)(acc + (r) * 32 + 16), c##r##1);
    VNNI_STORE(0) VNNI_STORE(1) VNNI_STORE(2) VNNI_STORE(3) VNNI_STORE(4) VNNI_STORE(5) VNNI_STORE(6)
    VNNI_STORE(7)
#undef VNNI_STORE
}
#endif

#if defined(__aarch64__)
static void kernel_neon(const void *a_, const void *w_, int64_t kp, int32_t *acc) {
    const int16_t *a = a_, *w = w_;
    int32x4_t c[4][4];
    for (int r = 0; r < 4; r++)
        for (int q = 0; q < 4; q++)
            c[r][q] = vdupq_n_s32(0);
    for (int64_t k = 0; k < kp; k++, w += 16, a += 4) {
        int16x8_t w0 = vld1q_s16(w), w1 = vld1q_s16(w + 8);
        int16x4_t av = vld1_s16(a);
#define NEON_ROW(r)                                                                                           \
    c[r][0] = vmlal_lane_s16(c[r][0], vget_low_s16(w0), av, r);                                               \
    c[r][1] = vmlal_high_lane_s16(c[r][1], w0, av, r);                                                        \
    c[r][2] = vmlal_lane_s16(c[r][2], vget_low_s16(w1), av, r);                                               \
    c[r][3] = vmlal_high_lane_s16(c[r][3], w1, av, r);
        NEON_ROW(0) NEON_ROW(1) NEON_ROW(2) NEON_ROW(3)
#undef NEON_ROW
    }
    for (int r = 0; r < 4; r++)
        for (int q = 0; q < 4; q++)
            vst1q_s32(acc + r * 16 + q * 4, c[r][q]);
}

__attribute__((target("arch=armv8.2-a+dotprod"))) static void kernel_dotprod(const void *a_, const void *w_,
                                                                              int64_t kp, int32_t *acc) {
    const int8_t *a = a_, *w = w_;
    int32x4_t c[4][4];
    for (int r = 0; r < 4; r++)
        for (int q = 0; q < 4; q++)
            c[r][q] = vdupq_n_s32(0);
    for (int64_t k = 0; k < kp; k += 4, w += 64, a += 16) {
        int8x16_t w0 = vld1q_s8(w), w1 = vld1q_s8(w + 16), w2 = vld1q_s8(w + 32), w3 = vld1q_s8(w + 48);
        int8x16_t av = vld1q_s8(a);
#define DOT_ROW(r)                                                                                            \
    c[r][0] = vdotq_laneq_s32(c[r][0], w0, av, r);                                                            \
    c[r][1] = vdotq_laneq_s32(c[r][1], w1, av, r);                                                            \
    c[r][2] = vdotq_laneq_s32(c[r][2], w2, av, r);                                                            \
    c[r][3] = vdotq_laneq_s32(c[r][3], w3, av, r);
        DOT_ROW(0) DOT_ROW(1) DOT_ROW(2) DOT_ROW(3)
#undef DOT_ROW
    }
    for (int r = 0; r < 4; r++)
        for (int q = 0; q < 4; q++)
            vst1q_s32(acc + r * 16 + q * 4, c[r][q]);
}
#endif

typedef void (*kernel_fn)(const void *, const void *, int64_t, int32_t *);

static kernel_fn kernel_of(int isa) {
    switch (isa) {
#if defined(__x86_64__)
    case HW_ISA_AVX2: return kernel_avx2;
    case HW_ISA_AVX512VNNI: return kernel_vnni;
#elif defined(__aarch64__)
    case HW_ISA_NEON: return kernel_neon;
    case HW_ISA_NEON_DOTPROD: return kernel_dotprod;
#endif
    default: return kernel_scalar;
    }
}

/* ----- epilogue ------------------------------------------------------------------------------------
   Per column j the call precomputes (int64) mul[j] = m0[j], sh[j] = shift[j] and
   add[j] = (bias[j] + corr·Σ_k W[j, k])·m0[j] + 2^(shift[j]−1) (0 when shift is 0), so that
   rs(acc + bias + corr·ΣW, m0, shift) = (acc·m0 + add) >> shift: acc·m0 is an exact 32 x 32 -> 64 bit
   product (vpmuldq / smull), the rest int64 adds and an arithmetic shift (two's complement, as the int64
   reference). The tile is requantized into res (int32, already clamped), then stored with the out strides
   (LUT applied there). */
typedef struct {
    int isa;
    const pack_header *h;
    view2d a;
    int64_t M;
    const int64_t *add, *mul, *sh; /* per packed column (np) */
    int32_t qmin, qmax;
    const int32_t *lut;
    int32_t lut_min;
    void *out;
    int out_type;
    int64_t osm, osn;
    int64_t row_begin, row_end;
} job;

static void requant_scalar(const int32_t *acc, int32_t *res, int nr, int rows, int cols, const int64_t *add,
                           const int64_t *mul, const int64_t *sh, int32_t qmin, int32_t qmax) {
    for (int c = 0; c < cols; c++)
        for (int r = 0; r < rows; r++) {
            int64_t v = ((int64_t)acc[r * nr + c] * mul[c] + add[c]) >> sh[c];
            res[r * nr + c] = (int32_t)hw_clamp64(v, qmin, qmax);
        }
}

#if defined(__x86_64__)
__attribute__((target("avx2"))) static void requant_avx2(const int32_t *acc, int32_t *res, int nr, int rows,
                                                         int cols, const int64_t *add, const int64_t *mul,
                                                         const int64_t *sh, int32_t qmin, int32_t qmax) {
    (void)cols; /* whole tile: padded columns have mul = add = 0 */
    const __m256i zero = _mm256_setzero_si256(), lo = _mm256_set1_epi64x(qmin), hi = _mm256_set1_epi64x(qmax);
    const __m256i even = _mm256_setr_epi32(0, 2, 4, 6, 0, 2, 4, 6);
    for (int c = 0; c < nr; c += 4) {
        __m256i m = _mm256_loadu_si256((const __m256i *)(mul + c)), a = _mm256_loadu_si256((const __m256i *)(add + c));
        __m256i s = _mm256_loadu_si256((const __m256i *)(sh + c));
        for (int r = 0; r < rows; r++) {
            __m256i v = _mm256_cvtepi32_epi64(_mm_loadu_si128((const __m128i *)(acc + r * nr + c)));
            __m256i p = _mm256_add_epi64(_mm256_mul_epi32(v, m), a);
            __m256i sign = _mm256_cmpgt_epi64(zero, p); /* arithmetic shift = ~(~p >>> s) for p < 0 */
            p = _mm256_xor_si256(_mm256_srlv_epi64(_mm256_xor_si256(p, sign), s), sign);
            p = _mm256_blendv_epi8(p, hi, _mm256_cmpgt_epi64(p, hi));
            p = _mm256_blendv_epi8(p, lo, _mm256_cmpgt_epi64(lo, p));
            _mm_storeu_si128((__m128i *)(res + r * nr + c),
                             _mm256_castsi256_si128(_mm256_permutevar8x32_epi32(p, even)));
        }
    }
}

__attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni"))) static void
requant_avx512(const int32_t *acc, int32_t *res, int nr, int rows, int cols, const int64_t *add, const int64_t *mul,
               const int64_t *sh, int32_t qmin, int32_t qmax) {
    (void)cols;
    const __m512i lo = _mm512_set1_epi64(qmin), hi = _mm512_set1_epi64(qmax);
    for (int c = 0; c < nr; c += 8) {
        __m512i m = _mm512_loadu_si512((const void *)(mul + c)), a = _mm512_loadu_si512((const void *)(add + c));
        __m512i s = _mm512_loadu_si512((const void *)(sh + c));
        for (int r = 0; r < rows; r++) {
            __m512i v = _mm512_cvtepi32_epi64(_mm256_loadu_si256((const __m256i *)(acc + r * nr + c)));
            __m512i p = _mm512_srav_epi64(_mm512_add_epi64(_mm512_mul_epi32(v, m), a), s);
            p = _mm512_min_epi64(_mm512_max_epi64(p, lo), hi);
            _mm256_storeu_si256((__m256i *)(res + r * nr + c), _mm512_cvtepi64_epi32(p));
        }
    }
}
#endif

#if defined(__aarch64__)
static void requant_neon(const int32_t *acc, int32_t *res, int nr, int rows, int cols, const int64_t *add,
                         const int64_t *mul, const int64_t *sh, int32_t qmin, int32_t qmax) {
    (void)cols;
    const int64x2_t lo = vdupq_n_s64(qmin), hi = vdupq_n_s64(qmax);
    for (int c = 0; c < nr; c += 4) {
        int32x2_t m01 = vmovn_s64(vld1q_s64(mul + c)), m23 = vmovn_s64(vld1q_s64(mul + c + 2));
        int64x2_t a01 = vld1q_s64(add + c), a23 = vld1q_s64(add + c + 2);
        int64x2_t s01 = vnegq_s64(vld1q_s64(sh + c)), s23 = vnegq_s64(vld1q_s64(sh + c + 2)); /* sshl by −s */
        for (int r = 0; r < rows; r++) {
            int32x4_t v = vld1q_s32(acc + r * nr + c);
            int64x2_t p01 = vshlq_s64(vmlal_s32(a01, vget_low_s32(v), m01), s01);
            int64x2_t p23 = vshlq_s64(vmlal_s32(a23, vget_high_s32(v), m23), s23);
            p01 = vbslq_s64(vcgtq_s64(p01, hi), hi, vbslq_s64(vcltq_s64(p01, lo), lo, p01));
            p23 = vbslq_s64(vcgtq_s64(p23, hi), hi, vbslq_s64(vcltq_s64(p23, lo), lo, p23));
            vst1q_s32(res + r * nr + c, vcombine_s32(vmovn_s64(p01), vmovn_s64(p23)));
        }
    }
}
#endif

typedef void (*requant_fn)(const int32_t *, int32_t *, int, int, int, const int64_t *, const int64_t *,
                           const int64_t *, int32_t, int32_t);

static requant_fn requant_of(int isa) {
    switch (isa) {
#if defined(__x86_64__)
    case HW_ISA_AVX2: return requant_avx2;
    case HW_ISA_AVX512VNNI: return requant_avx512;
#elif defined(__aarch64__)
    case HW_ISA_NEON:
    case HW_ISA_NEON_DOTPROD: return requant_neon;
#endif
    default: return requant_scalar;
    }
}

static inline void store_value(void *out, int type, int64_t at, int32_t v) {
    switch (type) {
    case HW_I8: ((int8_t *)out)[at] = (int8_t)v; break;
    case HW_U8: ((uint8_t *)out)[at] = (uint8_t)v; break;
    case HW_I16: ((int16_t *)out)[at] = (int16_t)v; break;
    default: ((int32_t *)out)[at] = v;
    }
}

/* Store rows x cols of res (row stride nr) at out element (r0 + r, c0 + c), through the LUT if any. */
#define STORE_LOOP(T)                                                                                         \
    {                                                                                                         \
        T *d = (T *)jb->out + r0 * jb->osm + c0 * jb->osn;                                                    \
        if (jb->lut) {                                                                                        \
            for (int r = 0; r < rows; r++)                                                                    \
                for (int c = 0; c < cols; c++)                                                                \
                    d[r * jb->osm + c * jb->osn] = (T)jb->lut[res[r * nr + c] - jb->lut_min];                 \
        } else if (jb->osn == 1) {                                                                            \
            for (int r = 0; r < rows; r++)                                                                    \
                for (int c = 0; c < cols; c++)                                                                \
                    d[r * jb->osm + c] = (T)res[r * nr + c];                                                  \
        } else {                                                                                              \
            for (int c = 0; c < cols; c++)                                                                    \
                for (int r = 0; r < rows; r++)                                                                \
                    d[r * jb->osm + c * jb->osn] = (T)res[r * nr + c];                                        \
        }                                                                                                     \
    }

static void store_tile(const job *jb, const int32_t *res, int nr, int64_t r0, int rows, int64_t c0, int cols) {
    switch (jb->out_type) {
    case HW_I8: STORE_LOOP(int8_t) break;
    case HW_U8: STORE_LOOP(uint8_t) break;
    case HW_I16: STORE_LOOP(int16_t) break;
    default: STORE_LOOP(int32_t)
    }
}
#undef STORE_LOOP

#if defined(__x86_64__)
/* The VNNI tile's epilogue and store in one: per 8 columns (int64 lanes) rs() and the clamp as
   requant_avx512, then a masked truncating store (vpmovq{b,w,d}: the values are within the output type
   after the clamp) of the valid columns straight into a row-major output (out_stride_n = 1, no LUT). */
__attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni"))) static void
requant_store_vnni(const int32_t *acc, const job *jb, int64_t r0, int rows, int64_t c0, int cols) {
    const __m512i lo = _mm512_set1_epi64(jb->qmin), hi = _mm512_set1_epi64(jb->qmax);
    int osize = jb->out_type == HW_I32 ? 4 : (jb->out_type == HW_I16 ? 2 : 1);
    for (int c = 0; c < cols; c += 8) {
        __mmask8 mask = cols - c >= 8 ? 0xff : (__mmask8)((1u << (cols - c)) - 1);
        __m512i m = _mm512_loadu_si512((const void *)(jb->mul + c0 + c));
        __m512i a = _mm512_loadu_si512((const void *)(jb->add + c0 + c));
        __m512i s = _mm512_loadu_si512((const void *)(jb->sh + c0 + c));
        char *dst = (char *)jb->out + (r0 * jb->osm + c0 + c) * osize;
        for (int r = 0; r < rows; r++, dst += jb->osm * osize) {
            __m512i v = _mm512_cvtepi32_epi64(_mm256_loadu_si256((const __m256i *)(acc + r * 32 + c)));
            __m512i p = _mm512_srav_epi64(_mm512_add_epi64(_mm512_mul_epi32(v, m), a), s);
            p = _mm512_min_epi64(_mm512_max_epi64(p, lo), hi);
            switch (jb->out_type) {
            case HW_I8:
            case HW_U8: _mm512_mask_cvtepi64_storeu_epi8(dst, mask, p); break;
            case HW_I16: _mm512_mask_cvtepi64_storeu_epi16(dst, mask, p); break;
            default: _mm512_mask_cvtepi64_storeu_epi32(dst, mask, p);
            }
        }
    }
}
#endif

#if defined(__x86_64__)
/* AVX2 tile rows of 16 requantized int32 (res, row stride 16, already clamped: within the output type)
   stored as whole rows into a row-major output: narrowed by saturating packs, exact in range. */
__attribute__((target("avx2"))) static void store_rows16_avx2(const job *jb, const int32_t *res, int64_t r0, int rows,
                                                            int64_t c0) {
    int osize = jb->out_type == HW_I32 ? 4 : (jb->out_type == HW_I16 ? 2 : 1);
    char *dst = (char *)jb->out + (r0 * jb->osm + c0) * osize;
    for (int r = 0; r < rows; r++, dst += jb->osm * osize) {
        const __m128i *v = (const __m128i *)(res + r * 16);
        __m128i a = _mm_packs_epi32(_mm_loadu_si128(v), _mm_loadu_si128(v + 1));
        __m128i b = _mm_packs_epi32(_mm_loadu_si128(v + 2), _mm_loadu_si128(v + 3));
        switch (jb->out_type) {
        case HW_I8: _mm_storeu_si128((__m128i *)dst, _mm_packs_epi16(a, b)); break;
        case HW_U8: _mm_storeu_si128((__m128i *)dst, _mm_packus_epi16(a, b)); break;
        case HW_I16:
            _mm_storeu_si128((__m128i *)dst, a);
            _mm_storeu_si128((__m128i *)dst + 1, b);
            break;
        default: memcpy(dst, res + r * 16, 64);
        }
    }
}
#endif

/* ----- the driver: one thread's rows -------------------------------------------------------------------- */
#define PANEL_BYTES (256 * 1024) /* weight columns per pass kept within a core's L2 */

static void run_rows(const job *jb) {
    geometry g = geometry_of(jb->isa);
    const pack_header *h = jb->h;
    int64_t kp = h->kp, np = h->np, n = h->n, k = h->k;
    int64_t rows = jb->row_end - jb->row_begin;
    if (rows <= 0 || n <= 0)
        return;
    int64_t blocks = (rows + g.mr - 1) / g.mr;
    size_t block_bytes = (size_t)(g.mr * kp * g.esa);
    size_t total = (size_t)round_up((int64_t)(blocks * block_bytes) + 64, 64);
    char *abuf = aligned_alloc(64, total);
    int16_t *row = malloc((size_t)(kp + 1) * sizeof(int16_t));
    if (!abuf || !row) {
        free(abuf);
        free(row);
        return;
    }
    /* VNNI reads uint8 rows as they are: contiguous ones with lda = kp (K % 4 = 0) need no copy */
    int in_place = jb->isa == HW_ISA_AVX512VNNI && jb->a.type == HW_U8 && jb->a.s1 == 1 && jb->a.s0 == kp;
    for (int64_t b = 0; b < blocks; b++) {
        int64_t row0 = jb->row_begin + b * g.mr;
        int64_t valid = jb->row_end - row0 < g.mr ? jb->row_end - row0 : g.mr;
        if (!(in_place && valid == g.mr))
            convert_rows(jb->isa, &g, &jb->a, row0, valid, k, kp, abuf + b * block_bytes, row);
    }
    free(row);
    kernel_fn kern = kernel_of(jb->isa);
    requant_fn requant = requant_of(jb->isa);
    const char *w = pack_weights(h);
    size_t col_bytes = (size_t)(kp * g.esw); /* one packed column */
    int64_t chunk = col_bytes ? (int64_t)(PANEL_BYTES / col_bytes) / g.nr * g.nr : np;
    if (chunk < g.nr)
        chunk = g.nr;
    int32_t acc[8 * 32], res[8 * 32];
#if defined(__x86_64__)
    int direct = jb->isa == HW_ISA_AVX512VNNI && !jb->lut && jb->osn == 1; /* row-major out: fused vector store */
    int direct16 = jb->isa == HW_ISA_AVX2 && !jb->lut && jb->osn == 1;      /* ... vector stores of whole rows */
#endif
    for (int64_t c0 = 0; c0 < np; c0 += chunk) {
        int64_t c1 = c0 + chunk < np ? c0 + chunk : np;
        for (int64_t b = 0; b < blocks; b++) {
            int64_t row0 = jb->row_begin + b * g.mr;
            int valid = (int)(jb->row_end - row0 < g.mr ? jb->row_end - row0 : g.mr);
            const char *ablock = in_place && valid == g.mr ? (const char *)jb->a.p + row0 * kp : abuf + b * block_bytes;
            for (int64_t cb = c0; cb < c1; cb += g.nr) {
                kern(ablock, w + cb * col_bytes, kp, acc);
                int cols = (int)(n - cb < g.nr ? n - cb : g.nr);
                if (cols <= 0)
                    continue;
#if defined(__x86_64__)
                if (direct) {
                    requant_store_vnni(acc, jb, row0, valid, cb, cols);
                    continue;
                }
#endif
                requant(acc, res, g.nr, valid, cols, jb->add + cb, jb->mul + cb, jb->sh + cb, jb->qmin, jb->qmax);
#if defined(__x86_64__)
                if (direct16 && cols == 16) {
                    store_rows16_avx2(jb, res, row0, valid, cb);
                    continue;
                }
#endif
                store_tile(jb, res, g.nr, row0, valid, cb, cols);
            }
        }
    }
    free(abuf);
}

static void rows_task(void *jobs, int t, int tasks) {
    (void)tasks;
    run_rows((const job *)jobs + t);
}

static void run_threads(const job *base, int threads) {
    geometry g = geometry_of(base->isa);
    int64_t blocks = (base->M + g.mr - 1) / g.mr;
    if (threads > blocks)
        threads = (int)blocks;
    if (threads > POOL_MAX_THREADS)
        threads = POOL_MAX_THREADS;
    if (threads <= 1) {
        job one = *base;
        one.row_begin = 0;
        one.row_end = base->M;
        run_rows(&one);
        return;
    }
    job jobs[POOL_MAX_THREADS];
    for (int t = 0; t < threads; t++) {
        jobs[t] = *base;
        int64_t r0 = blocks * t / threads * g.mr, r1 = blocks * (t + 1) / threads * g.mr;
        jobs[t].row_begin = r0;
        jobs[t].row_end = r1 < base->M ? r1 : base->M;
    }
    pool_run(threads, threads, rows_task, jobs);
}

/* The per-column epilogue constants of one call (see the epilogue): 3·np int64, to free; NULL: no memory. */
static int64_t *column_constants(const pack_header *h, int a_type, const int32_t *bias, const int32_t *m0,
                                 const int32_t *shift, int32_t m0_all, int32_t shift_all) {
    geometry g = geometry_of(h->isa);
    int64_t corr = a_type == HW_U8 ? g.corr_u8 : g.corr_i8, np = h->np;
    int64_t *table = malloc((size_t)(3 * np + 8) * sizeof(int64_t));
    if (!table)
        return NULL;
    const int32_t *sums = pack_sums(h);
    for (int64_t j = 0; j < np; j++) {
        int64_t m = 0, s = 0, x = 0;
        if (j < h->n) {
            m = m0 ? m0[j] : m0_all;
            s = shift ? shift[j] : shift_all;
            x = (bias ? (int64_t)bias[j] : 0) + corr * sums[j];
        }
        table[j] = x * m + (s ? (int64_t)1 << (s - 1) : 0);
        table[np + j] = m;
        table[2 * np + j] = s;
    }
    return table;
}

void hw_linear(const void *a, int a_type, int64_t M, int64_t K, int64_t lda, const void *packed, int64_t N,
               const int32_t *bias, const int32_t *m0, const int32_t *shift, int32_t qmin, int32_t qmax,
               const int32_t *lut, int32_t lut_min, void *out, int out_type, int64_t out_stride_m,
               int64_t out_stride_n, int threads) {
    const pack_header *h = packed;
    if (!h || h->magic != PACK_MAGIC || h->n != N || h->k != K || M <= 0 || N <= 0)
        return;
    int64_t *table = column_constants(h, a_type, bias, m0, shift, 0, 0);
    if (!table)
        return;
    job jb = {.isa = h->isa, .h = h, .a = {a, a_type, lda, 1}, .M = M, .add = table, .mul = table + h->np,
              .sh = table + 2 * h->np, .qmin = qmin, .qmax = qmax, .lut = lut, .lut_min = lut_min, .out = out,
              .out_type = out_type, .osm = out_stride_m, .osn = out_stride_n};
    run_threads(&jb, threads);
    free(table);
}

/* ----- batched activation matmul ---------------------------------------------------------------------
   Per batch, one operand is packed as the "weights" (transposed to N x K) and the other streams as the
   activation rows. The int8-weight paths (VNNI, dotprod) need int8 weights: with B int8 it is packed
   as is; with B uint8 and A int8 the product is taken transposed (out^T = B^T·A^T: B^T streams, A is
   packed, the out strides swap); with both uint8 the int16-weight path of this ISA family runs. */
typedef struct {
    int isa, swap, out_type, threads; /* threads: per batch (1 when the batches are split over threads) */
    const char *a, *b;
    int a_type, b_type;
    int64_t a_sb, a_sm, a_sk, b_sb, b_sk, b_sj, M, K, N;
    int32_t m0, shift, qmin, qmax;
    char *out;
    int64_t first, step, batch; /* this worker's batches: first, first + step, ... < batch */
} matmul_job;

static void matmul_batches(const matmul_job *mj) {
    int64_t rows = mj->swap ? mj->N : mj->M, cols = mj->swap ? mj->M : mj->N; /* activation rows, packed columns */
    void *packed = aligned_alloc(64, (size_t)round_up((int64_t)pack_bytes(mj->isa, cols, mj->K), 64));
    if (!packed)
        return;
    size_t osize = mj->out_type == HW_I32 ? 4 : (mj->out_type == HW_I16 ? 2 : 1);
    for (int64_t i = mj->first; i < mj->batch; i += mj->step) {
        const char *ap = mj->a + i * mj->a_sb, *bp = mj->b + i * mj->b_sb; /* 8-bit: strides are bytes */
        view2d weights, acts;
        if (mj->swap) { /* weights = A (M x K), activations = B^T (N x K) */
            weights = (view2d){ap, mj->a_type, mj->a_sm, mj->a_sk};
            acts = (view2d){bp, mj->b_type, mj->b_sj, mj->b_sk};
        } else { /* weights = B^T (N x K), activations = A (M x K) */
            weights = (view2d){bp, mj->b_type, mj->b_sj, mj->b_sk};
            acts = (view2d){ap, mj->a_type, mj->a_sm, mj->a_sk};
        }
        pack_view(mj->isa, &weights, cols, mj->K, packed);
        int64_t *table = column_constants(packed, acts.type, NULL, NULL, NULL, mj->m0, mj->shift);
        if (!table)
            break;
        int64_t np = ((const pack_header *)packed)->np;
        job jb = {.isa = mj->isa, .h = packed, .a = acts, .M = rows, .add = table, .mul = table + np,
                  .sh = table + 2 * np, .qmin = mj->qmin, .qmax = mj->qmax,
                  .out = mj->out + (size_t)(i * mj->M * mj->N) * osize, .out_type = mj->out_type,
                  .osm = mj->swap ? 1 : mj->N, .osn = mj->swap ? mj->N : 1};
        run_threads(&jb, mj->threads);
        free(table);
    }
    free(packed);
}

static void matmul_task(void *jobs, int t, int tasks) {
    (void)tasks;
    matmul_batches((const matmul_job *)jobs + t);
}

/* ----- AVX-512 VNNI batched matmul (B int8: attention's Q·Kᵀ and P·V) ---------------------------------
   A direct path for small K and per-head batches, where the generic driver's per-batch costs (a
   scalar pack through int16 rows, per-batch allocations, a scalar store loop) outweigh the K loop.
   Work items are (batch, block of 8 rows); each worker takes a contiguous run of items and packs a
   batch's B when its run enters that batch, into a buffer it keeps: [N/32][K/4][32][4] int8 as the
   VNNI weights, the 4x4-byte transposes done with byte/word unpacks when B is contiguous along N
   (P·V: V rows) and with 32-bit moves when it is contiguous along K (Q·Kᵀ: the rows of K). Column sums
   come from vpdpbusd with ones; the accumulators start at corr[j] = −128·Σ_k B[k, j] (int8 A is read
   as A + 128, uint8 A as is), so they end at the exact int32 product sum Σ_k A·B (in range: |Σ| <=
   K·255·128). The epilogue works on the registers: rs() on even / odd int64 lanes (vpmuldq, vpsraq),
   the clamp in int64, then a masked narrowing store of the valid columns. */
#if defined(__x86_64__)
#define VNNI_ATTR __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni")))

typedef struct {
    const char *a, *b;
    int a_type, out_type;
    int64_t a_sb, a_sm, a_sk, b_sb, b_sk, b_sj, M, K, N;
    int32_t m0, shift, qmin, qmax;
    char *out;
    int64_t item_begin, item_end; /* items: batch · row_blocks + block */
} vmm_job;

/* B of one batch into w ([np/32][kp/4][32][4]) and corr (np int32) */
VNNI_ATTR static void vmm_pack(const vmm_job *j, const int8_t *bp, int8_t *w, int32_t *corr, int64_t kp,
                               int64_t np) {
    int64_t K = j->K, N = j->N, sk = j->b_sk, sj = j->b_sj;
    const __m512i ones = _mm512_set1_epi8(1), zero = _mm512_setzero_si512();
    for (int64_t c0 = 0; c0 < np; c0 += 32) {
        int8_t *blk = w + c0 * kp;
        int full = c0 + 32 <= N;
        int64_t kfull = full ? K / 4 : 0; /* k blocks without padding */
        if (sk == 1) {
            for (int c = 0; c < 32; c++) {
                const int8_t *src = bp + (c0 + c) * sj;
                for (int64_t kb = 0; kb < kfull; kb++) memcpy(blk + kb * 128 + 4 * c, src + 4 * kb, 4);
            }
        } else if (sj == 1) {
            for (int64_t kb = 0; kb < kfull; kb++) {
                int8_t *d = blk + kb * 128;
                for (int h = 0; h < 2; h++) {
                    const int8_t *s = bp + 4 * kb * sk + c0 + 16 * h;
                    __m128i r0 = _mm_loadu_si128((const __m128i *)s), r1 = _mm_loadu_si128((const __m128i *)(s + sk));
                    __m128i r2 = _mm_loadu_si128((const __m128i *)(s + 2 * sk));
                    __m128i r3 = _mm_loadu_si128((const __m128i *)(s + 3 * sk));
                    __m128i lo01 = _mm_unpacklo_epi8(r0, r1), hi01 = _mm_unpackhi_epi8(r0, r1);
                    __m128i lo23 = _mm_unpacklo_epi8(r2, r3), hi23 = _mm_unpackhi_epi8(r2, r3);
                    _mm_storeu_si128((__m128i *)(d + 64 * h), _mm_unpacklo_epi16(lo01, lo23));
                    _mm_storeu_si128((__m128i *)(d + 64 * h + 16), _mm_unpackhi_epi16(lo01, lo23));
                    _mm_storeu_si128((__m128i *)(d + 64 * h + 32), _mm_unpacklo_epi16(hi01, hi23));
                    _mm_storeu_si128((__m128i *)(d + 64 * h + 48), _mm_unpackhi_epi16(hi01, hi23));
                }
            }
        } else {
            kfull = 0;
        }
        for (int64_t kb = kfull; kb < kp / 4; kb++) /* padding, edges, other strides */
            for (int c = 0; c < 32; c++)
                for (int u = 0; u < 4; u++) {
                    int64_t col = c0 + c, kk = 4 * kb + u;
                    blk[kb * 128 + 4 * c + u] = col < N && kk < K ? bp[kk * sk + col * sj] : 0;
                }
        __m512i s0 = zero, s1 = zero;
        for (int64_t kb = 0; kb < kp / 4; kb++) {
            s0 = _mm512_dpbusd_epi32(s0, ones, _mm512_loadu_si512((const void *)(blk + kb * 128)));
            s1 = _mm512_dpbusd_epi32(s1, ones, _mm512_loadu_si512((const void *)(blk + kb * 128 + 64)));
        }
        if (j->a_type == HW_I8) {
            s0 = _mm512_sub_epi32(zero, _mm512_slli_epi32(s0, 7));
            s1 = _mm512_sub_epi32(zero, _mm512_slli_epi32(s1, 7));
        } else {
            s0 = s1 = zero;
        }
        _mm512_storeu_si512((void *)(corr + c0), s0);
        _mm512_storeu_si512((void *)(corr + c0 + 16), s1);
    }
}

/* rows row0..row0+valid of A (batch pointer ap) as uint8 [8][kp] (int8: a + 128 = a ^ 0x80), zeros
   in the padding rows and columns */
VNNI_ATTR static void vmm_rows(const vmm_job *j, const char *ap, int64_t row0, int valid, int64_t kp, uint8_t *abuf) {
    int64_t K = j->K;
    uint8_t flip = j->a_type == HW_I8 ? 0x80 : 0;
    const __m512i flipv = _mm512_set1_epi8((char)flip);
    for (int r = 0; r < 8; r++) {
        uint8_t *d = abuf + r * kp;
        if (r >= valid) {
            memset(d, 0, (size_t)kp);
            continue;
        }
        const uint8_t *s = (const uint8_t *)ap + (row0 + r) * j->a_sm;
        int64_t kk = 0;
        if (j->a_sk == 1) {
            for (; kk + 64 <= K; kk += 64)
                _mm512_storeu_si512((void *)(d + kk), _mm512_xor_si512(_mm512_loadu_si512((const void *)(s + kk)), flipv));
            if (kk < K) {
                __mmask64 m = ((__mmask64)1 << (K - kk)) - 1;
                _mm512_mask_storeu_epi8(d + kk, m, _mm512_xor_si512(_mm512_maskz_loadu_epi8(m, s + kk), flipv));
                kk = K;
            }
        } else {
            for (; kk < K; kk++) d[kk] = s[kk * j->a_sk] ^ flip;
        }
        for (; kk < kp; kk++) d[kk] = 0;
    }
}

/* The epilogue. For shift >= 33 it stays in 32-bit lanes: with t·m0 = H·2^32 + L (0 <= L < 2^32),
   rs(t, m0, shift) = floor((H + 2^(shift−33)) / 2^(shift−32)) (the low word cannot carry into the
   rounding bit, which sits at or above bit 32), |H| <= 2^30 so the add stays in int32; H is the high
   word of the even and odd vpmuldq products, gathered by one vpermt2d. Otherwise in int64 lanes. */
typedef struct {
    int narrow;
    __m512i m0, half, lo, hi, pick, half32, lo32, hi32;
    __m128i count, count32;
} vmm_ep;

/* clamp(rs(t, m0, shift)) of 16 int32 sums, the `mask` lanes stored at dst (out_type) */
VNNI_ATTR static inline void vmm_store(__m512i t, const vmm_ep *e, char *dst, int out_type, __mmask16 mask) {
    __m512i ev = _mm512_mul_epi32(t, e->m0), od = _mm512_mul_epi32(_mm512_srli_epi64(t, 32), e->m0), v;
    if (e->narrow) {
        v = _mm512_sra_epi32(_mm512_add_epi32(_mm512_permutex2var_epi32(ev, e->pick, od), e->half32), e->count32);
        v = _mm512_min_epi32(_mm512_max_epi32(v, e->lo32), e->hi32);
    } else {
        ev = _mm512_min_epi64(_mm512_max_epi64(_mm512_sra_epi64(_mm512_add_epi64(ev, e->half), e->count), e->lo), e->hi);
        od = _mm512_min_epi64(_mm512_max_epi64(_mm512_sra_epi64(_mm512_add_epi64(od, e->half), e->count), e->lo), e->hi);
        v = _mm512_mask_blend_epi32(0xAAAA, ev, _mm512_slli_epi64(od, 32));
    }
    switch (out_type) {
    case HW_I8:
    case HW_U8: _mm_mask_storeu_epi8(dst, mask, _mm512_cvtepi32_epi8(v)); break;
    case HW_I16: _mm256_mask_storeu_epi16(dst, mask, _mm512_cvtepi32_epi16(v)); break;
    default: _mm512_mask_storeu_epi32(dst, mask, v);
    }
}

/* one 8 x 32 tile (cols <= 32 valid, 16 when cols <= 16): out rows at dst, row stride ldo bytes */
VNNI_ATTR static void vmm_tile(const uint8_t *a, const int8_t *w, int64_t kp, const int32_t *corr, int valid,
                               int cols, const vmm_ep *e, char *dst, int64_t ldo, int out_type, int osize) {
    __m512i c00 = _mm512_loadu_si512((const void *)corr), c01 = _mm512_loadu_si512((const void *)(corr + 16));
    __m512i c10 = c00, c11 = c01, c20 = c00, c21 = c01, c30 = c00, c31 = c01, c40 = c00, c41 = c01, c50 = c00,
            c51 = c01, c60 = c00, c61 = c01, c70 = c00, c71 = c01;
    if (cols > 16) {
        for (int64_t k = 0; k < kp; k += 4, w += 128) {
            __m512i w0 = _mm512_loadu_si512((const void *)w), w1 = _mm512_loadu_si512((const void *)(w + 64));
#define VMM_ROW(r)                                                                                            \
    {                                                                                                         \
        __m512i av = _mm512_set1_epi32(load32(a + (r) * kp + k));                                             \
        c##r##0 = _mm512_dpbusd_epi32(c##r##0, av, w0);                                                       \
        c##r##1 = _mm512_dpbusd_epi32(c##r##1, av, w1);                                                       \
    }
            VMM_ROW(0) VMM_ROW(1) VMM_ROW(2) VMM_ROW(3) VMM_ROW(4) VMM_ROW(5) VMM_ROW(6) VMM_ROW(7)
#undef VMM_ROW
        }
    } else {
        for (int64_t k = 0; k < kp; k += 4, w += 128) {
            __m512i w0 = _mm512_loadu_si512((const void *)w);
#define VMM_ROW(r) c##r##0 = _mm512_dpbusd_epi32(c##r##0, _mm512_set1_epi32(load32(a + (r) * kp + k)), w0);
            VMM_ROW(0) VMM_ROW(1) VMM_ROW(2) VMM_ROW(3) VMM_ROW(4) VMM_ROW(5) VMM_ROW(6) VMM_ROW(7)
#undef VMM_ROW
        }
    }
    __mmask16 m0 = cols >= 16 ? 0xFFFF : (__mmask16)((1u << cols) - 1);
    __mmask16 m1 = cols >= 32 ? 0xFFFF : (cols > 16 ? (__mmask16)((1u << (cols - 16)) - 1) : 0);
#define VMM_OUT(r)                                                                                            \
    if ((r) < valid) {                                                                                        \
        vmm_store(c##r##0, e, dst + (r) * ldo, out_type, m0);                                                 \
        if (m1) vmm_store(c##r##1, e, dst + (r) * ldo + 16 * osize, out_type, m1);                            \
    }
    VMM_OUT(0) VMM_OUT(1) VMM_OUT(2) VMM_OUT(3) VMM_OUT(4) VMM_OUT(5) VMM_OUT(6) VMM_OUT(7)
#undef VMM_OUT
}

VNNI_ATTR static void vmm_run(const vmm_job *j) {
    int64_t kp = round_up(j->K, 4), np = round_up(j->N, 32), blocks = (j->M + 7) / 8;
    if (j->item_end <= j->item_begin)
        return;
    int8_t *w = aligned_alloc(64, (size_t)round_up(np * kp, 64) + 64);
    int32_t *corr = aligned_alloc(64, (size_t)np * sizeof(int32_t) + 64);
    uint8_t *abuf = aligned_alloc(64, (size_t)round_up(8 * kp, 64) + 64);
    if (!w || !corr || !abuf) {
        free(w);
        free(corr);
        free(abuf);
        return;
    }
    int osize = j->out_type == HW_I32 ? 4 : (j->out_type == HW_I16 ? 2 : 1);
    int narrow = j->shift >= 33;
    vmm_ep e = {narrow, _mm512_set1_epi64(j->m0), _mm512_set1_epi64(j->shift ? (int64_t)1 << (j->shift - 1) : 0),
                _mm512_set1_epi64(j->qmin), _mm512_set1_epi64(j->qmax),
                _mm512_setr_epi32(1, 17, 3, 19, 5, 21, 7, 23, 9, 25, 11, 27, 13, 29, 15, 31),
                _mm512_set1_epi32(narrow ? 1 << (j->shift - 33) : 0), _mm512_set1_epi32(j->qmin),
                _mm512_set1_epi32(j->qmax), _mm_cvtsi32_si128(j->shift), _mm_cvtsi32_si128(narrow ? j->shift - 32 : 0)};
    int64_t current = -1;
    for (int64_t item = j->item_begin; item < j->item_end; item++) {
        int64_t bi = item / blocks, row0 = item % blocks * 8;
        if (bi != current) {
            vmm_pack(j, (const int8_t *)j->b + bi * j->b_sb, w, corr, kp, np);
            current = bi;
        }
        int valid = (int)(j->M - row0 < 8 ? j->M - row0 : 8);
        vmm_rows(j, j->a + bi * j->a_sb, row0, valid, kp, abuf);
        char *dst = j->out + (size_t)((bi * j->M + row0) * j->N) * osize;
        for (int64_t c0 = 0; c0 < np; c0 += 32) {
            int cols = (int)(j->N - c0 < 32 ? j->N - c0 : 32);
            vmm_tile(abuf, w + c0 * kp, kp, corr + c0, valid, cols, &e, dst + c0 * osize, j->N * osize,
                     j->out_type, osize);
        }
    }
    free(w);
    free(corr);
    free(abuf);
}

static void vmm_task(void *jobs, int t, int tasks) {
    (void)tasks;
    vmm_run((const vmm_job *)jobs + t);
}

static void vmm_matmul(const vmm_job *base, int64_t batch, int threads) {
    int64_t items = batch * ((base->M + 7) / 8);
    int workers = threads > POOL_MAX_THREADS ? POOL_MAX_THREADS : (threads < 1 ? 1 : threads);
    if (workers > items)
        workers = (int)items;
    vmm_job jobs[POOL_MAX_THREADS];
    for (int t = 0; t < workers; t++) {
        jobs[t] = *base;
        jobs[t].item_begin = items * t / workers;
        jobs[t].item_end = items * (t + 1) / workers;
    }
    pool_run(workers, workers, vmm_task, jobs);
}
#endif

void hw_matmul(const void *a, int a_type, int64_t a_sb, int64_t a_sm, int64_t a_sk,
               const void *b, int b_type, int64_t b_sb, int64_t b_sk, int64_t b_sj,
               int64_t batch, int64_t M, int64_t K, int64_t N, int32_t m0, int32_t shift, int32_t qmin, int32_t qmax,
               void *out, int out_type, int threads) {
    if (batch <= 0 || M <= 0 || N <= 0)
        return;
    int isa = hw_isa();
#if defined(__x86_64__)
    if (isa == HW_ISA_AVX512VNNI && b_type == HW_I8 && (a_type == HW_I8 || a_type == HW_U8)) {
        vmm_job vj = {.a = a, .b = b, .a_type = a_type, .out_type = out_type, .a_sb = a_sb, .a_sm = a_sm,
                      .a_sk = a_sk, .b_sb = b_sb, .b_sk = b_sk, .b_sj = b_sj, .M = M, .K = K, .N = N, .m0 = m0,
                      .shift = shift, .qmin = qmin, .qmax = qmax, .out = out};
        vmm_matmul(&vj, batch, threads);
        return;
    }
#endif
    int swap = 0;
    if (!geometry_of(isa).wide_weights && b_type == HW_U8) {
        if (a_type == HW_I8)
            swap = 1;
        else
            isa = isa == HW_ISA_AVX512VNNI ? HW_ISA_AVX2 : (isa == HW_ISA_NEON_DOTPROD ? HW_ISA_NEON : HW_ISA_SCALAR);
    }
    matmul_job base = {.isa = isa, .swap = swap, .out_type = out_type, .threads = threads, .a = a, .b = b,
                       .a_type = a_type, .b_type = b_type, .a_sb = a_sb, .a_sm = a_sm, .a_sk = a_sk, .b_sb = b_sb,
                       .b_sk = b_sk, .b_sj = b_sj, .M = M, .K = K, .N = N, .m0 = m0, .shift = shift, .qmin = qmin,
                       .qmax = qmax, .out = out, .first = 0, .step = 1, .batch = batch};
    int workers = threads > POOL_MAX_THREADS ? POOL_MAX_THREADS : threads;
    if (workers <= 1 || batch < workers) { /* one batch at a time, rows split over the threads */
        matmul_batches(&base);
        return;
    }
    /* batches split over the threads (each packs its own), one thread per batch's rows */
    matmul_job jobs[POOL_MAX_THREADS];
    for (int t = 0; t < workers; t++) {
        jobs[t] = base;
        jobs[t].threads = 1;
        jobs[t].first = t;
        jobs[t].step = workers;
    }
    pool_run(workers, workers, matmul_task, jobs);
}

/* ----- convolution helpers ------------------------------------------------------------------------------ */
static int64_t conv_out(int64_t size, int k, int s, int p, int d) { return (size + 2 * p - d * (k - 1) - 1) / s + 1; }

/* The image with its padding made explicit: C planes of (H + 2ph) x (W + 2pw) bytes (code 0 around), and
   `slack` zero bytes after the last plane (for wide loads past a window's end); NULL: no memory. */
static uint8_t *padded_image(const uint8_t *src, int64_t C, int64_t H, int64_t W, int ph, int pw, size_t slack) {
    int64_t hp = H + 2 * ph, wp = W + 2 * pw;
    uint8_t *buf = malloc((size_t)(C * hp * wp) + slack);
    if (!buf)
        return NULL;
    for (int64_t c = 0; c < C; c++) {
        uint8_t *plane = buf + c * hp * wp;
        memset(plane, 0, (size_t)(ph * wp));
        for (int64_t y = 0; y < H; y++) {
            uint8_t *row = plane + (ph + y) * wp;
            memset(row, 0, (size_t)pw);
            memcpy(row + pw, src + (c * H + y) * W, (size_t)W);
            memset(row + pw + W, 0, (size_t)pw);
        }
        memset(plane + (ph + H) * wp, 0, (size_t)(ph * wp));
    }
    memset(buf + C * hp * wp, 0, slack);
    return buf;
}

static inline void copy8(uint8_t *dst, const uint8_t *src) {
    uint64_t v;
    memcpy(&v, src, 8);
    memcpy(dst, &v, 8);
}

/* Row (oy, ox) of the columns is C·kh runs of kw bytes, run (c, ky) read from the padded image at
   plane c, row oy·sh + ky·dh, column ox·sw (+ kx·dw). With dw = 1 and kw <= 8 each run is one 8-byte
   load and store: the store's extra bytes fall on runs of the same row written after it (the runs that
   would pass the row's end are copied exactly), the load's extra bytes come from the next padded row or
   the slack. Other geometries copy byte by byte, with no bounds tests (the padding is in the image). */
void hw_im2col(const void *x, int x_type, int64_t C, int64_t H, int64_t W, int kh, int kw, int sh, int sw,
               int ph, int pw, int dh, int dw, void *cols) {
    (void)x_type; /* 8-bit either way: a byte copy, padding is code 0 */
    int64_t OH = conv_out(H, kh, sh, ph, dh), OW = conv_out(W, kw, sw, pw, dw);
    if (OH <= 0 || OW <= 0 || C <= 0)
        return;
    int64_t hp = H + 2 * ph, wp = W + 2 * pw, runs = C * kh, width = runs * kw;
    uint8_t *img = padded_image(x, C, H, W, ph, pw, 16);
    int64_t *offset = malloc((size_t)runs * sizeof(int64_t));
    if (!img || !offset) {
        free(img);
        free(offset);
        return;
    }
    for (int64_t c = 0; c < C; c++)
        for (int ky = 0; ky < kh; ky++)
            offset[c * kh + ky] = c * hp * wp + (int64_t)ky * dh * wp;
    int wide = dw == 1 && kw <= 8;
    int64_t wide_runs = wide ? (width >= 8 ? (width - 8) / kw + 1 : 0) : 0; /* runs r with r·kw + 8 <= width */
    uint8_t *dst = cols;
    for (int64_t oy = 0; oy < OH; oy++)
        for (int64_t ox = 0; ox < OW; ox++, dst += width) {
            const uint8_t *base = img + oy * sh * wp + ox * sw;
            int64_t r = 0;
            for (; r < wide_runs; r++)
                copy8(dst + r * kw, base + offset[r]);
            for (; r < runs; r++) {
                const uint8_t *src = base + offset[r];
                uint8_t *d = dst + r * kw;
                for (int kx = 0; kx < kw; kx++)
                    d[kx] = src[kx * dw];
            }
        }
    free(offset);
    free(img);
}

/* Depthwise conv, AVX2 (8 lanes) and AVX-512 (16 lanes): per channel the padded plane as int32, split by
   column phase (padded column j = q·sw + f goes to phase plane f, index q; zeros around and past the right
   edge as far as the last vector of a row reads), then one vector of output columns at a time:
   Σ_ky,kx w·x, the window column ox·sw + kx·dw read as one contiguous load from phase (kx·dw) mod sw at
   index ox + (kx·dw) div sw; exact in int32 (|Σ| <= kh·kw·255·128). Epilogue per lane:
   (acc·m0 + bias·m0 + 2^(shift−1)) >> shift in int64 (even and odd lanes by vpmuldq; AVX2's arithmetic
   shift as ~(~p >>> s) for p < 0), the clamp, a narrowing store. */
#if defined(__x86_64__)
__attribute__((target("avx2"))) static inline __m256i dw_requant8(__m256i acc, __m256i m0v, __m256i addv,
                                                                  __m128i count, __m256i lo, __m256i hi) {
    const __m256i zero = _mm256_setzero_si256();
    __m256i r[2];
    for (int h = 0; h < 2; h++) {
        __m256i p = _mm256_add_epi64(_mm256_mul_epi32(h ? _mm256_srli_epi64(acc, 32) : acc, m0v), addv);
        __m256i sign = _mm256_cmpgt_epi64(zero, p);
        p = _mm256_xor_si256(_mm256_srl_epi64(_mm256_xor_si256(p, sign), count), sign);
        p = _mm256_blendv_epi8(p, hi, _mm256_cmpgt_epi64(p, hi));
        r[h] = _mm256_blendv_epi8(p, lo, _mm256_cmpgt_epi64(lo, p));
    }
    return _mm256_blend_epi32(r[0], _mm256_slli_epi64(r[1], 32), 0xAA);
}

__attribute__((target("avx2"))) static void dw_store8(void *out, int type, int64_t at, __m256i v) {
    __m128i w16 = _mm_packs_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1)); /* in range: exact */
    switch (type) {
    case HW_I8: _mm_storel_epi64((__m128i *)((int8_t *)out + at), _mm_packs_epi16(w16, w16)); break;
    case HW_U8: _mm_storel_epi64((__m128i *)((uint8_t *)out + at), _mm_packus_epi16(w16, w16)); break;
    case HW_I16: _mm_storeu_si128((__m128i *)((int16_t *)out + at), w16); break;
    default: _mm256_storeu_si256((__m256i *)((int32_t *)out + at), v);
    }
}

/* The phase-split int32 planes of one channel at a time, for vectors of `lanes` output columns. */
typedef struct {
    int32_t *plane;
    int64_t *tap;        /* where tap kx reads, relative to a row's start: phase plane and index */
    int64_t wq, phase;   /* a phase row's length, one phase plane's size */
    int64_t H, W, ph, pw, sw;
} dw_planes;

static int dw_planes_init(dw_planes *d, int64_t H, int64_t W, int64_t OW, int lanes, int kw, int sw, int ph, int pw,
                          int dw) {
    int64_t padded_ow = (OW + lanes - 1) / lanes * lanes, hp = H + 2 * ph;
    d->wq = padded_ow + (int64_t)(kw - 1) * dw / sw; /* every vector read fits in a phase row */
    if (d->wq * sw < W + 2 * pw)
        d->wq = (W + 2 * pw + sw - 1) / sw;
    d->phase = hp * d->wq;
    d->H = H, d->W = W, d->ph = ph, d->pw = pw, d->sw = sw;
    d->plane = calloc((size_t)(sw * d->phase), sizeof(int32_t));
    d->tap = malloc((size_t)kw * sizeof(int64_t));
    if (!d->plane || !d->tap) {
        free(d->plane);
        free(d->tap);
        return 0;
    }
    for (int kx = 0; kx < kw; kx++)
        d->tap[kx] = (int64_t)kx * dw % sw * d->phase + (int64_t)kx * dw / sw;
    return 1;
}

/* channel c of x into the planes' interior (the zeros around stay from the calloc) */
static void dw_planes_fill(const dw_planes *d, const void *x, int x_type, int64_t c) {
    int64_t H = d->H, W = d->W, sw = d->sw;
    for (int64_t y = 0; y < H; y++) {
        int64_t at = (c * H + y) * W, row = (d->ph + y) * d->wq, f = d->pw % sw, q = d->pw / sw; /* column pw + i */
        if (sw == 1) { /* one phase: a contiguous widening copy */
            int32_t *dst = d->plane + row + d->pw;
            if (x_type == HW_U8)
                for (int64_t i = 0; i < W; i++) dst[i] = ((const uint8_t *)x)[at + i];
            else
                for (int64_t i = 0; i < W; i++) dst[i] = ((const int8_t *)x)[at + i];
            continue;
        }
        for (int64_t i = 0; i < W; i++) {
            d->plane[f * d->phase + row + q] = x_type == HW_U8 ? ((const uint8_t *)x)[at + i] : ((const int8_t *)x)[at + i];
            if (++f == sw) {
                f = 0;
                q++;
            }
        }
    }
}

static void dw_planes_free(dw_planes *d) {
    free(d->plane);
    free(d->tap);
}

__attribute__((target("avx2"))) static void depthwise_avx2(const void *x, int x_type, int64_t C, int64_t H,
                                                           int64_t W, const int8_t *w, int kh, int kw, int sh, int sw,
                                                           int ph, int pw, int dh, int dw, const int32_t *bias,
                                                           const int32_t *m0, const int32_t *shift, int32_t qmin,
                                                           int32_t qmax, void *out, int out_type) {
    int64_t OH = conv_out(H, kh, sh, ph, dh), OW = conv_out(W, kw, sw, pw, dw);
    int64_t full = OW / 8 * 8;
    dw_planes d;
    if (!dw_planes_init(&d, H, W, OW, 8, kw, sw, ph, pw, dw))
        return;
    const __m256i lo = _mm256_set1_epi64x(qmin), hi = _mm256_set1_epi64x(qmax);
    for (int64_t c = 0; c < C; c++) {
        dw_planes_fill(&d, x, x_type, c);
        const int8_t *wc = w + c * kh * kw;
        int64_t b = bias ? bias[c] : 0;
        int s = shift[c];
        const __m256i m0v = _mm256_set1_epi64x(m0[c]);
        const __m256i addv = _mm256_set1_epi64x(b * m0[c] + (s ? (int64_t)1 << (s - 1) : 0));
        const __m128i count = _mm_cvtsi32_si128(s);
        for (int64_t oy = 0; oy < OH; oy++) {
            for (int64_t ox = 0; ox < OW; ox += 8) {
                __m256i acc = _mm256_setzero_si256();
                for (int ky = 0; ky < kh; ky++) {
                    const int32_t *row = d.plane + (oy * sh + (int64_t)ky * dh) * d.wq + ox;
                    for (int kx = 0; kx < kw; kx++) {
                        __m256i v = _mm256_loadu_si256((const __m256i *)(row + d.tap[kx]));
                        acc = _mm256_add_epi32(acc, _mm256_mullo_epi32(v, _mm256_set1_epi32(wc[ky * kw + kx])));
                    }
                }
                __m256i v = dw_requant8(acc, m0v, addv, count, lo, hi);
                int64_t at = (c * OH + oy) * OW + ox;
                if (ox < full) {
                    dw_store8(out, out_type, at, v);
                } else {
                    int32_t tail[8];
                    _mm256_storeu_si256((__m256i *)tail, v);
                    for (int64_t i = 0; i < OW - ox; i++) store_value(out, out_type, at + i, tail[i]);
                }
            }
        }
    }
    dw_planes_free(&d);
}

/* The same with 16 lanes (AVX-512): rs in int64 lanes by vpsraq, masked narrowing stores at the row's end. */
__attribute__((target("avx512f,avx512bw,avx512vl"))) static void
depthwise_avx512(const void *x, int x_type, int64_t C, int64_t H, int64_t W, const int8_t *w, int kh, int kw, int sh,
                 int sw, int ph, int pw, int dh, int dw, const int32_t *bias, const int32_t *m0, const int32_t *shift,
                 int32_t qmin, int32_t qmax, void *out, int out_type) {
    int64_t OH = conv_out(H, kh, sh, ph, dh), OW = conv_out(W, kw, sw, pw, dw);
    dw_planes d;
    if (!dw_planes_init(&d, H, W, OW, 16, kw, sw, ph, pw, dw))
        return;
    const __m512i lo = _mm512_set1_epi64(qmin), hi = _mm512_set1_epi64(qmax);
    for (int64_t c = 0; c < C; c++) {
        dw_planes_fill(&d, x, x_type, c);
        const int8_t *wc = w + c * kh * kw;
        int64_t b = bias ? bias[c] : 0;
        int s = shift[c];
        const __m512i m0v = _mm512_set1_epi64(m0[c]);
        const __m512i addv = _mm512_set1_epi64(b * m0[c] + (s ? (int64_t)1 << (s - 1) : 0));
        const __m128i count = _mm_cvtsi32_si128(s);
        for (int64_t oy = 0; oy < OH; oy++) {
            for (int64_t ox = 0; ox < OW; ox += 16) {
                __m512i acc = _mm512_setzero_si512();
                for (int ky = 0; ky < kh; ky++) {
                    const int32_t *row = d.plane + (oy * sh + (int64_t)ky * dh) * d.wq + ox;
                    for (int kx = 0; kx < kw; kx++)
                        acc = _mm512_add_epi32(acc, _mm512_mullo_epi32(_mm512_loadu_si512((const void *)(row + d.tap[kx])),
                                                                       _mm512_set1_epi32(wc[ky * kw + kx])));
                }
                __m512i ev = _mm512_sra_epi64(_mm512_add_epi64(_mm512_mul_epi32(acc, m0v), addv), count);
                __m512i od = _mm512_sra_epi64(_mm512_add_epi64(_mm512_mul_epi32(_mm512_srli_epi64(acc, 32), m0v), addv),
                                              count);
                ev = _mm512_min_epi64(_mm512_max_epi64(ev, lo), hi);
                od = _mm512_min_epi64(_mm512_max_epi64(od, lo), hi);
                __m512i v = _mm512_mask_blend_epi32(0xAAAA, ev, _mm512_slli_epi64(od, 32));
                __mmask16 mask = OW - ox >= 16 ? 0xffff : (__mmask16)((1u << (OW - ox)) - 1);
                int64_t at = (c * OH + oy) * OW + ox;
                switch (out_type) {
                case HW_I8: _mm512_mask_cvtepi32_storeu_epi8((int8_t *)out + at, mask, v); break;
                case HW_U8: _mm512_mask_cvtepi32_storeu_epi8((uint8_t *)out + at, mask, v); break;
                case HW_I16: _mm512_mask_cvtepi32_storeu_epi16((int16_t *)out + at, mask, v); break;
                default: _mm512_mask_storeu_epi32((int32_t *)out + at, mask, v);
                }
            }
        }
    }
    dw_planes_free(&d);
}
#endif

void hw_depthwise_conv2d(const void *x, int x_type, int64_t C, int64_t H, int64_t W, const int8_t *w, int kh,
                         int kw, int sh, int sw, int ph, int pw, int dh, int dw, const int32_t *bias,
                         const int32_t *m0, const int32_t *shift, int32_t qmin, int32_t qmax, void *out,
                         int out_type) {
    int64_t OH = conv_out(H, kh, sh, ph, dh), OW = conv_out(W, kw, sw, pw, dw);
    if (OH <= 0 || OW <= 0 || C <= 0)
        return;
#if defined(__x86_64__)
    if (hw_isa() == HW_ISA_AVX512VNNI) {
        depthwise_avx512(x, x_type, C, H, W, w, kh, kw, sh, sw, ph, pw, dh, dw, bias, m0, shift, qmin, qmax, out,
                         out_type);
        return;
    }
    if (hw_isa() == HW_ISA_AVX2) {
        depthwise_avx2(x, x_type, C, H, W, w, kh, kw, sh, sw, ph, pw, dh, dw, bias, m0, shift, qmin, qmax, out,
                       out_type);
        return;
    }
#endif
    const uint8_t *xu = x;
    const int8_t *xs = x;
    for (int64_t c = 0; c < C; c++) {
        const int8_t *wc = w + c * kh * kw;
        int64_t b = bias ? bias[c] : 0;
        for (int64_t oy = 0; oy < OH; oy++)
            for (int64_t ox = 0; ox < OW; ox++) {
                int32_t acc = 0;
                for (int ky = 0; ky < kh; ky++) {
                    int64_t iy = oy * sh - ph + (int64_t)ky * dh;
                    if (iy < 0 || iy >= H)
                        continue;
                    for (int kx = 0; kx < kw; kx++) {
                        int64_t ix = ox * sw - pw + (int64_t)kx * dw;
                        if (ix < 0 || ix >= W)
                            continue;
                        int64_t at = (c * H + iy) * W + ix;
                        int32_t v = x_type == HW_U8 ? (int32_t)xu[at] : (int32_t)xs[at];
                        acc += v * wc[ky * kw + kx];
                    }
                }
                int64_t v = hw_clamp64(hw_rs((int64_t)acc + b, m0[c], shift[c]), qmin, qmax);
                store_value(out, out_type, (c * OH + oy) * OW + ox, (int32_t)v);
            }
    }
}
