/* hwact bit-sliced logic-gate kernel for CUDA (the net-independent part of every emitted .cu file).
 *
 * One thread per 64-sample word: sample s sits in bit s % 64 of word s / 64. The net's two programs
 * (see logic_kernel.c and hwact/backends/logic_c.py) are tables in device memory; every thread walks the
 * same gate list (warp-uniform switch on the gate id, no divergence) over its own column of a value-slot
 * scratch array laid out slot-major, V[slot * stride + thread], so every load and store is coalesced.
 * Threads beyond `stride` loop: thread t handles words t, t + stride, ...
 *
 * The emitted file defines, before this text: LN_NUM_INPUTS, LN_NUM_OUTPUTS, LN_NUM_CLASSES,
 * LN_COUNT_BITS and per program P in {BITS, COUNTS}: LN_P_SLOTS, LN_P_GATES and the device arrays
 * ln_P_op[], ln_P_dst[], ln_P_a[], ln_P_b[], ln_P_c[], ln_P_results[].
 *
 * Host runner (LN_RUNNER): RUNNER IN OUT [REPEAT [counts]]; the same files as the C runner (logic_runner_io.h);
 * with `counts`, OUT holds only the class counts (no output-bit kernel: for large benchmark batches).
 * With REPEAT > 0 it also times the count kernel on the packed input already on the GPU and prints
 * "samples_per_s <value>". */
#include <stdint.h>

__device__ __forceinline__ uint64_t ln_gate(uint8_t op, uint64_t x, uint64_t y, uint64_t z) {
    switch (op) {   /* out(a, b) = (op >> (3 - (2a + b))) & 1; 16, 17: full adder sum and carry of x, y, z */
        case 0: return 0;
        case 1: return x & y;
        case 2: return x & ~y;
        case 3: return x;
        case 4: return ~x & y;
        case 5: return y;
        case 6: return x ^ y;
        case 7: return x | y;
        case 8: return ~(x | y);
        case 9: return ~(x ^ y);
        case 10: return ~y;
        case 11: return x | ~y;
        case 12: return ~x;
        case 13: return ~x | y;
        case 14: return ~(x & y);
        case 15: return ~(uint64_t)0;
        case 16: return x ^ y ^ z;
        default: return (x & y) | (z & (x ^ y));
    }
}

__device__ void ln_walk(uint64_t *V, int64_t stride, int64_t t, uint32_t gates, const uint8_t *op,
                        const uint32_t *dst, const uint32_t *a, const uint32_t *b, const uint32_t *c) {
    for (uint32_t g = 0; g < gates; g++) {
        uint64_t x = V[a[g] * stride + t], y = V[b[g] * stride + t];
        uint64_t z = op[g] >= 16 ? V[c[g] * stride + t] : x;
        V[dst[g] * stride + t] = ln_gate(op[g], x, y, z);
    }
}

__device__ void ln_load(uint64_t *V, int64_t stride, int64_t t, const uint64_t *x, int64_t nwords, int64_t w) {
    for (int i = 0; i < LN_NUM_INPUTS; i++) V[i * stride + t] = x[i * nwords + w];
}

/* y[LN_NUM_OUTPUTS][nwords] output bit planes from x[LN_NUM_INPUTS][nwords] */
extern "C" __global__ void ln_output_bits_kernel(const uint64_t *x, int64_t nwords, uint64_t *V, int64_t stride,
                                                 uint64_t *y) {
    int64_t t = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
    if (t >= stride) return;
    for (int64_t w = t; w < nwords; w += stride) {
        ln_load(V, stride, t, x, nwords, w);
        ln_walk(V, stride, t, LN_BITS_GATES, ln_BITS_op, ln_BITS_dst, ln_BITS_a, ln_BITS_b, ln_BITS_c);
        for (int o = 0; o < LN_NUM_OUTPUTS; o++) y[o * nwords + w] = V[ln_BITS_results[o] * stride + t];
    }
}

/* counts[n][LN_NUM_CLASSES] int32 GroupSum popcounts from the adder tree's count bit planes */
extern "C" __global__ void ln_class_counts_kernel(const uint64_t *x, int64_t nwords, int64_t n, uint64_t *V,
                                                  int64_t stride, int32_t *counts) {
    int64_t t = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
    if (t >= stride) return;
    for (int64_t w = t; w < nwords; w += stride) {
        ln_load(V, stride, t, x, nwords, w);
        ln_walk(V, stride, t, LN_COUNTS_GATES, ln_COUNTS_op, ln_COUNTS_dst, ln_COUNTS_a, ln_COUNTS_b, ln_COUNTS_c);
        for (int c = 0; c < LN_NUM_CLASSES; c++) {
            uint64_t plane[LN_COUNT_BITS];
            for (int d = 0; d < LN_COUNT_BITS; d++) plane[d] = V[ln_COUNTS_results[c * LN_COUNT_BITS + d] * stride + t];
            for (int j = 0; j < 64 && w * 64 + j < n; j++) {
                int32_t count = 0;
                for (int d = 0; d < LN_COUNT_BITS; d++) count |= (int32_t)((plane[d] >> j) & 1) << d;
                counts[(w * 64 + j) * LN_NUM_CLASSES + c] = count;
            }
        }
    }
}

