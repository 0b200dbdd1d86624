/* hwact static program runner (see hwact_runner.h): loads a program, then runs its instructions in order.

   Program layout, int64 words:
     MAGIC, VERSION, constants_bytes, constants_hash (FNV-1a 64 of the constants: a program refuses
     another program's constants), regions, workspace_bytes, inputs, outputs, init_instructions,
     run_instructions,
     then per region 3 words:  kind, a, b   (const: offset, size in the constants blob;
                                             work: offset, size in the workspace; input / output: index, size;
                                             packed: n, k — the packed bytes are hw_pack_size(n, k))
     then per instruction:     op, argument count, then per argument 2 words: tag, value
                               (tag 0: an integer; 1: a float32 by its bits; 2: a pointer, value =
                                region << 40 | byte offset; 3: NULL)
   Init instructions (hw_pack) run at load and again when the ISA in use changes; run instructions run
   on every call. */
#define _POSIX_C_SOURCE 199309L
#include "hwact_runner.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "hwact_int.h"

#define MAGIC 0x6877707267LL          /* "hwprg" */
#define VERSION 2
#define HEADER_WORDS 10
#define MAX_ARGS 64
#define MAX_DIMS 8
#define OFFSET_BITS 40

enum region_kind { R_CONST = 0, R_WORK = 1, R_INPUT = 2, R_OUTPUT = 3, R_PACKED = 4 };
enum arg_tag { T_INT = 0, T_FLOAT = 1, T_PTR = 2, T_NULL = 3 };
/* element types of copy / fill / sum: the four kernel types, then int64, float32, bool */
enum elem { E_I8 = 0, E_U8 = 1, E_I16 = 2, E_I32 = 3, E_I64 = 4, E_F32 = 5, E_BOOL = 6 };

enum opcode {
    OP_LINEAR, OP_MATMUL, OP_IM2COL, OP_DEPTHWISE, OP_SHIFTMAX, OP_SHIFT_GELU, OP_LAYERNORM, OP_REQUANTIZE,
    OP_ADD, OP_MUL, OP_LUT, OP_CLAMP, OP_MASK, OP_MAX_POOL, OP_SUM_REQUANTIZE, OP_EMBEDDING, OP_QUANTIZE,
    OP_DEQUANTIZE, OP_PACK, OP_COPY, OP_FILL, OP_SUM, OP_GATHER, OP_ELEMENTWISE, OP_COUNT
};
/* elementwise operations on integers (computed in int64, stored in the destination's type: the same
   result as torch's integer arithmetic in that type, which wraps; a float32 destination only for MAX/MIN
   with integer bounds, where converting after the clamp equals torch's clamp in float) */
enum operation { EW_ADD, EW_SUB, EW_MUL, EW_AND, EW_OR, EW_XOR, EW_EQ, EW_NE, EW_LT, EW_LE, EW_GT, EW_GE,
                 EW_LOGICAL_AND, EW_LOGICAL_OR, EW_LOGICAL_NOT, EW_NEG, EW_MAX, EW_MIN, EW_COUNT };
static const char *const OP_NAMES[OP_COUNT] = {
    "hw_linear", "hw_matmul", "hw_im2col", "hw_depthwise_conv2d", "hw_shiftmax", "hw_shift_gelu",
    "hw_i_layernorm", "hw_requantize", "hw_add", "hw_mul", "hw_lut", "hw_clamp", "hw_mask", "hw_max_pool2d",
    "hw_sum_requantize", "hw_embedding", "hw_quantize", "hw_dequantize", "hw_pack", "copy", "fill", "sum",
    "gather", "elementwise"};
/* argument counts; copy: dst, dst_type, src, src_type, ndim, then sizes, dst strides, src strides (ndim
   each); fill: dst, type, count, value; sum: dst, dst_type, src, src_type, ndim_out, ndim_reduce, then
   out sizes, dst strides, src strides (ndim_out each), reduce sizes, src strides (ndim_reduce each);
   gather: dst, dst_type, src, src_type, count, offsets (count int64 element offsets into src, each
   checked against src_elements), src_elements; elementwise: dst, dst_type, a, a_type, b, b_type, operation,
   ndim, then sizes, dst strides, a strides, b strides (ndim each) */
