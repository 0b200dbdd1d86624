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
 * LN_COUNT_BITS, LN_FINGERPRINT and, per program P in {BITS, COUNTS}: LN_P_SLOTS, LN_P_GATES, the run
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

/* Memory of the byte entry points: while a block's gates run (tens of microseconds), the next block's
 * input bytes (contiguous, LN_BLOCK_WORDS * 64 rows) are prefetched into the cache a few lines at a time,
 * spread over the gates in proportion to the instructions done, so reading them overlaps with the gates
 * instead of stalling the next packing step on main memory. NULL: nothing to prefetch. */
typedef struct {
    const uint8_t *next, *end;    /* lines still to prefetch */
    uint64_t per_gate;            /* lines per instruction, 16.16 fixed point */
    uint64_t owed;                /* lines owed so far, 16.16 */
} ln_prefetch;

#ifndef LN_PREFETCH_LOCALITY
#define LN_PREFETCH_LOCALITY 2                    /* __builtin_prefetch locality; -1 = no prefetch */
#endif
static inline void ln_prefetch_some(ln_prefetch *pf, uint32_t gates) {
    if (!pf || LN_PREFETCH_LOCALITY < 0) return;
    pf->owed += (uint64_t)gates * pf->per_gate;
    for (; pf->owed >= 65536 && pf->next < pf->end; pf->owed -= 65536, pf->next += 64)
        __builtin_prefetch(pf->next, 0, LN_PREFETCH_LOCALITY < 0 ? 0 : LN_PREFETCH_LOCALITY);
}

