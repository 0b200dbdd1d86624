/* File I/O of the stand-alone runners: logic_kernel.c's (LN_MAIN) and logic_kernel.cu's (LN_RUNNER).
 * hwact pastes this text in place of its #include line, so an emitted net source stays self-contained.
 *   IN : int64 n_samples, int64 n_inputs, then uint8 bits[n_samples][n_inputs] (0/1)
 *   OUT: int32 counts[n_samples][LN_NUM_CLASSES], then uint8 output bits[n_samples][LN_NUM_OUTPUTS]
 * Valid C11 and C++ (nvcc's host code). */
#include <stdio.h>
#include <stdlib.h>

/* The bytes bits[n][LN_NUM_INPUTS] of the samples in file `path`, with *n = n_samples; NULL, after a
 * message, when the file cannot be read or holds another number of inputs. */
static uint8_t *ln_read_bytes(const char *path, int64_t *n) {
    FILE *f = fopen(path, "rb");
    int64_t head[2];
    if (!f || fread(head, 8, 2, f) != 2) { fprintf(stderr, "cannot read %s\n", path); return NULL; }
    const int64_t count = head[0], nin = head[1];
    if (nin != LN_NUM_INPUTS || count < 0) {
        fprintf(stderr, "expected %d inputs, got %lld\n", LN_NUM_INPUTS, (long long)nin);
        return NULL;
    }
    uint8_t *bits = (uint8_t *)malloc((size_t)(count * nin + 1));
    if ((int64_t)fread(bits, 1, (size_t)(count * nin), f) != count * nin) { fprintf(stderr, "short input\n"); return NULL; }
    fclose(f);
    *n = count;
    return bits;
}

/* The bit planes x[LN_NUM_INPUTS][nwords] of the samples in file `path` (sample s in bit s % 64 of word
 * s / 64, zero padded; bit 0 of each byte), with *n = n_samples and *nwords = ceil(n / 64); NULL as
 * ln_read_bytes. */
static uint64_t *ln_read_input(const char *path, int64_t *n, int64_t *nwords) {
    uint8_t *bits = ln_read_bytes(path, n);
    if (!bits) return NULL;
    const int64_t count = *n, nin = LN_NUM_INPUTS;
    *nwords = (count + 63) / 64;
    uint64_t *x = (uint64_t *)calloc((size_t)(nin * *nwords + 1), 8);
    for (int64_t s = 0; s < count; s++)
        for (int64_t i = 0; i < nin; i++) x[i * *nwords + s / 64] |= (uint64_t)(bits[s * nin + i] & 1) << (s % 64);
    free(bits);
    return x;
}

/* Write the class counts (n x LN_NUM_CLASSES) and the output bits unpacked from the planes
 * y[LN_NUM_OUTPUTS][nwords] of n samples to file `path`; 0, or 2 after a message. */
static int ln_write_output(const char *path, const int32_t *counts, const uint64_t *y, int64_t n, int64_t nwords) {
    uint8_t *obits = (uint8_t *)malloc((size_t)(n * LN_NUM_OUTPUTS + 1));
    for (int64_t s = 0; s < n; s++)
        for (int64_t o = 0; o < LN_NUM_OUTPUTS; o++)
            obits[s * LN_NUM_OUTPUTS + o] = (uint8_t)((y[o * nwords + s / 64] >> (s % 64)) & 1);
    FILE *f = fopen(path, "wb");
    if (!f) { fprintf(stderr, "cannot write %s\n", path); return 2; }
    fwrite(counts, 4, (size_t)(n * LN_NUM_CLASSES), f);
    fwrite(obits, 1, (size_t)(n * LN_NUM_OUTPUTS), f);
    fclose(f);
    free(obits);
    return 0;
}