static const int OP_ARGS[OP_COUNT] = {19, 21, 14, 21, 12, 13, 15, 9, 15, 13, 10, 7, 9, 13, 11, 7, 7, 5, 4, -1, 4, -1,
                                      7, -1};

typedef struct { int kind; int64_t a, b; void *base; int64_t size; } region;
typedef struct { int op, nargs; const int64_t *args; } instruction;

struct hw_program {
    int64_t nregions, ninputs, noutputs, ninit, nrun, workspace_bytes;
    region *regions;
    instruction *code;             /* init instructions, then run instructions */
    int64_t *words;                /* a copy of the program */
    uint8_t *constants, *workspace;
    int packed_isa;                /* the ISA the packed regions were made for, -1 before */
};

const char *hw_program_op_name(int op) { return op >= 0 && op < OP_COUNT ? OP_NAMES[op] : NULL; }

int64_t hw_program_io_bytes(const hw_program *p, int output, int64_t index) {
    for (int64_t r = 0; r < p->nregions; r++)
        if (p->regions[r].kind == (output ? R_OUTPUT : R_INPUT) && p->regions[r].a == index) return p->regions[r].b;
    return -1;
}

int64_t hw_program_io_count(const hw_program *p, int output) { return output ? p->noutputs : p->ninputs; }

uint64_t hw_fnv1a(const uint8_t *bytes, int64_t count) {
    uint64_t hash = 14695981039346656037ULL;
    for (int64_t i = 0; i < count; i++) hash = (hash ^ bytes[i]) * 1099511628211ULL;
    return hash;
}
int64_t hw_program_workspace_bytes(const hw_program *p) { return p->workspace_bytes; }

static void say(char *error, int64_t len, const char *what, int64_t value) {
    if (error && len > 0) snprintf(error, (size_t)len, "%s (%lld)", what, (long long)value);
}

void hw_program_free(hw_program *p) {
    if (!p) return;
    for (int64_t r = 0; p->regions && r < p->nregions; r++)
        if (p->regions[r].kind == R_PACKED) free(p->regions[r].base);
    free(p->regions);
    free(p->code);
    free(p->words);
    free(p->constants);
    free(p->workspace);
    free(p);
}

static int copy_arguments_valid(int op, int nargs, const int64_t *args) {
    /* the fixed words of copy / sum / elementwise carry their dimension counts: the total must match */
    if (op == OP_COPY) {
        if (nargs < 5 || args[2 * 4] != T_INT) return 0;
        int64_t ndim = args[2 * 4 + 1];
        return ndim >= 0 && ndim <= MAX_DIMS && nargs == 5 + 3 * ndim;
    }
    if (op == OP_ELEMENTWISE) {
        if (nargs < 8 || args[2 * 6] != T_INT || args[2 * 7] != T_INT) return 0;
        int64_t operation = args[2 * 6 + 1], ndim = args[2 * 7 + 1];
        return operation >= 0 && operation < EW_COUNT && ndim >= 0 && ndim <= MAX_DIMS && nargs == 8 + 4 * ndim;
    }
    if (nargs < 6 || args[2 * 4] != T_INT || args[2 * 5] != T_INT) return 0;
    int64_t out = args[2 * 4 + 1], reduce = args[2 * 5 + 1];
    return out >= 0 && out <= MAX_DIMS && reduce >= 0 && reduce <= MAX_DIMS && nargs == 6 + 3 * out + 2 * reduce;
}

