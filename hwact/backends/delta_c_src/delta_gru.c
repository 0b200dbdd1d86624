/* hwact delta-GRU runtime (see delta_gru.h). Build without -ffast-math and with -ffp-contract=off:
 * every float step (x / step, rint, acc * scale, the rational tanh, the gate arithmetic) must round
 * exactly like the PyTorch reference, one IEEE single operation at a time, in the same order. */
#include "delta_gru.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "delta_simd.h"


const char *dg_kernel_name(void) { return delta_simd_name(); }

/* th(v): Eigen's float tanh rational approximation, Horner order, one rounding per operation. */
static float rational_tanh(float v) {
    const float c = 7.90531110763549805f;
    v = v > c ? c : v;                    /* two plain selects: gcc if-converts and vectorizes them */
    v = v < -c ? -c : v;
    const float v2 = v * v;
    float p = -2.76076847742355e-16f;
    p = p * v2 + 2.00018790482477e-13f;
    p = p * v2 + -8.60467152213735e-11f;
    p = p * v2 + 5.12229709037114e-08f;
    p = p * v2 + 1.48572235717979e-05f;
    p = p * v2 + 6.37261928875436e-04f;
    p = p * v2 + 4.89352455891786e-03f;
    float q = 1.19825839466702e-06f;
    q = q * v2 + 1.18534705686654e-04f;
    q = q * v2 + 2.26843463243900e-03f;
    q = q * v2 + 4.89352518554385e-03f;
    return (p * v) / q;
}

static float rational_sigmoid(float v) { return rational_tanh(v * 0.5f) * 0.5f + 0.5f; }

dg_net *dg_load(const uint8_t *blob, size_t size) {
    const uint8_t *p, *end = blob + size;
    int32_t key_interval, n_layers = delta_net_header(blob, size, "HWDG", &p, &key_interval);
    if (!n_layers) return NULL;
    dg_net *net = calloc(1, sizeof(dg_net));
    net->layers = calloc((size_t)n_layers, sizeof(dg_layer));
    net->n_layers = n_layers;
    net->key_interval = key_interval;
    for (int32_t l = 0; l < n_layers; l++) {
        dg_layer *L = &net->layers[l];
        if (end - p < 24) goto bad;
        L->n_in = delta_read_i32(&p); L->hidden = delta_read_i32(&p); L->levels = delta_read_i32(&p); p += 4;
        L->theta_x = delta_read_f32(&p); L->theta_h = delta_read_f32(&p);
        if (L->n_in <= 0 || L->hidden <= 0 || L->levels <= 0 || L->levels > 127) goto bad;
        if (l > 0 && L->n_in != net->layers[l - 1].hidden) goto bad;
        const size_t F = (size_t)L->n_in, H = (size_t)L->hidden, rows = 3 * H;
        size_t need = 4 * (F + H) + 16 * rows + (F + H) * rows;
        if ((size_t)(end - p) < need) goto bad;
        L->step_x = (const float *)p; p += 4 * F;
        L->step_h = (const float *)p; p += 4 * H;
        L->scale_x = (const float *)p; p += 4 * rows;
        L->scale_h = (const float *)p; p += 4 * rows;
        L->bias_x = (const int32_t *)p; p += 4 * rows;
        L->bias_h = (const int32_t *)p; p += 4 * rows;
        L->wx = (const int8_t *)p; p += F * rows;
        L->wh = (const int8_t *)p; p += H * rows;
        p += (4 - ((p - blob) & 3)) & 3;     /* next layer 4-byte aligned */
        L->limit_x = malloc(4 * F);
        L->limit_h = malloc(4 * H);
        if (L->n_in > net->max_width) net->max_width = L->n_in;
        if (L->hidden > net->max_width) net->max_width = L->hidden;
        net->state_len += (int64_t)(F + H + 2 * rows);
        net->hidden_len += (int64_t)H;
        dg_set_threshold(net, l, L->theta_x, L->theta_h);
    }
    return net;
bad:
    dg_free(net);
    return NULL;
}

void dg_free(dg_net *net) {
    if (!net) return;
    for (int32_t l = 0; l < net->n_layers; l++) {
        free(net->layers[l].limit_x);
        free(net->layers[l].limit_h);
    }
    free(net->layers);
    free(net);
}

int64_t dg_state_len(const dg_net *net) { return net->state_len; }
int64_t dg_hidden_len(const dg_net *net) { return net->hidden_len; }
void dg_set_key_interval(dg_net *net, int32_t key_interval) { net->key_interval = key_interval < 0 ? 0 : key_interval; }

int dg_set_threshold(dg_net *net, int32_t layer, float theta_x, float theta_h) {
    if (!(theta_x >= 0.0f) || !(theta_h >= 0.0f)) return -1;
    for (int32_t l = 0; l < net->n_layers; l++) {
        if (layer >= 0 && l != layer) continue;
        dg_layer *L = &net->layers[l];
        L->theta_x = theta_x;
        L->theta_h = theta_h;
        delta_code_limits(L->step_x, L->n_in, theta_x, L->limit_x);
        delta_code_limits(L->step_h, L->hidden, theta_h, L->limit_h);
    }
    return 0;
}

