/* hwact integer CPU runtime: the kernels that execute hwact's integer graphs (issue 15).

   Every kernel computes exactly what the op's one reference in the hwact/ir op modules computes (tolerance 0);
   the Python side (hwact/backends/int_cpu.py) derives every constant (dyadic m0/shift, exponent
   zero points, LayerNorm K/eps/precision, tables) with the same Python functions the reference uses
   and hands them in as integers, so a kernel implements integer formulas only.

   Tensors are contiguous row-major arrays in one of four element types; a kernel reads any of them
   and writes the type it is told (values are already within the output's bounds after the clamp).
   The one rounding rule: rs(x, m0, shift) = floor((x·m0 + 2^(shift−1)) / 2^shift) in int64 (x·m0 when
   shift = 0), 0 <= shift <= 62, 0 < m0 < 2^31. */
#ifndef HWACT_INT_H
#define HWACT_INT_H

#include <stddef.h>
#include <stdint.h>

enum hw_type { HW_I8 = 0, HW_U8 = 1, HW_I16 = 2, HW_I32 = 3 };
enum hw_isa { HW_ISA_SCALAR = 0, HW_ISA_AVX2 = 1, HW_ISA_AVX512VNNI = 2, HW_ISA_NEON = 3, HW_ISA_NEON_DOTPROD = 4 };

static inline int64_t hw_rs(int64_t x, int64_t m0, int shift) {
    return shift == 0 ? x * m0 : (x * m0 + ((int64_t)1 << (shift - 1))) >> shift;
}
static inline int64_t hw_clamp64(int64_t v, int64_t lo, int64_t hi) { return v < lo ? lo : (v > hi ? hi : v); }

/* ----- ISA (isa.c): the best path this CPU has, chosen at first use; tests may force a lower one ----- */
int hw_isa(void);                        /* enum hw_isa in use */
int hw_isa_available(int isa);           /* 1 when this CPU (and this build) can run `isa` */
int hw_force_isa(int isa);               /* 0 = done, -1 = not available; -2 resets to the best */
const char *hw_isa_name(int isa);

/* ----- threads (pool.c): one pool of worker threads, started on first need and reused ---------------
   The GEMM family takes its thread count per call (`threads`); the row and element kernels (Shiftmax,
   ShiftGELU, I-LayerNorm, requantize, add) split their rows over hw_threads() threads when each thread
   gets enough work (POOL_MIN_WORK elements), else they run on the calling thread. Results never depend on
   the thread count. */
void hw_set_threads(int n);              /* threads of the row kernels (1 by default; clamped to 1..64) */
int hw_threads(void);
int hw_pool_workers(void);               /* worker threads started so far (the calling thread not counted) */
int64_t hw_pool_dispatches(void);       /* calls handed to the pool so far (not those run on the calling thread) */

/* Internal, shared by the C files (not called from Python): pool_run runs fn(ctx, t, tasks) for every
   t < tasks on the calling thread and threads − 1 (< POOL_MAX_THREADS) workers of the pool;
   pool_threads_for is min(hw_threads(), work / min_work, items), at least 1. */
#define POOL_MAX_THREADS 64
#define POOL_MIN_WORK 65536
typedef void (*pool_task)(void *ctx, int task, int tasks);
void pool_run(int threads, int tasks, pool_task fn, void *ctx);
int pool_threads_for(int64_t work, int64_t min_work, int64_t items);

/* ----- GEMM family (gemm.c) ------------------------------------------------------------------------
   Weights W (N x K int8, row-major, values in [-127, 127]) are packed once for the ISA in use;
   hw_pack_size/hw_pack depend on hw_isa(), so pack after any hw_force_isa. */
size_t hw_pack_size(int64_t n, int64_t k);
void hw_pack(const int8_t *w, int64_t n, int64_t k, void *packed);