hw_program *hw_program_new(const int64_t *code, int64_t code_len, const uint8_t *constants, int64_t constants_len,
                           char *error, int64_t error_len) {
    if (code_len < HEADER_WORDS || code[0] != MAGIC || code[1] != VERSION) {
        say(error, error_len, "not an hwact static program of this version", code_len);
        return NULL;
    }
    if (code[2] != constants_len || (int64_t)hw_fnv1a(constants, constants_len) != code[3]) {
        say(error, error_len, "the constants do not belong to this program (bytes)", constants_len);
        return NULL;
    }
    hw_program *p = calloc(1, sizeof *p);
    if (!p) return NULL;
    p->nregions = code[4], p->workspace_bytes = code[5], p->ninputs = code[6], p->noutputs = code[7];
    p->ninit = code[8], p->nrun = code[9];
    p->packed_isa = -1;
    int64_t pos = HEADER_WORDS;
    if (p->nregions < 0 || p->nregions > (1LL << 24) || p->workspace_bytes < 0 || p->ninputs < 0 || p->noutputs < 0
        || p->ninit < 0 || p->nrun < 0 || p->ninit + p->nrun > (1LL << 24) || constants_len < 0
        || pos + 3 * p->nregions > code_len) {
        say(error, error_len, "malformed program header", 0);
        goto fail;
    }
    p->words = malloc((size_t)code_len * sizeof(int64_t));
    p->regions = calloc((size_t)(p->nregions ? p->nregions : 1), sizeof(region));
    p->code = calloc((size_t)(p->ninit + p->nrun ? p->ninit + p->nrun : 1), sizeof(instruction));
    p->constants = malloc((size_t)(constants_len ? constants_len : 1));
    p->workspace = aligned_alloc(64, (size_t)((p->workspace_bytes + 63) / 64 * 64 + 64));
    if (!p->words || !p->regions || !p->code || !p->constants || !p->workspace) {
        say(error, error_len, "out of memory loading the program", p->workspace_bytes);
        goto fail;
    }
    memcpy(p->words, code, (size_t)code_len * sizeof(int64_t));
    memcpy(p->constants, constants, (size_t)constants_len);
    for (int64_t r = 0; r < p->nregions; r++, pos += 3) {
        region *g = &p->regions[r];
        g->kind = (int)p->words[pos], g->a = p->words[pos + 1], g->b = p->words[pos + 2];
        int ok = g->a >= 0 && g->b >= 0;
        switch (g->kind) {
        case R_CONST: ok = ok && g->a <= constants_len && g->b <= constants_len - g->a;
                      g->base = p->constants + g->a, g->size = g->b; break;
        case R_WORK: ok = ok && g->a <= p->workspace_bytes && g->b <= p->workspace_bytes - g->a;
                     g->base = p->workspace + g->a, g->size = g->b; break;
        case R_INPUT: ok = ok && g->a < p->ninputs; g->size = g->b; break;
        case R_OUTPUT: ok = ok && g->a < p->noutputs; g->size = g->b; break;
        case R_PACKED: ok = ok && g->a > 0 && g->b > 0 && g->a <= (1LL << 31) && g->b <= (1LL << 31); break;
        default: ok = 0;
        }
        if (!ok) {
            say(error, error_len, "malformed region", r);
            goto fail;
        }
    }
    for (int64_t i = 0; i < p->ninit + p->nrun; i++) {
        if (pos + 2 > code_len) {
            say(error, error_len, "program ends inside an instruction", i);
            goto fail;
        }
        instruction *in = &p->code[i];
        in->op = (int)p->words[pos], in->nargs = (int)p->words[pos + 1], in->args = p->words + pos + 2;
        if (p->words[pos] < 0 || p->words[pos] >= OP_COUNT || p->words[pos + 1] < 0 || p->words[pos + 1] > MAX_ARGS
            || pos + 2 + 2 * p->words[pos + 1] > code_len
            || (OP_ARGS[in->op] >= 0 ? in->nargs != OP_ARGS[in->op] : !copy_arguments_valid(in->op, in->nargs, in->args))
            || ((i < p->ninit) != (in->op == OP_PACK))) {
            say(error, error_len, "malformed instruction", i);
            goto fail;
        }
        for (int a = 0; a < in->nargs; a++) {
            int64_t tag = in->args[2 * a], value = in->args[2 * a + 1];
            int64_t r = value >> OFFSET_BITS, offset = value & ((1LL << OFFSET_BITS) - 1);
            if (tag < T_INT || tag > T_NULL
                || (tag == T_PTR && (value < 0 || r >= p->nregions || offset > p->regions[r].size
                                     || (p->regions[r].kind == R_PACKED && offset != 0)))) {
                say(error, error_len, "malformed argument of instruction", i);
                goto fail;
            }
        }
        pos += 2 + 2 * in->nargs;
    }
    if (pos != code_len) {
        say(error, error_len, "trailing words after the last instruction", pos);
        goto fail;
    }
    return p;
fail:
    hw_program_free(p);
    return NULL;
}

