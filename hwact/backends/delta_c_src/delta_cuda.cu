/* hwact delta-network runtime on CUDA: one thread block per stream runs every layer of a frame.
 * Per layer: (A) each thread quantizes some inputs, and the inputs whose code changed by at least the
 * threshold append (index, delta) to a shared list; (B) each thread owns some outputs and adds
 * delta * W[:, j] for the listed columns only, into its int32 accumulators. Integer sums do not depend
 * on the list order, so the result is bit-exact with the reference. Build with --fmad=false.
 * Reads the net format of delta.c (dl_load) and the runner files of delta_main.c:
 *     delta_cuda_main NET IN OUT [dense] [repeats]   (prints kernel time per frame in microseconds) */
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <cuda_runtime.h>
extern "C" {
#include "delta.h"
}
#include "delta_simd.h"

#define CHECK(call) do { cudaError_t e = (call); if (e != cudaSuccess) { \
    fprintf(stderr, "CUDA error %s at %s:%d\n", cudaGetErrorString(e), __FILE__, __LINE__); exit(3); } } while (0)

struct GpuLayer {
    int n_in, n_out, levels, relu;
    const float *step, *scale;
    const int32_t *bias_acc, *limit;
    const int8_t *wt;
};

__device__ int code_of(float x, float step, int levels) {
    float r = rintf(x / step);
    r = fminf(fmaxf(r, -(float)levels), (float)levels);
    if (r != r) r = 0.0f;
    return (int)r;
}

__global__ void delta_frames(const GpuLayer *layers, int n_layers, int state_len, int key_interval, int max_width,
                             int steps, const float *x, float *y, int32_t *state, long long *frame, int dense,
                             unsigned long long *fired) {
    extern __shared__ unsigned char shared[];
    float *buf0 = (float *)shared, *buf1 = buf0 + max_width;
    int *list = (int *)(buf1 + max_width), *deltas = list + max_width;
    __shared__ int count;
    const int b = blockIdx.x, tid = threadIdx.x, nt = blockDim.x;
    const int n_in0 = layers[0].n_in, n_out_last = layers[n_layers - 1].n_out;
    int32_t *s = state + (size_t)b * state_len;
    for (int t = 0; t < steps; t++) {
        const bool key = key_interval > 0 && (frame[b] % key_interval) == 0;
        for (int j = tid; j < n_in0; j += nt) buf0[j] = x[((size_t)b * steps + t) * n_in0 + j];
        __syncthreads();
        int32_t *ls = s;
        float *in = buf0, *out = buf1;
        for (int l = 0; l < n_layers; l++) {
            const GpuLayer L = layers[l];
            int32_t *codes = ls, *acc = ls + L.n_in;
            if (tid == 0) count = 0;
            __syncthreads();
            for (int j = tid; j < L.n_in; j += nt) {
                int k = code_of(in[j], L.step[j], L.levels);
                int d = dense ? k : k - codes[j];
                bool fire = dense ? d != 0 : (key ? d != 0 : (d >= L.limit[j] || -d >= L.limit[j]));
                if (fire) {
                    int slot = atomicAdd(&count, 1);
                    list[slot] = j;
                    deltas[slot] = d;
                    if (!dense) codes[j] += d;
                }
            }
            __syncthreads();
            const int used = count;
            float *dst = l == n_layers - 1 ? y + ((size_t)b * steps + t) * n_out_last : out;
            for (int o = tid; o < L.n_out; o += nt) {
                int a = dense ? L.bias_acc[o] : acc[o];
                for (int i = 0; i < used; i++) a += deltas[i] * (int)L.wt[(size_t)list[i] * L.n_out + o];
                if (!dense) acc[o] = a;
                float v = (float)a * L.scale[o];
                dst[o] = (L.relu && !(v > 0.0f)) ? 0.0f : v;
            }
            if (tid == 0) atomicAdd(&fired[l], (unsigned long long)(dense ? L.n_in : used));
            __syncthreads();
            ls += L.n_in + L.n_out;
            float *tmp = in; in = out; out = tmp;
        }
        if (tid == 0 && !dense) frame[b] += 1;
        __syncthreads();
    }
}

template <typename T> static T *upload(const T *host, size_t count) {
    T *dev;
    CHECK(cudaMalloc(&dev, sizeof(T) * count));
    CHECK(cudaMemcpy(dev, host, sizeof(T) * count, cudaMemcpyHostToDevice));
    return dev;
}

