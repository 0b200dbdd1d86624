/* hwact_run: run an hwact static program on a machine without Python (a board, or qemu-user in tests).

     hwact_run [--isa N] [--threads N] PROGRAM CONSTANTS OUTDIR INPUT...

   PROGRAM (program.bin, int64 words) and CONSTANTS (program_constants.bin) are what `hwact convert` wrote;
   every INPUT is a raw array of the exact byte size the program was made for (little-endian, C order);
   the outputs are written as OUTDIR/output_<i>.bin. --isa forces a kernel path (hw_isa numbers) for tests.
   Exit codes: 0 done, 2 bad usage or input files, 3 the program does not load, 4 the run failed. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hwact_int.h"
#include "hwact_runner.h"

static void *read_file(const char *path, long *size) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    void *data = NULL;
    if (fseek(f, 0, SEEK_END) == 0 && (*size = ftell(f)) >= 0 && fseek(f, 0, SEEK_SET) == 0) {
        data = malloc(*size ? (size_t)*size : 1);
        if (data && fread(data, 1, (size_t)*size, f) != (size_t)*size) {
            free(data);
            data = NULL;
        }
    }
    fclose(f);
    return data;
}

int main(int argc, char **argv) {
    int arg = 1, isa = -1, threads = 1;
    while (arg + 1 < argc && strncmp(argv[arg], "--", 2) == 0) {
        if (strcmp(argv[arg], "--isa") == 0) isa = atoi(argv[arg + 1]);
        else if (strcmp(argv[arg], "--threads") == 0) threads = atoi(argv[arg + 1]);
        else break;
        arg += 2;
    }
    if (argc - arg < 3) {
        fprintf(stderr, "usage: hwact_run [--isa N] [--threads N] PROGRAM CONSTANTS OUTDIR INPUT...\n");
        return 2;
    }
    if (isa >= 0 && hw_force_isa(isa) != 0) {
        fprintf(stderr, "hwact_run: this CPU cannot run %s\n", hw_isa_name(isa));
        return 2;
    }
    hw_set_threads(threads);
    long code_bytes = 0, constant_bytes = 0;
    int64_t *code = read_file(argv[arg], &code_bytes);
    uint8_t *constants = read_file(argv[arg + 1], &constant_bytes);
    if (!code || !constants || code_bytes % 8) {
        fprintf(stderr, "hwact_run: cannot read %s and %s\n", argv[arg], argv[arg + 1]);
        return 2;
    }
    char error[256] = "";
    hw_program *program = hw_program_new(code, code_bytes / 8, constants, constant_bytes, error, sizeof error);
    if (!program) {
        fprintf(stderr, "hwact_run: %s: %s\n", argv[arg], error);
        return 3;
    }
    const char *outdir = argv[arg + 2];
    int64_t inputs = hw_program_io_count(program, 0), outputs = hw_program_io_count(program, 1);
    if (argc - arg - 3 != inputs) {
        fprintf(stderr, "hwact_run: the program takes %lld inputs, got %d\n", (long long)inputs, argc - arg - 3);
        return 2;
    }
    void **in = calloc((size_t)inputs + 1, sizeof(void *)), **out = calloc((size_t)outputs + 1, sizeof(void *));
    for (int64_t i = 0; i < inputs; i++) {
        long size = 0;
        in[i] = read_file(argv[arg + 3 + i], &size);
        if (!in[i] || size != hw_program_io_bytes(program, 0, i)) {
            fprintf(stderr, "hwact_run: input %lld (%s) must hold %lld bytes\n", (long long)i, argv[arg + 3 + i],
                    (long long)hw_program_io_bytes(program, 0, i));
            return 2;
        }
    }
    for (int64_t i = 0; i < outputs; i++) out[i] = malloc((size_t)hw_program_io_bytes(program, 1, i) + 1);
    if (hw_program_run(program, in, out, error, sizeof error)) {
        fprintf(stderr, "hwact_run: %s\n", error);
        return 4;
    }
    for (int64_t i = 0; i < outputs; i++) {
        char path[4096];
        snprintf(path, sizeof path, "%s/output_%lld.bin", outdir, (long long)i);
        FILE *f = fopen(path, "wb");
        size_t bytes = (size_t)hw_program_io_bytes(program, 1, i);
        if (!f || fwrite(out[i], 1, bytes, f) != bytes || fclose(f)) {
            fprintf(stderr, "hwact_run: cannot write %s\n", path);
            return 2;
        }
    }
    printf("%s\n", hw_isa_name(hw_isa()));
    hw_program_free(program);
    return 0;
}