/* ----- data movement ----------------------------------------------------------------------------- */
static int64_t load_int(const void *base, int type, int64_t i) {
    switch (type) {
    case E_I8: return ((const int8_t *)base)[i];
    case E_U8: case E_BOOL: return ((const uint8_t *)base)[i];
    case E_I16: return ((const int16_t *)base)[i];
    case E_I32: return ((const int32_t *)base)[i];
    case E_I64: return ((const int64_t *)base)[i];
    default: return (int64_t)((const float *)base)[i];     /* float -> int truncates, as torch does */
    }
}

static void store(void *base, int type, int64_t i, const void *src, int src_type, int64_t j) {
    if (type == E_F32) {
        ((float *)base)[i] = src_type == E_F32 ? ((const float *)src)[j] : (float)load_int(src, src_type, j);
        return;
    }
    int64_t v = load_int(src, src_type, j);
    if (src_type == E_F32 && type == E_BOOL) v = ((const float *)src)[j] != 0.0f;
    switch (type) {
    case E_I8: ((int8_t *)base)[i] = (int8_t)v; break;
    case E_U8: ((uint8_t *)base)[i] = (uint8_t)v; break;
    case E_BOOL: ((uint8_t *)base)[i] = v != 0; break;
    case E_I16: ((int16_t *)base)[i] = (int16_t)v; break;
    case E_I32: ((int32_t *)base)[i] = (int32_t)v; break;
    default: ((int64_t *)base)[i] = v; break;
    }
}

static const int ELEM_BYTES[7] = {1, 1, 2, 4, 8, 4, 1};

/* dst[index · dst_strides] = (dst_type) src[index · src_strides] for every index < sizes (strides in
   elements); the last dimension is one memcpy when both are contiguous in it and of one type */
static void strided_copy(void *dst, int dt, const void *src, int st, int ndim, const int64_t *in_sizes,
                         const int64_t *in_ds, const int64_t *in_ss) {
    /* size-1 dims dropped, and neighbours merged where both sides are contiguous across them */
    int64_t sizes[MAX_DIMS], ds[MAX_DIMS], ss[MAX_DIMS];
    int n = 0;
    for (int d = 0; d < ndim; d++) {
        if (in_sizes[d] == 1) continue;
        if (n && ds[n - 1] == in_ds[d] * in_sizes[d] && ss[n - 1] == in_ss[d] * in_sizes[d]) {
            sizes[n - 1] *= in_sizes[d], ds[n - 1] = in_ds[d], ss[n - 1] = in_ss[d];
        } else {
            sizes[n] = in_sizes[d], ds[n] = in_ds[d], ss[n] = in_ss[d], n++;
        }
    }
    for (int d = 0; d < ndim; d++)
        if (in_sizes[d] == 0) return;
    ndim = n;
    int64_t index[MAX_DIMS] = {0}, inner = ndim ? sizes[ndim - 1] : 1, total = 1;
    for (int d = 0; d < ndim; d++) total *= sizes[d];
    if (total == 0) return;
    int rows_fast = ndim && dt == st && ds[ndim - 1] == 1 && ss[ndim - 1] == 1;
    int outer_dims = ndim ? ndim - 1 : 0;
    for (int64_t done = 0; done < total; done += inner) {
        int64_t di = 0, si = 0;
        for (int d = 0; d < outer_dims; d++) di += index[d] * ds[d], si += index[d] * ss[d];
        if (rows_fast) {
            memcpy((char *)dst + di * ELEM_BYTES[dt], (const char *)src + si * ELEM_BYTES[st],
                   (size_t)(inner * ELEM_BYTES[dt]));
        } else if (ndim && dt == st) {       /* one type: a strided move by element size, no conversion */
            int64_t a = ds[ndim - 1], b = ss[ndim - 1];
            switch (ELEM_BYTES[dt]) {
            case 1: { uint8_t *o = (uint8_t *)dst + di; const uint8_t *x = (const uint8_t *)src + si;
                      for (int64_t k = 0; k < inner; k++) o[k * a] = x[k * b]; break; }
            case 2: { uint16_t *o = (uint16_t *)dst + di; const uint16_t *x = (const uint16_t *)src + si;
                      for (int64_t k = 0; k < inner; k++) o[k * a] = x[k * b]; break; }
            case 4: { uint32_t *o = (uint32_t *)dst + di; const uint32_t *x = (const uint32_t *)src + si;
                      for (int64_t k = 0; k < inner; k++) o[k * a] = x[k * b]; break; }
            default: { uint64_t *o = (uint64_t *)dst + di; const uint64_t *x = (const uint64_t *)src + si;
                       for (int64_t k = 0; k < inner; k++) o[k * a] = x[k * b]; break; }
            }
        } else if (ndim == 0) {
            store(dst, dt, 0, src, st, 0);
        } else {
            for (int64_t x = 0; x < inner; x++) store(dst, dt, di + x * ds[ndim - 1], src, st, si + x * ss[ndim - 1]);
        }
        for (int d = outer_dims - 1; d >= 0; d--) {       /* next outer index */
            if (++index[d] < sizes[d]) break;
            index[d] = 0;
        }
    }
}

