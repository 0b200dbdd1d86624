/* hwact bit-sliced logic-gate kernel (the part of every emitted net source that does not depend on the net).
 *
 * Bit slicing: sample s of a batch lives in bit (s % 64) of 64-bit word (s / 64) of every node's bit plane,
 * so one bitwise instruction evaluates one gate for 64 samples (uint64), 128 (NEON) or 256 (AVX2) at once.
 * The net is compiled (hwact/backends/logic_c.py) into two programs over a scratch array of value slots:
 *   LN_BITS    the gates the raw outputs need; its results are the output bit planes;
 *   LN_COUNTS  the same gates plus GroupSum as a carry-save adder tree per class (full adders as the
 *              3-input instructions XOR3 and MAJ, half adders as XOR and AND);
 *              its results are the count bit planes (class c, bit d) = bit d of popcount(group c).
 * Gates are sorted by (logic level, gate id), so a program is a list of runs of one gate id; slots are
 * reused once their value is dead, which keeps the scratch array small enough for the cache.
 * Each gate is applied to a block of LN_BV vectors (LN_BV * LN_VWORDS words) of samples.
 *
 * The emitted source defines, before this text: LN_NUM_INPUTS, LN_NUM_OUTPUTS, LN_NUM_CLASSES,
 * LN_COUNT_BITS, LN_FINGERPRINT and, per program P in {BITS, COUNTS}: LN_P_SLOTS, LN_P_RESULTS, the run
 * tables (table style) or the function ln_P_gates (straight style), and ln_P_results[].
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__AVX2__)
#define LN_VBYTES 32
#define LN_KERNEL "avx2"
#elif defined(__ARM_NEON) || defined(__aarch64__)
#define LN_VBYTES 16
#define LN_KERNEL "neon"
#else
#define LN_VBYTES 8
#define LN_KERNEL "u64"
#endif
#ifndef LN_BV
#define LN_BV 2                                   /* vectors per block (2 measured best, 16k gates) */
#endif
#define LN_VWORDS (LN_VBYTES / 8)                 /* 64-bit words per vector */
#define LN_BLOCK_WORDS (LN_BV * LN_VWORDS)        /* words per slot per block */

typedef uint64_t ln_vec __attribute__((vector_size(LN_VBYTES), aligned(LN_VBYTES)));

/* the 16 difflogic gates, out(a, b) = (id >> (3 - (2a + b))) & 1, on whole vectors, and the two 3-input
 * instructions of the GroupSum adder tree: 16 = XOR3 (full adder sum), 17 = MAJ (full adder carry) */
#define LN_G0(x, y, z) ((x) ^ (x))
#define LN_G1(x, y, z) ((x) & (y))
#define LN_G2(x, y, z) ((x) & ~(y))
#define LN_G3(x, y, z) (x)
#define LN_G4(x, y, z) (~(x) & (y))
#define LN_G5(x, y, z) (y)
#define LN_G6(x, y, z) ((x) ^ (y))
#define LN_G7(x, y, z) ((x) | (y))
#define LN_G8(x, y, z) (~((x) | (y)))
#define LN_G9(x, y, z) (~((x) ^ (y)))
#define LN_G10(x, y, z) (~(y))
#define LN_G11(x, y, z) ((x) | ~(y))
#define LN_G12(x, y, z) (~(x))
#define LN_G13(x, y, z) (~(x) | (y))
#define LN_G14(x, y, z) (~((x) & (y)))
#define LN_G15(x, y, z) (~((x) ^ (x)))
#define LN_G16(x, y, z) ((x) ^ (y) ^ (z))
#define LN_G17(x, y, z) (((x) & (y)) | ((z) & ((x) ^ (y))))

/* one gate on one block: V[d] = op(V[a], V[b]) for each of the LN_BV vectors */
#define LN_GATE(OP, V, d, a, b) do {                                                        \
        ln_vec *D_ = (V) + (size_t)(d) * LN_BV;                                            \
        const ln_vec *A_ = (V) + (size_t)(a) * LN_BV, *B_ = (V) + (size_t)(b) * LN_BV;     \
        for (int k_ = 0; k_ < LN_BV; k_++) {                                                \
            ln_vec x_ = A_[k_], y_ = B_[k_]; (void)x_; (void)y_; D_[k_] = OP(x_, y_, x_);  \
        }                                                                                   \
    } while (0)
