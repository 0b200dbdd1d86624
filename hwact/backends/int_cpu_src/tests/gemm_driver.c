/* Test driver for the GEMM kernels on another architecture (run under qemu-aarch64 by
   tests/backends/test_int_cpu_gemm.py): reads one hw_linear problem from a file, runs it on the ISA it
   names, writes the int32 outputs.

   input (little-endian): int64 isa, a_type, M, K, N, qmin, qmax, threads; a (M·K bytes); w (N·K int8);
   bias, m0, shift (N int32 each). output: M·N int32, row-major.
   exit status: 0 done, 2 bad input/usage, 3 the ISA is not available on this CPU. */
#include <stdio.h>
#include <stdlib.h>

#include "hwact_int.h"

static int read_all(FILE *f, void *p, size_t bytes) { return fread(p, 1, bytes, f) == bytes; }

int main(int argc, char **argv) {
    if (argc != 3)
        return 2;
    FILE *f = fopen(argv[1], "rb");
    if (!f)
        return 2;
    int64_t hdr[8];
    if (!read_all(f, hdr, sizeof hdr))
        return 2;
    int isa = (int)hdr[0], a_type = (int)hdr[1], threads = (int)hdr[7];
    int64_t M = hdr[2], K = hdr[3], N = hdr[4];
    int8_t *a = malloc((size_t)(M * K) + 1), *w = malloc((size_t)(N * K) + 1);
    int32_t *bias = malloc(4 * (size_t)N), *m0 = malloc(4 * (size_t)N), *shift = malloc(4 * (size_t)N);
    int32_t *out = malloc(4 * (size_t)(M * N));
    if (!read_all(f, a, (size_t)(M * K)) || !read_all(f, w, (size_t)(N * K)) || !read_all(f, bias, 4 * (size_t)N) ||
        !read_all(f, m0, 4 * (size_t)N) || !read_all(f, shift, 4 * (size_t)N))
        return 2;
    fclose(f);
    if (hw_force_isa(isa) != 0)
        return 3;
    void *packed = malloc(hw_pack_size(N, K));
    hw_pack(w, N, K, packed);
    hw_linear(a, a_type, M, K, K, packed, N, bias, m0, shift, (int32_t)hdr[5], (int32_t)hdr[6], NULL, 0, out,
              HW_I32, N, 1, threads);
    FILE *o = fopen(argv[2], "wb");
    if (!o || fwrite(out, 4, (size_t)(M * N), o) != (size_t)(M * N))
        return 2;
    fclose(o);
    printf("%s\n", hw_isa_name(hw_isa()));
    return 0;
}