/* dst[o] = Σ_r src[o · src_out_strides + r · src_reduce_strides] in int64, stored as dst_type */
static void strided_sum(void *dst, int dt, const void *src, int st, int nout, const int64_t *osize,
                        const int64_t *ods, const int64_t *oss, int nred, const int64_t *rsize, const int64_t *rss) {
    int64_t out_total = 1, red_total = 1, oi[MAX_DIMS] = {0};
    for (int d = 0; d < nout; d++) out_total *= osize[d];
    for (int d = 0; d < nred; d++) red_total *= rsize[d];
    for (int64_t o = 0; o < out_total; o++) {
        int64_t di = 0, base = 0, sum = 0, ri[MAX_DIMS] = {0};
        for (int d = 0; d < nout; d++) di += oi[d] * ods[d], base += oi[d] * oss[d];
        for (int64_t r = 0; r < red_total; r++) {
            int64_t si = base;
            for (int d = 0; d < nred; d++) si += ri[d] * rss[d];
            sum += load_int(src, st, si);
            for (int d = nred - 1; d >= 0; d--) {
                if (++ri[d] < rsize[d]) break;
                ri[d] = 0;
            }
        }
        int64_t one[1] = {sum};
        store(dst, dt, di, one, E_I64, 0);
        for (int d = nout - 1; d >= 0; d--) {
            if (++oi[d] < osize[d]) break;
            oi[d] = 0;
        }
    }
}

static int64_t apply(int operation, int64_t a, int64_t b) {
    switch (operation) {
    case EW_ADD: return (int64_t)((uint64_t)a + (uint64_t)b);
    case EW_SUB: return (int64_t)((uint64_t)a - (uint64_t)b);
    case EW_MUL: return (int64_t)((uint64_t)a * (uint64_t)b);
    case EW_AND: return a & b;
    case EW_OR: return a | b;
    case EW_XOR: return a ^ b;
    case EW_EQ: return a == b;
    case EW_NE: return a != b;
    case EW_LT: return a < b;
    case EW_LE: return a <= b;
    case EW_GT: return a > b;
    case EW_GE: return a >= b;
    case EW_LOGICAL_AND: return a && b;
    case EW_LOGICAL_OR: return a || b;
    case EW_LOGICAL_NOT: return !a;
    case EW_MAX: return a > b ? a : b;
    case EW_MIN: return a < b ? a : b;
    default: return (int64_t)(0 - (uint64_t)a);      /* EW_NEG */
    }
}

/* dst[i] = operation(a[i], b[i]) over an N-d index, each operand by its own strides (0: broadcast) */
static void elementwise(void *dst, int dt, const void *a, int at, const void *b, int bt, int operation, int ndim,
                        const int64_t *sizes, const int64_t *ds, const int64_t *as, const int64_t *bs) {
    int64_t total = 1, index[MAX_DIMS] = {0};
    for (int d = 0; d < ndim; d++) total *= sizes[d];
    for (int64_t i = 0; i < total; i++) {
        int64_t di = 0, ai = 0, bi = 0;
        for (int d = 0; d < ndim; d++) di += index[d] * ds[d], ai += index[d] * as[d], bi += index[d] * bs[d];
        int64_t one[1] = {apply(operation, load_int(a, at, ai), b ? load_int(b, bt, bi) : 0)};
        store(dst, dt, di, one, E_I64, 0);
        for (int d = ndim - 1; d >= 0; d--) {
            if (++index[d] < sizes[d]) break;
            index[d] = 0;
        }
    }
}