int main(int argc, char **argv) {
    if (argc < 4) { fprintf(stderr, "usage: %s NET IN OUT [dense] [repeats]\n", argv[0]); return 2; }
    dl_net *net = dl_read_net(argv[1]);
    if (!net) return 2;
    int32_t batch, steps, n_in = dl_input_size(net);
    const float *x = delta_read_frames(argv[2], n_in, &batch, &steps);
    if (!x) return 2;
    int dense = argc > 4 && argv[4][0] == '1';
    int repeats = argc > 5 ? atoi(argv[5]) : 0;
    int n_out = dl_output_size(net), L = net->n_layers;
    GpuLayer *host_layers = (GpuLayer *)calloc(L, sizeof(GpuLayer));
    for (int l = 0; l < L; l++) {
        dl_layer *c = &net->layers[l];
        host_layers[l] = {c->n_in, c->n_out, c->levels, c->relu, upload(c->step, c->n_in), upload(c->scale, c->n_out),
                          upload(c->bias_acc, c->n_out), upload(c->limit, c->n_in), upload(c->wt, (size_t)c->n_in * c->n_out)};
    }
    GpuLayer *d_layers = upload(host_layers, L);
    size_t xs = (size_t)batch * steps * n_in, ys = (size_t)batch * steps * n_out, ss = (size_t)batch * net->state_len;
    float *d_x = upload(x, xs), *d_y;
    CHECK(cudaMalloc(&d_y, 4 * ys));
    int32_t *h_state = (int32_t *)malloc(4 * ss);
    int64_t *h_frame = (int64_t *)malloc(8 * batch);
    dl_reset(net, batch, h_state, h_frame);
    int32_t *d_state = upload(h_state, ss);
    long long *d_frame = upload((long long *)h_frame, batch);
    unsigned long long *d_fired;
    CHECK(cudaMalloc(&d_fired, 8 * L));
    CHECK(cudaMemset(d_fired, 0, 8 * L));
    int threads = 256;
    size_t shmem = (size_t)net->max_width * 16;
    delta_frames<<<batch, threads, shmem>>>(d_layers, L, (int)net->state_len, net->key_interval, net->max_width, steps,
                                            d_x, d_y, d_state, d_frame, dense, d_fired);
    CHECK(cudaGetLastError());
    CHECK(cudaDeviceSynchronize());
    float *h_y = (float *)malloc(4 * ys);
    unsigned long long *h_fired = (unsigned long long *)malloc(8 * L);
    CHECK(cudaMemcpy(h_y, d_y, 4 * ys, cudaMemcpyDeviceToHost));
    CHECK(cudaMemcpy(h_fired, d_fired, 8 * L, cudaMemcpyDeviceToHost));
    CHECK(cudaMemcpy(h_state, d_state, 4 * ss, cudaMemcpyDeviceToHost));
    FILE *f = fopen(argv[3], "wb");
    fwrite(h_y, 4, ys, f);
    fwrite(h_fired, 8, L, f);
    fwrite(h_state, 4, ss, f);
    fclose(f);
    if (repeats > 0) {  /* timing: rerun the whole sequence from a fresh state, best of `repeats` */
        cudaEvent_t start, stop;
        cudaEventCreate(&start); cudaEventCreate(&stop);
        float best = 1e30f;
        int32_t *fresh = (int32_t *)malloc(4 * ss);
        int64_t *fresh_frame = (int64_t *)malloc(8 * batch);
        dl_reset(net, batch, fresh, fresh_frame);
        for (int r = 0; r < repeats; r++) {
            CHECK(cudaMemcpy(d_state, fresh, 4 * ss, cudaMemcpyHostToDevice));
            CHECK(cudaMemcpy(d_frame, fresh_frame, 8 * batch, cudaMemcpyHostToDevice));
            cudaEventRecord(start);
            delta_frames<<<batch, threads, shmem>>>(d_layers, L, (int)net->state_len, net->key_interval, net->max_width,
                                                    steps, d_x, d_y, d_state, d_frame, dense, d_fired);
            cudaEventRecord(stop);
            cudaEventSynchronize(stop);
            float ms;
            cudaEventElapsedTime(&ms, start, stop);
            if (ms < best) best = ms;
        }
        printf("us_per_frame %.4f\n", 1000.0f * best / steps);
    }
    printf("cuda ok\n");
    return 0;
}
