/* hwact delta-network runtime (see delta.h). Build without -ffast-math and with -ffp-contract=off:
 * the float steps (x / step, rint, acc * scale) must round exactly like the PyTorch reference. */
#include "delta.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "delta_simd.h"


const char *dl_kernel_name(void) { return delta_simd_name(); }

dl_net *dl_load(const uint8_t *blob, size_t size) {
    const uint8_t *p, *end = blob + size;
    int32_t key_interval, n_layers = delta_net_header(blob, size, "HWDL", &p, &key_interval);
    if (!n_layers) return NULL;
    dl_net *net = calloc(1, sizeof(dl_net));
    net->layers = calloc((size_t)n_layers, sizeof(dl_layer));
    net->n_layers = n_layers;
    net->key_interval = key_interval;
    for (int32_t l = 0; l < n_layers; l++) {
        dl_layer *L = &net->layers[l];
        if (end - p < 20) goto bad;
        L->n_in = delta_read_i32(&p); L->n_out = delta_read_i32(&p); L->levels = delta_read_i32(&p);
        L->relu = delta_read_i32(&p); L->threshold = delta_read_f32(&p);
        if (L->n_in <= 0 || L->n_out <= 0 || L->levels <= 0 || L->levels > 127) goto bad;
        if (l > 0 && L->n_in != net->layers[l - 1].n_out) goto bad;
        size_t need = 4 * (size_t)L->n_in + 8 * (size_t)L->n_out + (size_t)L->n_in * L->n_out;
        if ((size_t)(end - p) < need) goto bad;
        L->step = (const float *)p; p += 4 * (size_t)L->n_in;
        L->scale = (const float *)p; p += 4 * (size_t)L->n_out;
        L->bias_acc = (const int32_t *)p; p += 4 * (size_t)L->n_out;
        L->wt = (const int8_t *)p; p += (size_t)L->n_in * L->n_out;
        p += (4 - ((p - blob) & 3)) & 3;     /* next layer 4-byte aligned */
        L->limit = malloc(4 * (size_t)L->n_in);
        if (L->n_in > net->max_width) net->max_width = L->n_in;
        if (L->n_out > net->max_width) net->max_width = L->n_out;
        net->state_len += L->n_in + L->n_out;
        dl_set_threshold(net, l, L->threshold);
    }
    net->scratch = malloc(2 * sizeof(float) * (size_t)net->max_width);
    return net;
bad:
    dl_free(net);
    return NULL;
}

dl_net *dl_read_net(const char *path) {
    size_t size;
    uint8_t *blob = delta_read_file(path, &size);   /* the net points into it: kept until the process ends */
    dl_net *net = blob ? dl_load(blob, size) : NULL;
    if (!net) fprintf(stderr, "%s: not a delta net\n", path);
    return net;
}

void dl_free(dl_net *net) {
    if (!net) return;
    for (int32_t l = 0; l < net->n_layers; l++) free(net->layers[l].limit);
    free(net->layers);
    free(net->scratch);
    free(net);
}

int64_t dl_state_len(const dl_net *net) { return net->state_len; }
int32_t dl_input_size(const dl_net *net) { return net->layers[0].n_in; }
int32_t dl_output_size(const dl_net *net) { return net->layers[net->n_layers - 1].n_out; }
void dl_set_key_interval(dl_net *net, int32_t key_interval) { net->key_interval = key_interval < 0 ? 0 : key_interval; }

int dl_set_threshold(dl_net *net, int32_t layer, float threshold) {
    if (!(threshold >= 0.0f)) return -1;
    for (int32_t l = 0; l < net->n_layers; l++) {
        if (layer >= 0 && l != layer) continue;
        dl_layer *L = &net->layers[l];
        L->threshold = threshold;
        delta_code_limits(L->step, L->n_in, threshold, L->limit);
    }
    return 0;
}

void dl_reset(const dl_net *net, int32_t batch, int32_t *state, int64_t *frame) {
    for (int32_t b = 0; b < batch; b++) {
        int32_t *s = state + (size_t)b * net->state_len;
        for (int32_t l = 0; l < net->n_layers; l++) {
            const dl_layer *L = &net->layers[l];
            memset(s, 0, 4 * (size_t)L->n_in);
            memcpy(s + L->n_in, L->bias_acc, 4 * (size_t)L->n_out);
            s += L->n_in + L->n_out;
        }
        frame[b] = 0;
    }
}

/* One frame of one layer: in (n_in floats) -> out (n_out floats); codes/acc are the layer's state.
 * Three passes: quantize every input (vectorizable), compact the inputs that fire into (index, delta)
 * lists without branches, then add only those weight columns. */
static int64_t layer_step(const dl_layer *L, const float *in, float *out, int32_t *codes, int32_t *acc,
                          int32_t *kbuf, int32_t *list, int key, int dense) {
    const int32_t n_in = L->n_in, n_out = L->n_out;
    delta_quantize(in, L->step, 1, L->levels, n_in, kbuf);
    int32_t used = 0;
    if (dense) {
        memcpy(acc, L->bias_acc, 4 * (size_t)n_out);
        for (int32_t j = 0; j < n_in; j++) delta_column_update(acc, L->wt + (size_t)j * n_out, kbuf[j], n_out);
        used = n_in;
    } else {
        int32_t *deltas = list + n_in;
        used = delta_compact(kbuf, codes, L->limit, 1, n_in, key, 0, list, deltas);
        for (int32_t i = 0; i < used; i++) {
            codes[list[i]] += deltas[i];
            delta_column_update(acc, L->wt + (size_t)list[i] * n_out, deltas[i], n_out);
        }
    }
    for (int32_t o = 0; o < n_out; o++) {
        float v = (float)acc[o] * L->scale[o];
        out[o] = (L->relu && !(v > 0.0f)) ? 0.0f : v;
    }
    return used;
}

void dl_run(const dl_net *net, int32_t steps, int32_t batch, const float *x, float *y,
            int32_t *state, int64_t *frame, int32_t dense, int64_t *fired) {
    const int32_t n_in = net->layers[0].n_in, n_out = net->layers[net->n_layers - 1].n_out;
    int32_t *dense_acc = malloc(4 * (size_t)net->max_width);
    int32_t *kbuf = malloc(4 * (size_t)net->max_width), *list = malloc(8 * (size_t)net->max_width);
    for (int32_t b = 0; b < batch; b++) {
        int32_t *s = state + (size_t)b * net->state_len;
        for (int32_t t = 0; t < steps; t++) {
            int key = net->key_interval > 0 && (frame[b] % net->key_interval) == 0;
            const float *in = x + ((size_t)b * steps + t) * n_in;
            float *bufs[2] = {net->scratch, net->scratch + net->max_width};
            int32_t *ls = s;
            for (int32_t l = 0; l < net->n_layers; l++) {
                const dl_layer *L = &net->layers[l];
                float *out = l == net->n_layers - 1 ? y + ((size_t)b * steps + t) * n_out : bufs[l & 1];
                fired[l] += layer_step(L, in, out, ls, dense ? dense_acc : ls + L->n_in, kbuf, list, key, dense);
                ls += L->n_in + L->n_out;
                in = out;
            }
            if (!dense) frame[b] += 1;
        }
    }
    free(dense_acc);
    free(kbuf);
    free(list);
}
