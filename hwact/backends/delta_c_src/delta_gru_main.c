/* Stand-alone delta-GRU runner (used for the aarch64 build under qemu-user).
 * usage: delta_gru_main NET.bin IN.bin OUT.bin
 *   IN.bin : int32 batch, steps, n_in; float32 x[batch][steps][n_in]
 *   OUT.bin: float32 y[batch][steps][hidden_last]; int64 fired[2 * n_layers]
 * prints the kernel name. Streams start from the reset state. */
#include "delta_gru.h"

#include <stdio.h>
#include <stdlib.h>

#include "delta_simd.h"

int main(int argc, char **argv) {
    if (argc != 4) { fprintf(stderr, "usage: %s NET.bin IN.bin OUT.bin\n", argv[0]); return 2; }
    size_t net_size;
    uint8_t *blob = delta_read_file(argv[1], &net_size);
    dg_net *net = blob ? dg_load(blob, net_size) : NULL;
    if (!net) { fprintf(stderr, "%s: not a delta GRU net\n", argv[1]); return 2; }
    int32_t batch, steps;
    const float *x = delta_read_frames(argv[2], net->layers[0].n_in, &batch, &steps);
    if (!x) return 2;
    int32_t n_out = net->layers[net->n_layers - 1].hidden;
    int32_t *state = malloc(4 * (size_t)batch * net->state_len);
    float *hidden = malloc(4 * (size_t)batch * net->hidden_len), *y = malloc(4 * (size_t)batch * steps * n_out);
    int64_t *frame = malloc(8 * (size_t)batch), *fired = calloc(2 * (size_t)net->n_layers, 8);
    dg_reset(net, batch, state, hidden, frame);
    dg_run(net, steps, batch, x, y, state, hidden, frame, fired);
    FILE *out = fopen(argv[3], "wb");
    if (!out) return 2;
    fwrite(y, 4, (size_t)batch * steps * n_out, out);
    fwrite(fired, 8, 2 * (size_t)net->n_layers, out);
    fclose(out);
    printf("%s\n", dg_kernel_name());
    dg_free(net);
    return 0;
}