#ifdef LN_RUNNER
#include <cuda_runtime.h>
#include "logic_runner_io.h"

#define LN_CHECK(call) do { cudaError_t e_ = (call); if (e_ != cudaSuccess) {                    \
        fprintf(stderr, "CUDA error %s at line %d\n", cudaGetErrorString(e_), __LINE__); exit(3); } } while (0)

int main(int argc, char **argv) {
    if (argc < 3) { fprintf(stderr, "usage: %s IN OUT [REPEAT [counts]]\n", argv[0]); return 2; }
    int repeat = argc > 3 ? atoi(argv[3]) : 0;
    int counts_only = argc > 4 && argv[4][0] == 'c';          /* OUT holds the counts only */
    int64_t n, nwords, nin = LN_NUM_INPUTS;
    uint64_t *x = ln_read_input(argv[1], &n, &nwords);
    if (!x) return 2;
    if (n < 1) { fprintf(stderr, "no samples in %s\n", argv[1]); return 2; }

    int64_t slots = LN_COUNTS_SLOTS > LN_BITS_SLOTS ? LN_COUNTS_SLOTS : LN_BITS_SLOTS;
    int64_t stride = nwords;                                  /* scratch of at most 1 GiB */
    while (stride > 256 && slots * stride * 8 > ((int64_t)1 << 30)) stride = (stride + 1) / 2;
    uint64_t *dx, *dV, *dy;
    int32_t *dcounts;
    LN_CHECK(cudaMalloc(&dx, (size_t)(nin * nwords * 8)));
    LN_CHECK(cudaMalloc(&dV, (size_t)(slots * stride * 8)));
    LN_CHECK(cudaMalloc(&dy, (size_t)((LN_NUM_OUTPUTS + 1) * nwords * 8)));
    LN_CHECK(cudaMalloc(&dcounts, (size_t)(n * LN_NUM_CLASSES * 4)));
    LN_CHECK(cudaMemcpy(dx, x, (size_t)(nin * nwords * 8), cudaMemcpyHostToDevice));
    int threads = 128, blocks = (int)((stride + threads - 1) / threads);
    ln_class_counts_kernel<<<blocks, threads>>>(dx, nwords, n, dV, stride, dcounts);
    LN_CHECK(cudaGetLastError());
    if (!counts_only) ln_output_bits_kernel<<<blocks, threads>>>(dx, nwords, dV, stride, dy);
    LN_CHECK(cudaGetLastError());
    LN_CHECK(cudaDeviceSynchronize());
    int32_t *counts = (int32_t *)malloc((size_t)(n * LN_NUM_CLASSES * 4));
    uint64_t *y = (uint64_t *)malloc((size_t)((LN_NUM_OUTPUTS + 1) * nwords * 8));
    LN_CHECK(cudaMemcpy(counts, dcounts, (size_t)(n * LN_NUM_CLASSES * 4), cudaMemcpyDeviceToHost));
    LN_CHECK(cudaMemcpy(y, dy, (size_t)((LN_NUM_OUTPUTS + 1) * nwords * 8), cudaMemcpyDeviceToHost));
    if (counts_only) {
        FILE *f = fopen(argv[2], "wb");
        if (!f || fwrite(counts, 4, (size_t)(n * LN_NUM_CLASSES), f) != (size_t)(n * LN_NUM_CLASSES)) return 2;
        fclose(f);
    } else if (ln_write_output(argv[2], counts, y, n, nwords)) {
        return 2;
    }
    if (repeat > 0) {                                          /* best of REPEAT timed runs */
        cudaEvent_t start, stop;
        cudaEventCreate(&start);
        cudaEventCreate(&stop);
        float best = 1e30f;
        for (int r = 0; r < repeat; r++) {
            cudaEventRecord(start);
            ln_class_counts_kernel<<<blocks, threads>>>(dx, nwords, n, dV, stride, dcounts);
            cudaEventRecord(stop);
            LN_CHECK(cudaEventSynchronize(stop));
            float ms = 0;
            cudaEventElapsedTime(&ms, start, stop);
            if (ms < best) best = ms;
        }
        printf("samples_per_s %.6e\n", n / (best * 1e-3));
    }
    printf("cuda\n");
    return 0;
}
#endif