/* one 3-input instruction on one block: V[d] = op(V[a], V[b], V[c]) */
#define LN_GATE3(OP, V, d, a, b, c) do {                                                    \
        ln_vec *D_ = (V) + (size_t)(d) * LN_BV;                                            \
        const ln_vec *A_ = (V) + (size_t)(a) * LN_BV, *B_ = (V) + (size_t)(b) * LN_BV,     \
                     *C_ = (V) + (size_t)(c) * LN_BV;                                      \
        for (int k_ = 0; k_ < LN_BV; k_++) D_[k_] = OP(A_[k_], B_[k_], C_[k_]);            \
    } while (0)

#ifdef LN_STYLE_TABLE
/* run r applies gate id op[r] to len[r] consecutive entries of (dst, a, b[, c]) */
#define LN_CASE(ID) case ID: for (uint32_t g = 0; g < n; g++) LN_GATE(LN_G##ID, V, d[g], a[g], b[g]); break;
#define LN_CASE3(ID) case ID: for (uint32_t g = 0; g < n; g++) LN_GATE3(LN_G##ID, V, d[g], a[g], b[g], c[g]); break;
static void ln_walk(ln_vec *V, uint32_t runs, const uint8_t *op, const uint32_t *len,
                    const uint32_t *d, const uint32_t *a, const uint32_t *b, const uint32_t *c) {
    for (uint32_t r = 0; r < runs; r++) {
        uint32_t n = len[r];
        switch (op[r]) {
            LN_CASE(0) LN_CASE(1) LN_CASE(2) LN_CASE(3) LN_CASE(4) LN_CASE(5) LN_CASE(6) LN_CASE(7)
            LN_CASE(8) LN_CASE(9) LN_CASE(10) LN_CASE(11) LN_CASE(12) LN_CASE(13) LN_CASE(14) LN_CASE(15)
            LN_CASE3(16) LN_CASE3(17)
        }
        d += n; a += n; b += n; c += n;
    }
}
static void ln_BITS_gates(ln_vec *V) {
    ln_walk(V, LN_BITS_RUNS, ln_BITS_op, ln_BITS_len, ln_BITS_dst, ln_BITS_a, ln_BITS_b, ln_BITS_c);
}
static void ln_COUNTS_gates(ln_vec *V) {
    ln_walk(V, LN_COUNTS_RUNS, ln_COUNTS_op, ln_COUNTS_len, ln_COUNTS_dst, ln_COUNTS_a, ln_COUNTS_b, ln_COUNTS_c);
}
#endif

const char *ln_kernel_name(void) { return LN_KERNEL; }
const char *ln_fingerprint(void) { return LN_FINGERPRINT; }
int64_t ln_shape(int what) {                      /* 0 inputs, 1 outputs, 2 classes, 3 count bits */
    const int64_t shape[4] = {LN_NUM_INPUTS, LN_NUM_OUTPUTS, LN_NUM_CLASSES, LN_COUNT_BITS};
    return what >= 0 && what < 4 ? shape[what] : -1;
}

static ln_vec *ln_scratch(uint32_t slots) {
    size_t bytes = (size_t)(slots ? slots : 1) * LN_BV * sizeof(ln_vec);
    return (ln_vec *)aligned_alloc(LN_VBYTES < 16 ? 16 : LN_VBYTES, (bytes + 63) / 64 * 64);
}

/* Copy words [w0, w0 + LN_BLOCK_WORDS) of every input plane x[i][nwords] into slots 0..LN_NUM_INPUTS-1,
 * zero-filling past the end of the batch. */
static void ln_load_inputs(ln_vec *V, const uint64_t *x, int64_t nwords, int64_t w0) {
    int64_t have = nwords - w0 < LN_BLOCK_WORDS ? nwords - w0 : LN_BLOCK_WORDS;
    for (int64_t i = 0; i < LN_NUM_INPUTS; i++) {
        uint64_t *slot = (uint64_t *)(V + (size_t)i * LN_BV);
        memcpy(slot, x + i * nwords + w0, (size_t)have * 8);
        if (have < LN_BLOCK_WORDS) memset(slot + have, 0, (size_t)(LN_BLOCK_WORDS - have) * 8);
    }
}

/* Raw output bits: x[LN_NUM_INPUTS][nwords] -> y[LN_NUM_OUTPUTS][nwords] (bit planes). Returns 0, -1 on OOM. */
int ln_output_bits_packed(const uint64_t *x, int64_t nwords, uint64_t *y) {
    ln_vec *V = ln_scratch(LN_BITS_SLOTS);
    if (!V) return -1;
    for (int64_t w0 = 0; w0 < nwords; w0 += LN_BLOCK_WORDS) {
        ln_load_inputs(V, x, nwords, w0);
        ln_BITS_gates(V);
        int64_t have = nwords - w0 < LN_BLOCK_WORDS ? nwords - w0 : LN_BLOCK_WORDS;
        for (int64_t o = 0; o < LN_NUM_OUTPUTS; o++)
            memcpy(y + o * nwords + w0, V + (size_t)ln_BITS_results[o] * LN_BV, (size_t)have * 8);
    }
    free(V);
    return 0;
}