static void fill(void *dst, int type, int64_t count, int64_t value) {
    if (type == E_F32) {
        float f;
        int32_t bits = (int32_t)value;
        memcpy(&f, &bits, sizeof f);
        for (int64_t i = 0; i < count; i++) ((float *)dst)[i] = f;
        return;
    }
    int64_t one[1] = {value};
    for (int64_t i = 0; i < count; i++) store(dst, type, i, one, E_I64, 0);
}

/* ----- running ----------------------------------------------------------------------------------- */
static int execute(hw_program *p, const instruction *in, char *error, int64_t error_len) {
    int64_t v[MAX_ARGS];
    void *ptr[MAX_ARGS];
    float f[MAX_ARGS];
    for (int a = 0; a < in->nargs; a++) {
        int64_t tag = in->args[2 * a], value = in->args[2 * a + 1];
        v[a] = value, ptr[a] = NULL, f[a] = 0.0f;
        if (tag == T_PTR) {
            const region *g = &p->regions[value >> OFFSET_BITS];
            ptr[a] = (char *)g->base + (value & ((1LL << OFFSET_BITS) - 1));
        } else if (tag == T_FLOAT) {
            int32_t bits = (int32_t)value;
            memcpy(&f[a], &bits, sizeof bits);
        }
    }
#define I(n) ((int)v[n])
    switch (in->op) {
    case OP_LINEAR:
        hw_linear(ptr[0], I(1), v[2], v[3], v[4], ptr[5], v[6], ptr[7], ptr[8], ptr[9], I(10), I(11), ptr[12], I(13),
                  ptr[14], I(15), v[16], v[17], I(18));
        break;
    case OP_MATMUL:
        hw_matmul(ptr[0], I(1), v[2], v[3], v[4], ptr[5], I(6), v[7], v[8], v[9], v[10], v[11], v[12], v[13], I(14),
                  I(15), I(16), I(17), ptr[18], I(19), I(20));
        break;
    case OP_IM2COL:
        hw_im2col(ptr[0], I(1), v[2], v[3], v[4], I(5), I(6), I(7), I(8), I(9), I(10), I(11), I(12), ptr[13]);
        break;
    case OP_DEPTHWISE:
        hw_depthwise_conv2d(ptr[0], I(1), v[2], v[3], v[4], ptr[5], I(6), I(7), I(8), I(9), I(10), I(11), I(12),
                            I(13), ptr[14], ptr[15], ptr[16], I(17), I(18), ptr[19], I(20));
        break;
    case OP_SHIFTMAX:
        hw_shiftmax(ptr[0], I(1), v[2], v[3], v[4], I(5), I(6), I(7), I(8), I(9), ptr[10], I(11));
        break;
    case OP_SHIFT_GELU:
        hw_shift_gelu(ptr[0], I(1), v[2], v[3], v[4], I(5), I(6), I(7), I(8), I(9), I(10), ptr[11], I(12));
        break;
    case OP_LAYERNORM:
        hw_i_layernorm(ptr[0], I(1), v[2], v[3], ptr[4], ptr[5], v[6], v[7], I(8), I(9), I(10), I(11), I(12), ptr[13],
                       I(14));
        break;
    case OP_REQUANTIZE: hw_requantize(ptr[0], I(1), v[2], I(3), I(4), I(5), I(6), ptr[7], I(8)); break;
    case OP_ADD:
        hw_add(ptr[0], I(1), ptr[2], I(3), v[4], v[5], v[6], I(7), I(8), I(9), I(10), I(11), I(12), ptr[13], I(14));
        break;
    case OP_MUL:
        hw_mul(ptr[0], I(1), ptr[2], I(3), v[4], v[5], v[6], I(7), I(8), I(9), I(10), ptr[11], I(12));
        break;
    case OP_LUT: hw_lut(ptr[0], I(1), v[2], ptr[3], I(4), I(5), I(6), I(7), ptr[8], I(9)); break;
    case OP_CLAMP: hw_clamp(ptr[0], I(1), v[2], I(3), I(4), ptr[5], I(6)); break;
    case OP_MASK: hw_mask(ptr[0], I(1), ptr[2], v[3], v[4], v[5], I(6), ptr[7], I(8)); break;
    case OP_MAX_POOL:
        hw_max_pool2d(ptr[0], I(1), v[2], v[3], v[4], I(5), I(6), I(7), I(8), I(9), I(10), ptr[11], I(12));
        break;
    case OP_SUM_REQUANTIZE:
        hw_sum_requantize(ptr[0], I(1), v[2], v[3], v[4], I(5), I(6), I(7), I(8), ptr[9], I(10));
        break;
    case OP_EMBEDDING: {       /* token ids come from the caller: every one must index the table */
        const int64_t *ids = ptr[3];
        for (int64_t i = 0; i < v[4]; i++) {
            if (ids[i] < -v[1] || ids[i] >= v[1]) {
                say(error, error_len, "token id outside the embedding table", ids[i]);
                return -1;
            }
        }
        hw_embedding(ptr[0], v[1], v[2], ids, v[4], ptr[5], I(6));
        break;
    }
    case OP_QUANTIZE: hw_quantize(ptr[0], v[1], f[2], I(3), I(4), ptr[5], I(6)); break;
    case OP_DEQUANTIZE: hw_dequantize(ptr[0], I(1), v[2], f[3], ptr[4]); break;
    case OP_PACK: hw_pack(ptr[0], v[1], v[2], ptr[3]); break;
    case OP_COPY: {
        int n = I(4);
        strided_copy(ptr[0], I(1), ptr[2], I(3), n, v + 5, v + 5 + n, v + 5 + 2 * n);
        break;
    }
    case OP_FILL: fill(ptr[0], I(1), v[2], v[3]); break;
    case OP_GATHER: {
        const int64_t *offsets = ptr[5];
        for (int64_t i = 0; i < v[4]; i++) {
            if (offsets[i] < 0 || offsets[i] >= v[6]) {
                say(error, error_len, "a gather offset outside its source", offsets[i]);
                return -1;
            }
            store(ptr[0], I(1), i, ptr[2], I(3), offsets[i]);
        }
        break;
    }
    case OP_ELEMENTWISE: {
        int n = I(7);
        elementwise(ptr[0], I(1), ptr[2], I(3), ptr[4], I(5), I(6), n, v + 8, v + 8 + n, v + 8 + 2 * n, v + 8 + 3 * n);
        break;
    }
    case OP_SUM: {
        int n = I(4), r = I(5);
        const int64_t *w = v + 6;
        strided_sum(ptr[0], I(1), ptr[2], I(3), n, w, w + n, w + 2 * n, r, w + 3 * n, w + 3 * n + r);
        break;
    }
    }
#undef I
    return 0;
}