/* out[m, j] = clamp(rs(Σ_k a[m, k]·W[j, k] + bias[j], m0[j], shift[j]), qmin, qmax), then, when lut is
   not NULL, out = lut[out − lut_min] (a table over the codes qmin..qmax: a fused element function).
   a: M x K of a_type (HW_I8 or HW_U8), row stride lda elements; bias may be NULL (0).
   out element (m, j) is written at out + m·out_stride_m + j·out_stride_n (elements of out_type):
   (ldo, 1) for a row-major result, (1, M) for the NCHW output of a conv computed as patches x W.
   Work is split over rows of a across `threads` threads (1 = the calling thread only). */
void hw_linear(const void *a, int a_type, int64_t M, int64_t K, int64_t lda, const void *packed, int64_t N,
               const int32_t *bias, const int32_t *m0, const int32_t *shift, int32_t qmin, int32_t qmax,
               const int32_t *lut, int32_t lut_min, void *out, int out_type, int64_t out_stride_m,
               int64_t out_stride_n, int threads);

/* Batched activation x activation matmul (attention): for each b < batch,
   out[b, m, j] = clamp(rs(Σ_k A[b, m, k]·B[b, k, j], m0, shift), qmin, qmax)
   A element (b, m, k) at a + b·a_sb + m·a_sm + k·a_sk, likewise B (b, k, j) at b + b·b_sb + k·b_sk + j·b_sj
   (strides in elements: a transposed key is just other strides); out is contiguous (batch, M, N).
   a_type/b_type: HW_I8 or HW_U8. */
void hw_matmul(const void *a, int a_type, int64_t a_sb, int64_t a_sm, int64_t a_sk,
               const void *b, int b_type, int64_t b_sb, int64_t b_sk, int64_t b_sj,
               int64_t batch, int64_t M, int64_t K, int64_t N, int32_t m0, int32_t shift, int32_t qmin, int32_t qmax,
               void *out, int out_type, int threads);

/* im2col of one image x (C x H x W, x_type 8-bit) for a conv with kernel kh x kw: rows = OH·OW output
   pixels, columns = C·kh·kw in the order of W[j] flattened (c, ky, kx); padding reads code 0. */
void hw_im2col(const void *x, int x_type, int64_t C, int64_t H, int64_t W, int kh, int kw, int sh, int sw,
               int ph, int pw, int dh, int dw, void *cols);

/* Depthwise conv of one image (C x H x W): out[c, y, x] = clamp(rs(Σ x·w[c] + bias[c], m0[c], shift[c]),
   qmin, qmax); w: C x kh x kw int8; padding reads 0; out contiguous C x OH x OW. */
void hw_depthwise_conv2d(const void *x, int x_type, int64_t C, int64_t H, int64_t W, const int8_t *w, int kh,
                         int kw, int sh, int sw, int ph, int pw, int dh, int dw, const int32_t *bias,
                         const int32_t *m0, const int32_t *shift, int32_t qmin, int32_t qmax, void *out,
                         int out_type);

/* ----- rows and elements (rows.c) ------------------------------------------------------------------
   Row kernels work on `rows` contiguous rows of length C. Inputs are saturated to int16 first
   (hwact.ir.int_nonlinear_ops._saturate), as the references do. */

/* I-ViT Shiftmax (hwact::shiftmax, along the last dim): x0 = exp_zero_point(S_in), n the clamp,
   m0/shift = dyadic(2^-16 / S_out); factor = floor(2^62 / Σe); p = rs(e·factor, 1, 46). */
void hw_shiftmax(const void *x, int x_type, int64_t rows, int64_t C, int64_t x0, int n, int32_t m0, int shift,
                 int32_t qmin, int32_t qmax, void *out, int out_type);
/* ShiftGELU / λ-ShiftGELU (hwact::shift_gelu): x0, drop, m0, shift = gelu_constants(...); the row max
   m = max(0, max_k x_k) is taken over each row of length C (the last dim). */
void hw_shift_gelu(const void *x, int x_type, int64_t rows, int64_t C, int64_t x0, int n, int drop, int32_t m0,
                   int shift, int32_t qmin, int32_t qmax, void *out, int out_type);