#ifdef LN_STYLE_TABLE
/* run r applies gate id op[r] to len[r] consecutive entries of (dst, a, b[, c]) */
#define LN_CASE(ID) case ID: for (uint32_t g = 0; g < n; g++) LN_GATE(LN_G##ID, V, d[g], a[g], b[g]); break;
#define LN_CASE3(ID) case ID: for (uint32_t g = 0; g < n; g++) LN_GATE3(LN_G##ID, V, d[g], a[g], b[g], c[g]); break;
static void ln_walk(ln_vec *V, ln_prefetch *pf, uint32_t runs, const uint8_t *op, const uint32_t *len,
                    const uint32_t *d, const uint32_t *a, const uint32_t *b, const uint32_t *c) {
    for (uint32_t r = 0; r < runs; r++) {
        uint32_t n = len[r];
        ln_prefetch_some(pf, n);
        switch (op[r]) {
            LN_CASE(0) LN_CASE(1) LN_CASE(2) LN_CASE(3) LN_CASE(4) LN_CASE(5) LN_CASE(6) LN_CASE(7)
            LN_CASE(8) LN_CASE(9) LN_CASE(10) LN_CASE(11) LN_CASE(12) LN_CASE(13) LN_CASE(14) LN_CASE(15)
            LN_CASE3(16) LN_CASE3(17)
        }
        d += n; a += n; b += n; c += n;
    }
}
static void ln_BITS_gates(ln_vec *V, ln_prefetch *pf) {
    ln_walk(V, pf, LN_BITS_RUNS, ln_BITS_op, ln_BITS_len, ln_BITS_dst, ln_BITS_a, ln_BITS_b, ln_BITS_c);
}
static void ln_COUNTS_gates(ln_vec *V, ln_prefetch *pf) {
    ln_walk(V, pf, LN_COUNTS_RUNS, ln_COUNTS_op, ln_COUNTS_len, ln_COUNTS_dst, ln_COUNTS_a, ln_COUNTS_b, ln_COUNTS_c);
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

/* ---------------------------------------------------------------------------------------- packing
 * User input is (n, LN_NUM_INPUTS) bytes, row-major, each 0 or 1 (a numpy uint8 or bool array). A block
 * needs it as bit planes: word w of slot i holds input i of samples 64w .. 64w + 63 (sample j in bit j).
 * That is a bit transpose of a 64-sample x 8-input tile, done in two steps:
 *   1. for each group g of 8 samples (rows r_0..r_7), t_g = OR_j (8 input bytes of r_j) << j: byte k of
 *      t_g now holds input k of the 8 samples (sample j in bit j) - valid because every byte is 0 or 1,
 *      so the shifted bits never meet; the raw bytes are OR-ed into `acc` to check exactly that;
 *   2. an 8 x 8 byte transpose of t_0..t_7 gives, for input k, the word whose byte g is byte k of t_g.
 * With AVX2 step 1 runs on 32 inputs at once and step 2 is a cascade of byte / 16-bit / 32-bit unpacks;
 * the scalar (SWAR) tile does the rest of the inputs and every input on other hosts (aarch64: NEON is
 * not needed for this step to cost well under the gates). Rows past the batch read a zero row. */
#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the logic kernel's input packing assumes a little-endian host"
#endif
#if defined(__AVX2__)
#include <immintrin.h>
#endif
#define LN_ZERO_ROW_BYTES (LN_NUM_INPUTS + 32)
static const uint8_t ln_zero_row[LN_ZERO_ROW_BYTES];
static const uint64_t ln_not_binary = 0xfefefefefefefefeull;   /* any bit but bit 0 of any byte */
#define LN_UNROLL _Pragma("GCC unroll 8")        /* the tiles' loops: constant shifts, values in registers */

static inline uint64_t ln_load8(const uint8_t *p, int64_t width) {     /* width (1..8) bytes, zero-extended */
    uint64_t v = 0;
    memcpy(&v, p, (size_t)width);
    return v;
}

/* The 64-bit words of inputs i .. i + width - 1 (width <= 8) of the 64 samples rows[0..63]:
 * dst[k * stride] = word of input i + k. */
static inline void ln_tile8(const uint8_t *const *rows, int64_t i, int64_t width, uint64_t *dst, int64_t stride,
                     uint64_t *acc) {
    uint64_t t[8], seen = 0;
    LN_UNROLL
    for (int g = 0; g < 8; g++) {
        uint64_t v = 0;
        LN_UNROLL
        for (int j = 0; j < 8; j++) {
            uint64_t raw = ln_load8(rows[8 * g + j] + i, width);
            seen |= raw;
            v |= raw << j;
        }
        t[g] = v;
    }
    /* transpose the 8 x 8 byte matrix t[g] byte k: swap the off-diagonal 4x4, then 2x2, then 1x1 blocks */
    LN_UNROLL
    for (int g = 0; g < 4; g++) {
        uint64_t a = t[g], b = t[g + 4];
        t[g] = (a & 0x00000000ffffffffull) | (b << 32);
        t[g + 4] = (a >> 32) | (b & 0xffffffff00000000ull);
    }
    LN_UNROLL
    for (int g = 0; g < 8; g += (g & 1) ? 3 : 1) {                       /* g = 0, 1, 4, 5 */
        uint64_t a = t[g], b = t[g + 2];
        t[g] = (a & 0x0000ffff0000ffffull) | ((b & 0x0000ffff0000ffffull) << 16);
        t[g + 2] = ((a >> 16) & 0x0000ffff0000ffffull) | (b & 0xffff0000ffff0000ull);
    }
    LN_UNROLL
    for (int g = 0; g < 8; g += 2) {
        uint64_t a = t[g], b = t[g + 1];
        t[g] = (a & 0x00ff00ff00ff00ffull) | ((b & 0x00ff00ff00ff00ffull) << 8);
        t[g + 1] = ((a >> 8) & 0x00ff00ff00ff00ffull) | (b & 0xff00ff00ff00ff00ull);
    }
    for (int64_t k = 0; k < width; k++) dst[k * stride] = t[k];
    *acc |= seen;
}

#if defined(__AVX2__)
/* AVX2: step 1 on 32 inputs per load. Rows are read in order, LN_PACK_CHUNKS chunks of 32 inputs at a time
 * (merged[c][g] = t_g of chunk c), then each chunk is transposed by ln_transpose32. */
#define LN_PACK_CHUNKS 16
static void ln_transpose32(const __m256i *t, uint64_t *dst, int64_t stride) {
    /* byte k of t[0..7] -> one 64-bit lane; unpacks work within 128-bit halves, so the lanes of the results
     * are inputs k, k + 1 (low half) and k + 16, k + 17 (high half) for k = 0, 2, .., 14 */
    __m256i p[8], r[8];
    LN_UNROLL
    for (int h = 0; h < 2; h++) {                                    /* samples 0-31, then 32-63 */
        const __m256i *s = t + 4 * h;
        p[4 * h + 0] = _mm256_unpacklo_epi8(s[0], s[1]);              /* inputs 0-7 | 16-23 */
        p[4 * h + 1] = _mm256_unpackhi_epi8(s[0], s[1]);              /* inputs 8-15 | 24-31 */
        p[4 * h + 2] = _mm256_unpacklo_epi8(s[2], s[3]);
        p[4 * h + 3] = _mm256_unpackhi_epi8(s[2], s[3]);
    }
    LN_UNROLL
    for (int h = 0; h < 2; h++) {
        const __m256i *s = p + 4 * h;
        r[4 * h + 0] = _mm256_unpacklo_epi16(s[0], s[2]);             /* inputs 0-3 | 16-19 */
        r[4 * h + 1] = _mm256_unpackhi_epi16(s[0], s[2]);             /* inputs 4-7 | 20-23 */
        r[4 * h + 2] = _mm256_unpacklo_epi16(s[1], s[3]);             /* inputs 8-11 | 24-27 */
        r[4 * h + 3] = _mm256_unpackhi_epi16(s[1], s[3]);             /* inputs 12-15 | 28-31 */
    }
    LN_UNROLL
    for (int q = 0; q < 4; q++) {
        __m256i words[2] = {_mm256_unpacklo_epi32(r[q], r[4 + q]), _mm256_unpackhi_epi32(r[q], r[4 + q])};
        LN_UNROLL
        for (int e = 0; e < 2; e++) {
            int64_t k = 4 * q + 2 * e;
            __m128i lo = _mm256_castsi256_si128(words[e]), hi = _mm256_extracti128_si256(words[e], 1);
            _mm_storel_epi64((__m128i *)(dst + k * stride), lo);
            _mm_storeh_pd((double *)(dst + (k + 1) * stride), _mm_castsi128_pd(lo));
            _mm_storel_epi64((__m128i *)(dst + (k + 16) * stride), hi);
            _mm_storeh_pd((double *)(dst + (k + 17) * stride), _mm_castsi128_pd(hi));
        }
    }
}

/* Inputs 0 .. 32 * chunks - 1 of the 64 samples rows[0..63] (ln_tile8 on 32 inputs per load). */
static void ln_pack32(const uint8_t *const *rows, int64_t chunks, uint64_t *dst, int64_t stride, uint64_t *acc) {
    __m256i seen = _mm256_setzero_si256(), merged[LN_PACK_CHUNKS][8];
    for (int64_t c0 = 0; c0 < chunks; c0 += LN_PACK_CHUNKS) {
        int64_t count = chunks - c0 < LN_PACK_CHUNKS ? chunks - c0 : LN_PACK_CHUNKS;
        for (int g = 0; g < 8; g++) {
            const uint8_t *const *r = rows + 8 * g;
            for (int64_t c = 0; c < count; c++) {
                int64_t at = 32 * (c0 + c);
                __m256i v = _mm256_setzero_si256();
                LN_UNROLL
                for (int j = 0; j < 8; j++) {
                    __m256i raw = _mm256_loadu_si256((const __m256i *)(r[j] + at));
                    seen = _mm256_or_si256(seen, raw);
                    v = _mm256_or_si256(v, _mm256_slli_epi64(raw, j));
                }
                merged[c][g] = v;
            }
        }
        for (int64_t c = 0; c < count; c++) ln_transpose32(merged[c], dst + 32 * (c0 + c) * stride, stride);
    }
    uint64_t lanes[4];
    _mm256_storeu_si256((__m256i *)lanes, seen);
    *acc |= lanes[0] | lanes[1] | lanes[2] | lanes[3];
}
#endif

/* Index (row-major) of the first byte > 1 among the bytes of samples s0 .. s0 + 63 (< n); -1 if none. */
static int64_t ln_first_invalid(const uint8_t *bits, int64_t n, int64_t s0) {
    int64_t end = (s0 + 64 < n ? s0 + 64 : n) * (int64_t)LN_NUM_INPUTS;
    for (int64_t e = s0 * (int64_t)LN_NUM_INPUTS; e < end; e++)
        if (bits[e] > 1) return e;
    return -1;
}

/* Word `word` (samples 64 word ..) of every input plane: dst[i * stride] = input i's word.
 * Returns -1, or the index of the first byte that is not 0/1 among these samples. */
static int64_t ln_pack_word(const uint8_t *bits, int64_t n, int64_t word, uint64_t *dst, int64_t stride) {
    const uint8_t *rows[64];
    int64_t s0 = word * 64;
    for (int j = 0; j < 64; j++)
        rows[j] = s0 + j < n ? bits + (s0 + j) * (int64_t)LN_NUM_INPUTS : ln_zero_row;
    /* the next word's bytes (contiguous) into the cache while this one is packed */
    const uint8_t *ahead = bits + (s0 + 64) * (int64_t)LN_NUM_INPUTS;
    const uint8_t *ahead_end = bits + (s0 + 128 < n ? s0 + 128 : n) * (int64_t)LN_NUM_INPUTS;
    for (; LN_PREFETCH_LOCALITY >= 0 && ahead < ahead_end; ahead += 64)
        __builtin_prefetch(ahead, 0, LN_PREFETCH_LOCALITY < 0 ? 0 : LN_PREFETCH_LOCALITY);
    uint64_t acc = 0;
    int64_t i = 0;
#if defined(__AVX2__)
    i = LN_NUM_INPUTS / 32 * 32;
    if (i) ln_pack32(rows, i / 32, dst, stride, &acc);
#endif
    for (; i + 8 <= LN_NUM_INPUTS; i += 8) ln_tile8(rows, i, 8, dst + i * stride, stride, &acc);
    if (i < LN_NUM_INPUTS) ln_tile8(rows, i, LN_NUM_INPUTS - i, dst + i * stride, stride, &acc);
    return acc & ln_not_binary ? ln_first_invalid(bits, n, s0) : -1;
}

/* Input bytes bits[n][LN_NUM_INPUTS] -> bit planes x[LN_NUM_INPUTS][ceil(n / 64)] (zero padded).
 * Returns 0, or 1 + the index of the first byte that is not 0 or 1 (x is then incomplete). */
int64_t ln_pack_bits(const uint8_t *bits, int64_t n, uint64_t *x) {
    int64_t nwords = (n + 63) / 64;
    for (int64_t w = 0; w < nwords; w++) {
        int64_t bad = ln_pack_word(bits, n, w, x + w, nwords);
        if (bad >= 0) return bad + 1;
    }
    return 0;
}

/* The input slots of the block starting at word w0, from the bytes (zero past the batch). As ln_pack_word. */
static int64_t ln_pack_block(ln_vec *V, const uint8_t *bits, int64_t n, int64_t w0) {
    for (int64_t w = 0; w < LN_BLOCK_WORDS; w++) {
        int64_t bad = ln_pack_word(bits, n, w0 + w, (uint64_t *)V + w, LN_BLOCK_WORDS);
        if (bad >= 0) return bad;
    }
    return -1;
}

/* ---------------------------------------------------------------------------------------- one block
 * A block is LN_BLOCK_WORDS words of samples starting at word w0; its inputs are in slots
 * 0..LN_NUM_INPUTS-1 of the scratch V (word w of slot i at ((uint64_t *)V)[i * LN_BLOCK_WORDS + w]). */

/* Copy words [w0, w0 + LN_BLOCK_WORDS) of every input plane x[i][nwords] into the input slots,
 * zero-filling past the end of the batch. */
static void ln_load_inputs(ln_vec *V, const uint64_t *x, int64_t nwords, int64_t w0) {
    int64_t have = nwords - w0 < LN_BLOCK_WORDS ? nwords - w0 : LN_BLOCK_WORDS;
    for (int64_t i = 0; i < LN_NUM_INPUTS; i++) {
        uint64_t *slot = (uint64_t *)(V + (size_t)i * LN_BV);
        memcpy(slot, x + i * nwords + w0, (size_t)have * 8);
        if (have < LN_BLOCK_WORDS) memset(slot + have, 0, (size_t)(LN_BLOCK_WORDS - have) * 8);
    }
}

/* spread the 4 bits of a nibble into four 16-bit lanes */
static const uint64_t ln_spread4[16] = {
    0x0000000000000000ull, 0x0000000000000001ull, 0x0000000000010000ull, 0x0000000000010001ull,
    0x0000000100000000ull, 0x0000000100000001ull, 0x0000000100010000ull, 0x0000000100010001ull,
    0x0001000000000000ull, 0x0001000000000001ull, 0x0001000000010000ull, 0x0001000000010001ull,
    0x0001000100000000ull, 0x0001000100000001ull, 0x0001000100010000ull, 0x0001000100010001ull};

/* GroupSum of one block: run the counts program on V, write counts[s][c] for the block's samples < n.
 * The adder tree leaves each class count as LN_COUNT_BITS bit planes; they are unpacked four samples at a
 * time (16-bit lanes, exact while LN_COUNT_BITS <= 16) and bit by bit beyond that. */
static void ln_counts_block(ln_vec *V, ln_prefetch *pf, int64_t w0, int64_t n_samples, int32_t *counts) {
    ln_COUNTS_gates(V, pf);
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

/* ---------------------------------------------------------------------------------------- entry points
 * On bit planes (pre-packed): x[LN_NUM_INPUTS][nwords]. On bytes: bits[n][LN_NUM_INPUTS], each 0 or 1,
 * packed block by block inside the call (the planes of a block stay in cache); these return 0, -1 when
 * out of memory, or 1 + the index of the first byte that is not 0/1 (the outputs are then incomplete). */

/* Raw output bits: x[LN_NUM_INPUTS][nwords] -> y[LN_NUM_OUTPUTS][nwords] (bit planes). Returns 0, -1 on OOM. */
int ln_output_bits_packed(const uint64_t *x, int64_t nwords, uint64_t *y) {
    ln_vec *V = ln_scratch(LN_BITS_SLOTS);
    if (!V) return -1;
    for (int64_t w0 = 0; w0 < nwords; w0 += LN_BLOCK_WORDS) {
        ln_load_inputs(V, x, nwords, w0);
        ln_BITS_gates(V, NULL);
        int64_t have = nwords - w0 < LN_BLOCK_WORDS ? nwords - w0 : LN_BLOCK_WORDS;
        for (int64_t o = 0; o < LN_NUM_OUTPUTS; o++)
            memcpy(y + o * nwords + w0, V + (size_t)ln_BITS_results[o] * LN_BV, (size_t)have * 8);
    }
    free(V);
    return 0;
}

/* GroupSum: x[LN_NUM_INPUTS][nwords] -> counts[n_samples][LN_NUM_CLASSES] int32 (n_samples <= 64 * nwords).
 * Returns 0, -1 on OOM. */
int ln_class_counts_packed(const uint64_t *x, int64_t nwords, int64_t n_samples, int32_t *counts) {
    ln_vec *V = ln_scratch(LN_COUNTS_SLOTS);
    if (!V) return -1;
    for (int64_t w0 = 0; w0 < nwords; w0 += LN_BLOCK_WORDS) {
        ln_load_inputs(V, x, nwords, w0);
        ln_counts_block(V, NULL, w0, n_samples, counts);
    }
    free(V);
    return 0;
}

/* The prefetch of the input bytes of the block after the one starting at word w0, spread over `gates`
 * instructions. */
static ln_prefetch ln_next_block(const uint8_t *bits, int64_t n, int64_t w0, uint64_t gates) {
    int64_t row = (w0 + LN_BLOCK_WORDS) * 64, end = row + LN_BLOCK_WORDS * 64 < n ? row + LN_BLOCK_WORDS * 64 : n;
    ln_prefetch pf = {bits, bits, 0, 0};
    if (row < end) {
        pf.next = bits + row * (int64_t)LN_NUM_INPUTS;
        pf.end = bits + end * (int64_t)LN_NUM_INPUTS;
        uint64_t lines = (uint64_t)(pf.end - pf.next + 63) / 64;
        pf.per_gate = ((lines << 16) + gates) / (gates ? gates : 1);
    }
    return pf;
}

/* GroupSum from bytes: bits[n][LN_NUM_INPUTS] -> counts[n][LN_NUM_CLASSES] int32. */
int64_t ln_class_counts(const uint8_t *bits, int64_t n, int32_t *counts) {
    ln_vec *V = ln_scratch(LN_COUNTS_SLOTS);
    if (!V) return -1;
    int64_t bad = -1;
    for (int64_t w0 = 0; w0 * 64 < n && bad < 0; w0 += LN_BLOCK_WORDS) {
        bad = ln_pack_block(V, bits, n, w0);
        ln_prefetch pf = ln_next_block(bits, n, w0, LN_COUNTS_GATES);
        if (bad < 0) ln_counts_block(V, &pf, w0, n, counts);
    }
    free(V);
    return bad + 1;
}

/* Raw output bits from bytes: bits[n][LN_NUM_INPUTS] -> out[n][LN_NUM_OUTPUTS] uint8 (0/1). */
int64_t ln_output_bits(const uint8_t *bits, int64_t n, uint8_t *out) {
    ln_vec *V = ln_scratch(LN_BITS_SLOTS);
    if (!V) return -1;
    int64_t bad = -1;
    for (int64_t w0 = 0; w0 * 64 < n && bad < 0; w0 += LN_BLOCK_WORDS) {
        bad = ln_pack_block(V, bits, n, w0);
        if (bad >= 0) break;
        ln_prefetch pf = ln_next_block(bits, n, w0, LN_BITS_GATES);
        ln_BITS_gates(V, &pf);
        int64_t end = (w0 + LN_BLOCK_WORDS) * 64 < n ? (w0 + LN_BLOCK_WORDS) * 64 : n;
        for (int64_t o = 0; o < LN_NUM_OUTPUTS; o++) {
            const uint64_t *plane = (const uint64_t *)(V + (size_t)ln_BITS_results[o] * LN_BV);
            for (int64_t s = w0 * 64; s < end; s++)
                out[s * LN_NUM_OUTPUTS + o] = (uint8_t)((plane[s / 64 - w0] >> (s % 64)) & 1);
        }
    }
    free(V);
    return bad + 1;
}

#ifdef LN_MAIN
/* Stand-alone runner (the aarch64 build, run under qemu-user): RUNNER IN OUT (files: logic_runner_io.h).
 * Class counts come from the bytes in one call (ln_class_counts), output bits from the planes of
 * ln_pack_bits; prints the kernel name; exit code 4 when an input byte is not 0/1. */
#include "logic_runner_io.h"
int main(int argc, char **argv) {
    if (argc != 3) { fprintf(stderr, "usage: %s IN OUT\n", argv[0]); return 2; }
    int64_t n;
    uint8_t *bits = ln_read_bytes(argv[1], &n);
    if (!bits) return 2;
    int64_t nwords = (n + 63) / 64;
    uint64_t *x = calloc((size_t)(LN_NUM_INPUTS * nwords + 1), 8);
    uint64_t *y = calloc((size_t)(LN_NUM_OUTPUTS * nwords + 1), 8);
    int32_t *counts = malloc((size_t)(n * LN_NUM_CLASSES + 1) * 4);
    int64_t counted = ln_class_counts(bits, n, counts), packed = ln_pack_bits(bits, n, x);
    if (counted > 0 || packed > 0) {
        fprintf(stderr, "input byte %lld is not 0 or 1\n", (long long)(counted > 0 ? counted : packed) - 1);
        return 4;
    }
    if (counted || ln_output_bits_packed(x, nwords, y)) return 3;
    if (ln_write_output(argv[2], counts, y, n, nwords)) return 2;
    printf("%s\n", LN_KERNEL);
    return 0;
}
#endif
