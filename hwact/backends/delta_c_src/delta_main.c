/* Stand-alone runner (used for the aarch64 build under qemu-user): delta_main NET IN OUT [dense]
 * IN: int32 batch, steps, n_in, then float32 x; OUT: float32 y (batch, steps, n_out), then int64
 * fired[n_layers], then int32 state (batch x state_len). */
#include <stdio.h>
#include <stdlib.h>
#include "delta.h"
#include "delta_simd.h"

int main(int argc, char **argv) {
    if (argc < 4) { fprintf(stderr, "usage: %s NET IN OUT [dense]\n", argv[0]); return 2; }
    dl_net *net = dl_read_net(argv[1]);
    int32_t batch, steps;
    const float *x = net ? delta_read_frames(argv[2], dl_input_size(net), &batch, &steps) : NULL;
    if (!x) return 2;
    int dense = argc > 4 && argv[4][0] == '1';
    int32_t n_out = dl_output_size(net);
    float *y = calloc((size_t)batch * steps * n_out, 4);
    int32_t *state = malloc(4 * (size_t)batch * dl_state_len(net));
    int64_t *frame = malloc(8 * (size_t)batch), *fired = calloc((size_t)net->n_layers, 8);
    dl_reset(net, batch, state, frame);
    dl_run(net, steps, batch, x, y, state, frame, dense, fired);
    FILE *f = fopen(argv[3], "wb");
    fwrite(y, 4, (size_t)batch * steps * n_out, f);
    fwrite(fired, 8, (size_t)net->n_layers, f);
    fwrite(state, 4, (size_t)batch * dl_state_len(net), f);
    fclose(f);
    printf("%s\n", dl_kernel_name());
    dl_free(net);
    return 0;
}