/* spread the 4 bits of a nibble into four 16-bit lanes */
static const uint64_t ln_spread4[16] = {
    0x0000000000000000ull, 0x0000000000000001ull, 0x0000000000010000ull, 0x0000000000010001ull,
    0x0000000100000000ull, 0x0000000100000001ull, 0x0000000100010000ull, 0x0000000100010001ull,
    0x0001000000000000ull, 0x0001000000000001ull, 0x0001000000010000ull, 0x0001000000010001ull,
    0x0001000100000000ull, 0x0001000100000001ull, 0x0001000100010000ull, 0x0001000100010001ull};

/* GroupSum: x[LN_NUM_INPUTS][nwords] -> counts[n_samples][LN_NUM_CLASSES] int32 (n_samples <= 64 * nwords).
 * The adder tree leaves each class count as LN_COUNT_BITS bit planes; they are unpacked four samples at a
 * time (16-bit lanes, exact while LN_COUNT_BITS <= 16) and bit by bit beyond that. Returns 0, -1 on OOM. */
int ln_class_counts_packed(const uint64_t *x, int64_t nwords, int64_t n_samples, int32_t *counts) {
    ln_vec *V = ln_scratch(LN_COUNTS_SLOTS);
    if (!V) return -1;
    for (int64_t w0 = 0; w0 < nwords; w0 += LN_BLOCK_WORDS) {
        ln_load_inputs(V, x, nwords, w0);
        ln_COUNTS_gates(V);
        for (int64_t c = 0; c < LN_NUM_CLASSES; c++) {
            const uint64_t *plane[LN_COUNT_BITS];
            for (int dbit = 0; dbit < LN_COUNT_BITS; dbit++)
                plane[dbit] = (const uint64_t *)(V + (size_t)ln_COUNTS_results[c * LN_COUNT_BITS + dbit] * LN_BV);
            for (int64_t w = 0; w < LN_BLOCK_WORDS && (w0 + w) * 64 < n_samples; w++) {
                int64_t s0 = (w0 + w) * 64;
                for (int q = 0; q < 16 && s0 + 4 * q < n_samples; q++) {
                    uint64_t lanes = 0;
                    if (LN_COUNT_BITS <= 16) {
                        for (int dbit = 0; dbit < LN_COUNT_BITS; dbit++)
                            lanes += ln_spread4[(plane[dbit][w] >> (4 * q)) & 15] << dbit;
                    }
                    for (int j = 0; j < 4 && s0 + 4 * q + j < n_samples; j++) {
                        int32_t count = 0;
                        if (LN_COUNT_BITS <= 16) {
                            count = (int32_t)((lanes >> (16 * j)) & 0xffff);
                        } else {
                            for (int dbit = 0; dbit < LN_COUNT_BITS; dbit++)
                                count |= (int32_t)((plane[dbit][w] >> (4 * q + j)) & 1) << dbit;
                        }
                        counts[(s0 + 4 * q + j) * LN_NUM_CLASSES + c] = count;
                    }
                }
            }
        }
    }
    free(V);
    return 0;
}

#ifdef LN_MAIN
/* Stand-alone runner (the aarch64 build, run under qemu-user): RUNNER IN OUT (files: logic_runner_io.h).
 * Prints the kernel name. */
#include "logic_runner_io.h"
int main(int argc, char **argv) {
    if (argc != 3) { fprintf(stderr, "usage: %s IN OUT\n", argv[0]); return 2; }
    int64_t n, nwords;
    uint64_t *x = ln_read_input(argv[1], &n, &nwords);
    if (!x) return 2;
    uint64_t *y = calloc((size_t)(LN_NUM_OUTPUTS * nwords + 1), 8);
    int32_t *counts = malloc((size_t)(n * LN_NUM_CLASSES + 1) * 4);
    if (ln_class_counts_packed(x, nwords, n, counts) || ln_output_bits_packed(x, nwords, y)) return 3;
    if (ln_write_output(argv[2], counts, y, n, nwords)) return 2;
    printf("%s\n", LN_KERNEL);
    return 0;
}
#endif