static int pack_weights(hw_program *p, char *error, int64_t error_len) {
    for (int64_t r = 0; r < p->nregions; r++) {
        region *g = &p->regions[r];
        if (g->kind != R_PACKED) continue;
        free(g->base);
        g->size = (int64_t)hw_pack_size(g->a, g->b);
        g->base = malloc((size_t)(g->size ? g->size : 1));
        if (!g->base) {
            say(error, error_len, "out of memory packing weights", g->size);
            return -1;
        }
    }
    for (int64_t i = 0; i < p->ninit; i++)
        if (execute(p, &p->code[i], error, error_len)) return -1;
    p->packed_isa = hw_isa();
    return 0;
}

static int64_t now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

int hw_program_profile(hw_program *p, void **inputs, void **outputs, int64_t *nanoseconds, char *error,
                       int64_t error_len) {
    if (p->packed_isa != hw_isa() && pack_weights(p, error, error_len)) return -1;
    for (int64_t r = 0; r < p->nregions; r++) {
        region *g = &p->regions[r];
        if (g->kind == R_INPUT) g->base = inputs[g->a];
        else if (g->kind == R_OUTPUT) g->base = outputs[g->a];
    }
    for (int64_t i = p->ninit; i < p->ninit + p->nrun; i++) {
        int64_t start = nanoseconds ? now_ns() : 0;
        if (execute(p, &p->code[i], error, error_len)) return -1;
        if (nanoseconds) nanoseconds[i - p->ninit] += now_ns() - start;
    }
    return 0;
}

int hw_program_run(hw_program *p, void **inputs, void **outputs, char *error, int64_t error_len) {
    return hw_program_profile(p, inputs, outputs, NULL, error, error_len);
}

int hw_program_opcode(const hw_program *p, int64_t instruction) {
    return instruction >= 0 && instruction < p->nrun ? p->code[p->ninit + instruction].op : -1;
}