/* I-LayerNorm over the last dim (hwact::i_layernorm): k, eps_int, precision, m0, shift =
   layernorm_constants(...); gamma/beta int32 per channel. */
void hw_i_layernorm(const void *x, int x_type, int64_t rows, int64_t C, const int32_t *gamma,
                    const int32_t *beta, int64_t k, int64_t eps_int, int precision, int32_t m0, int shift,
                    int32_t qmin, int32_t qmax, void *out, int out_type);
/* the integer square root the SIMD I-LayerNorm paths use (hwact.ir.int_nonlinear_ops.isqrt_newton, 1 <= v < 2^62) */
int64_t hw_isqrt(int64_t v);

/* Element kernels over `count` elements. A second operand b is broadcast by index
   b_index(i) = (i / b_div) % b_mod (b_div = 1, b_mod = count: same shape; b_mod = T·D: a (1, T, D)
   table added to (N, T, D); b_div = H·W, b_mod = N·C: a (N, C, 1, 1) gate times (N, C, H, W)). */
void hw_requantize(const void *x, int x_type, int64_t count, int32_t m0, int shift, int32_t qmin, int32_t qmax,
                   void *out, int out_type);
void hw_add(const void *a, int a_type, const void *b, int b_type, int64_t count, int64_t b_div, int64_t b_mod,
            int32_t m0a, int shifta, int32_t m0b, int shiftb, int32_t qmin, int32_t qmax, void *out, int out_type);
void hw_mul(const void *a, int a_type, const void *b, int b_type, int64_t count, int64_t b_div, int64_t b_mod,
            int32_t m0, int shift, int32_t qmin, int32_t qmax, void *out, int out_type);
/* hwact::int_lut: out = clamp(table[clamp(x − in_qmin, 0, size − 1)], qmin, qmax) */
void hw_lut(const void *x, int x_type, int64_t count, const int32_t *table, int32_t in_qmin, int32_t size,
            int32_t qmin, int32_t qmax, void *out, int out_type);
/* clamp (ReLU, hardtanh, ReLU6 on codes) and type conversion: out = clamp(x, lo, hi) */
void hw_clamp(const void *x, int x_type, int64_t count, int32_t lo, int32_t hi, void *out, int out_type);
/* hwact::int_mask: out = keep[(i / k_div) % k_mod] ? x : fill (keep: bytes 0/1) */
void hw_mask(const void *x, int x_type, const uint8_t *keep, int64_t count, int64_t k_div, int64_t k_mod,
             int32_t fill, void *out, int out_type);
/* hwact::int_max_pool2d on planes (N·C planes of H x W); padding never wins */
void hw_max_pool2d(const void *x, int x_type, int64_t planes, int64_t H, int64_t W, int kh, int kw, int sh, int sw,
                   int ph, int pw, void *out, int out_type);
/* mean as fold-quant-scales lowers it: x viewed as (outer, reduce, inner); out[o, i] =
   clamp(rs(Σ_r x[o, r, i], m0, shift), qmin, qmax) */
void hw_sum_requantize(const void *x, int x_type, int64_t outer, int64_t reduce, int64_t inner, int32_t m0,
                       int shift, int32_t qmin, int32_t qmax, void *out, int out_type);
/* hwact::int_embedding: out[i, :] = table[ids[i], :] (table: rows x dim int8) */
void hw_embedding(const int8_t *table, int64_t rows, int64_t dim, const int64_t *ids, int64_t count, void *out,
                  int out_type);
/* hwact::quantize: q = clamp(rint(x / scale), qmin, qmax) in float32 (round half to even), and
   hwact::dequantize: y = (float)q · scale */
void hw_quantize(const float *x, int64_t count, float scale, int32_t qmin, int32_t qmax, void *out, int out_type);
void hw_dequantize(const void *q, int q_type, int64_t count, float scale, float *out);

#endif