void dg_reset(const dg_net *net, int32_t batch, int32_t *state, float *hidden, int64_t *frame) {
    for (int32_t b = 0; b < batch; b++) {
        int32_t *s = state + (size_t)b * net->state_len;
        for (int32_t l = 0; l < net->n_layers; l++) {
            const dg_layer *L = &net->layers[l];
            const size_t rows = 3 * (size_t)L->hidden;
            memset(s, 0, 4 * ((size_t)L->n_in + L->hidden));
            s += L->n_in + L->hidden;
            memcpy(s, L->bias_x, 4 * rows);
            memcpy(s + rows, L->bias_h, 4 * rows);
            s += 2 * rows;
        }
        memset(hidden + (size_t)b * net->hidden_len, 0, 4 * (size_t)net->hidden_len);
        frame[b] = 0;
    }
}

/* Quantize v (n values), send the codes that moved by >= limit (any change on a key frame) and add
 * their weight columns to acc. Three passes: quantize (vectorizable), compact the fired inputs into
 * (index, delta) lists without branches, then read only those columns. Returns the columns used. */
static int64_t send_columns(const float *v, const float *step, const int32_t *limit, int32_t levels, int32_t n,
                            int32_t *codes, int32_t *acc, const int8_t *w, int32_t rows, int key,
                            int32_t *kbuf, int32_t *list) {
    delta_quantize(v, step, 1, levels, n, kbuf);
    int32_t *deltas = list + n;
    const int32_t used = delta_compact(kbuf, codes, limit, 1, n, key, 0, list, deltas);
    for (int32_t i = 0; i < used; i++) {
        codes[list[i]] += deltas[i];
        delta_column_update(acc, w + (size_t)list[i] * rows, deltas[i], rows);
    }
    return used;
}

/* The GRU gates of one frame from the accumulators (r, z, n blocks of H rows each); h is read and
 * updated, out gets the new h. restrict pointers and plain selects let gcc vectorize the loop (8 lanes
 * with AVX2): every lane runs the same IEEE single operations in the same order as the scalar code. */
static void gates(const int32_t *restrict acc_x, const int32_t *restrict acc_h, const float *restrict scale_x,
                  const float *restrict scale_h, float *restrict h, float *restrict out, int32_t H) {
    for (int32_t i = 0; i < H; i++) {
        float px_r = (float)acc_x[i] * scale_x[i], ph_r = (float)acc_h[i] * scale_h[i];
        float px_z = (float)acc_x[H + i] * scale_x[H + i], ph_z = (float)acc_h[H + i] * scale_h[H + i];
        float px_n = (float)acc_x[2 * H + i] * scale_x[2 * H + i];
        float ph_n = (float)acc_h[2 * H + i] * scale_h[2 * H + i];
        float r = rational_sigmoid(px_r + ph_r);
        float z = rational_sigmoid(px_z + ph_z);
        float n = rational_tanh(px_n + r * ph_n);
        float keep = (1.0f - z) * n, carry = z * h[i];
        h[i] = keep + carry;
        out[i] = keep + carry;
    }
}

/* One frame of one layer. s: the layer's int32 state (codes_x, codes_h, acc_x, acc_h), h: its hidden
 * state (read for the h deltas, then updated), out: the new h. */
static void layer_step(const dg_layer *L, const float *in, float *out, int32_t *s, float *h, int key,
                       int32_t *kbuf, int32_t *list, int64_t *fired) {
    const int32_t F = L->n_in, H = L->hidden, rows = 3 * H;
    int32_t *codes_x = s, *codes_h = s + F, *acc_x = s + F + H, *acc_h = acc_x + rows;
    fired[0] += send_columns(in, L->step_x, L->limit_x, L->levels, F, codes_x, acc_x, L->wx, rows, key, kbuf, list);
    fired[1] += send_columns(h, L->step_h, L->limit_h, L->levels, H, codes_h, acc_h, L->wh, rows, key, kbuf, list);
    gates(acc_x, acc_h, L->scale_x, L->scale_h, h, out, H);
}

void dg_run(const dg_net *net, int32_t steps, int32_t batch, const float *x, float *y,
            int32_t *state, float *hidden, int64_t *frame, int64_t *fired) {
    const int32_t n_in = net->layers[0].n_in, n_out = net->layers[net->n_layers - 1].hidden;
    int32_t *kbuf = malloc(4 * (size_t)net->max_width), *list = malloc(8 * (size_t)net->max_width);
    float *bufs = malloc(2 * sizeof(float) * (size_t)net->max_width);
    for (int32_t b = 0; b < batch; b++) {
        int32_t *sb = state + (size_t)b * net->state_len;
        float *hb = hidden + (size_t)b * net->hidden_len;
        for (int32_t t = 0; t < steps; t++) {
            int key = net->key_interval > 0 && (frame[b] % net->key_interval) == 0;
            const float *in = x + ((size_t)b * steps + t) * n_in;
            int32_t *s = sb;
            float *h = hb;
            for (int32_t l = 0; l < net->n_layers; l++) {
                const dg_layer *L = &net->layers[l];
                float *out = l == net->n_layers - 1 ? y + ((size_t)b * steps + t) * n_out
                                                    : bufs + (size_t)(l & 1) * net->max_width;
                layer_step(L, in, out, s, h, key, kbuf, list, fired + 2 * l);
                s += L->n_in + L->hidden + 6 * (size_t)L->hidden;
                h += L->hidden;
                in = out;
            }
            frame[b] += 1;
        }
    }
    free(kbuf);
    free(list);
    free(bufs);
}
