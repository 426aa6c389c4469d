/*
 * The cuda backend: the network of model.h on one NVIDIA GPU. Convolutions
 * through cuDNN, the fully connected layer through cuBLAS, everything else
 * (batch norm, ReLU, the shake combination, the shortcut's pool/shift/concat,
 * global pooling, softmax cross-entropy, SGD) in the kernels below.
 *
 * Layout and precision. Activations are NHWC, in float32 (precision=fp32,
 * TF32 off, for parity with `ref`) or bf16 (precision=bf16: activations and
 * convolutions in bf16 with float32 accumulation). Parameters, gradients,
 * momentum and batch-norm statistics are always float32 in flat arenas laid
 * out as model.h says; what cuDNN reads and writes -- each conv's weights
 * and filter gradient -- lives apart in the compute type, in aligned slots
 * (Wc, Gc), refreshed from the float32 weights after load and every update
 * and widened into the float32 gradients after backward. Conv weights are
 * (K, R, S, C/g) on the device, the NHWC filter layout, permuted to and from
 * PyTorch's (K, C/g, R, S) by load() and store(); SGD is elementwise, so
 * the layout does not matter to it.
 *
 * Batch norm keeps its statistics in double partial sums (as `ref` does)
 * and is applied as y = (x - center[c]) * scale[c] + beta[c] (center the
 * batch or running mean, scale = gamma * rstd, as ref computes it: folding
 * the mean into a shift would cancel when the mean is large). The last batch
 * norm of each branch and the shortcut's are never written out: the block's
 * combination kernel applies them as it reads (one kernel forward).
 * Backward, a batch norm reads its output gradient through a "source" that
 * folds in the shake coefficient beta (or 1 - beta) and the ReLU mask, so
 * the shake backward and ReLU backward cost no pass of their own.
 *
 * A block's two branches start with convolutions of the same input and the
 * same shape, so they run as one with both filter sets (Blk.merged; the
 * filters adjacent in Wc and Gc): one wider output, of which each branch's
 * batch norm reads its half (rows ld = 2c elements apart), one filter
 * gradient from both halves of the output gradient, and one data gradient
 * that is already the sum of the branches'. Wider convolutions fill the
 * tensor cores' tiles better than two narrow ones, and the input is read
 * once. SHAKE_CUDA_MERGE=0 runs them apart (for comparison).
 *
 * Two ways to train. Per call (forward, backward, update with host data and
 * coefficients), as the other backends and the tests use it; or whole steps
 * (set_data, train_step): the data sets' bytes stay on the GPU and a step --
 * batch assembly and augmentation, shake coefficients (the Philox draws of
 * core/shake.c and core/data.c, on the device), forward, loss, backward,
 * update -- needs from the host only its variables (StepVars) and a launch,
 * as a CUDA graph captured once the shapes are steady (SHAKE_CUDA_GRAPHS=0
 * turns graphs off).
 *
 * Invariants: every buffer is sized for max_batch at create(); backward()
 * needs the activations of the last forward, a training forward with the
 * same n; gradients are overwritten by each backward (each parameter is used
 * once per step). All work is queued on the main stream but a block's
 * second branch, which runs beside the first on a second stream (and with
 * three lanes the projection shortcut, with four the filter gradients; see
 * Lane); calls that
 * return data to the host synchronize the main stream, which has waited
 * for the others by then. A captured graph holds buffer addresses, so
 * every reallocation drops it (graph_drop).
 */
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <cudnn.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

extern "C" {
#include "backend.h"
#include "../core/algo_record.h"
}
#include "../core/philox.h"

typedef __nv_bfloat16 bf16;

/* ---- error checks: every CUDA, cuDNN and cuBLAS call reports file:line ---- */

static int cuda_fail(Err *e, cudaError_t st, const char *call, const char *file, int line)
{
    cudaGetLastError();         /* reported here, not again by the next check */
    if (st == cudaErrorMemoryAllocation)
        return err_set(e, "%s:%d: out of GPU memory (%s)", file, line, call);
    return err_set(e, "%s:%d: %s: %s", file, line, call, cudaGetErrorString(st));
}

#define CK(call)                                                          \
    do {                                                                  \
        cudaError_t ck_ = (call);                                         \
        if (ck_ != cudaSuccess)                                           \
            return cuda_fail(e, ck_, #call, __FILE__, __LINE__);          \
    } while (0)
/* a library call's status: ok, or the error with file:line and its text */
#define CK_STATUS(call, ok, text)                                         \
    do {                                                                  \
        auto ck_ = (call);                                                \
        if (ck_ != (ok)) {                                                \
            cudaGetLastError();                                           \
            return err_set(e, "%s:%d: %s: %s", __FILE__, __LINE__, #call, \
                           text(ck_));                                    \
        }                                                                 \
    } while (0)
#define CKDNN(call) CK_STATUS(call, CUDNN_STATUS_SUCCESS, cudnnGetErrorString)
#define CKBLAS(call) CK_STATUS(call, CUBLAS_STATUS_SUCCESS, cublasGetStatusString)
/* after a kernel launch: a bad configuration shows up here */
#define CKLAUNCH() CK(cudaGetLastError())
/* a call returning int with e set */
#define TRY(call)                 \
    do {                          \
        if ((call) != 0)          \
            return -1;            \
    } while (0)

/* ---- element types ---- */

__device__ __forceinline__ float to_f(float x) { return x; }
__device__ __forceinline__ float to_f(bf16 x) { return __bfloat162float(x); }
template <typename T> __device__ __forceinline__ T from_f(float x);
template <> __device__ __forceinline__ float from_f<float>(float x) { return x; }
template <> __device__ __forceinline__ bf16 from_f<bf16>(float x) { return __float2bfloat16_rn(x); }

static const int THREADS = 256;

/* KERNEL(k, grid, block, stream)(args): a launch, spelled so that the
 * CPU emulation the tests build this file with (tests/emu) can run it too. */
#ifndef SHAKE_CUDA_EMU
#define KERNEL(k, grid, block, stream) k<<<(grid), (block), 0, (stream)>>>
/* names a __shared__ array for the emulation, which starts each block with
 * it poisoned; nothing here */
#define EMU_SHARED(a) ((void)0)
#endif

static unsigned blocks_for(size_t count)
{
    size_t b = (count + THREADS - 1) / THREADS;
    return (unsigned)(b < 1 ? 1 : b > 1048576 ? 1048576 : b);
}

/* grid-stride loop over [0, count): 32-bit indices, whose divisions cost a
 * fraction of 64-bit ones (create() checks that every count fits) */
#define FOR_EACH(i, count)                                                       \
    for (unsigned i = blockIdx.x * blockDim.x + threadIdx.x; i < (unsigned)(count); \
         i += gridDim.x * blockDim.x)

/*
 * Pack<E, V>: V consecutive elements of type E, read and written as one
 * access (16 bytes for V = 16 / sizeof(E)). The elementwise kernels over
 * (rows, c) tensors take a Pack type: each thread handles V elements of
 * one row (LAUNCH_PACKED passes V > 1 only where c is a multiple of V and
 * every pointer is 16-byte aligned), and Pack<E, 1> is the plain loop.
 */
template <typename E, int N> struct alignas(sizeof(E) * N) Pack {
    typedef E T;
    enum { V = N };
    E v[N];
};

template <typename P>
__device__ __forceinline__ P load_pack(const typename P::T *p, unsigned i)
{
    return *reinterpret_cast<const P *>(p + i);
}

template <typename P>
__device__ __forceinline__ void store_pack(typename P::T *p, unsigned i, const P &x)
{
    *reinterpret_cast<P *>(p + i) = x;
}

/* ---- elementwise kernels ---- */

/*
 * What changes from one training step to the next, read by the kernels of a
 * captured step from device memory (a CUDA graph's arguments are fixed).
 */
struct StepVars {
    int offset;                 /* the batch's first position in the epoch order */
    int epoch;
    uint32_t step;              /* 0-based iteration: the shake draws' counter */
    float lr;
};


/* out (n, hw, c) = in (n, c, hw), float to T: the input images. */
template <typename T>
__global__ void nchw_to_nhwc_kernel(T *out, const float *in, int n, int c, int hw)
{
    const size_t count = (size_t)n * c * hw;
    FOR_EACH(i, count) {
        int ch = (int)(i % c);
        unsigned p = i / c;                     /* n * hw + pixel */
        unsigned img = p / hw, pix = p % hw;
        out[i] = from_f<T>(in[(img * c + ch) * hw + pix]);
    }
}

/* out = max(in, 0) */
template <typename P>
__global__ void relu_kernel(typename P::T *out, const typename P::T *in, size_t count)
{
    typedef typename P::T T;
    FOR_EACH(t, count / P::V) {
        const unsigned i = t * P::V;
        P x = load_pack<P>(in, i), y;
#pragma unroll
        for (int k = 0; k < P::V; k++) {
            float v = to_f(x.v[k]);
            y.v[k] = from_f<T>(v > 0.0f ? v : 0.0f);
        }
        store_pack(out, i, y);
    }
}

/* A batch norm as applied: y = (x - center[c]) * scale[c] + beta[c]. */
struct BnAffine {
    const float *center, *scale, *beta;
};

__device__ __forceinline__ float bn_at(const BnAffine &a, float x, int ch)
{
    return (x - a.center[ch]) * a.scale[ch] + a.beta[ch];
}

/*
 * Element i of a (rows, c) tensor whose rows are ld elements apart: a batch
 * norm's input (and its gradient) can be one branch's channels of a
 * convolution that computed both branches at once (ld = 2c).
 */
__device__ __forceinline__ unsigned at_ld(unsigned i, int c, int ld)
{
    return ld == c ? i : i / (unsigned)c * (unsigned)ld + i % (unsigned)c;
}

/* y (rows, c) = bn(x), then ReLU if relu; x's rows ld apart */
template <typename P>
__global__ void bn_apply_kernel(typename P::T *y, const typename P::T *x, BnAffine a, size_t rows,
                                int c, int ld, int relu)
{
    typedef typename P::T T;
    FOR_EACH(t, rows * c / P::V) {
        const unsigned i = t * P::V;
        const int ch = (int)(i % c);
        P in = load_pack<P>(x, at_ld(i, c, ld)), out;
#pragma unroll
        for (int k = 0; k < P::V; k++) {
            float v = bn_at(a, to_f(in.v[k]), ch + k);
            out.v[k] = from_f<T>(relu && !(v > 0.0f) ? 0.0f : v);
        }
        store_pack(y, i, out);
    }
}

/*
 * The block's combination, one pass (model.h):
 *   out = shortcut + alpha[img] * bn0(b0) + (1 - alpha[img]) * bn1(b1)
 * with bn_k as BnAffine a0, a1; shortcut = sc_in, or bn_sc(sc_in) for a
 * projection (sc.center not NULL); ReLU after the add
 * when relu (resnext). All (n, hw, c). With out_relu (resnet), also
 * max(out, 0) there: the next block's branch input.
 */
template <typename P>
__global__ void shake_combine_kernel(typename P::T *out, typename P::T *out_relu,
                                     const typename P::T *b0, const typename P::T *b1,
                                     BnAffine a0, BnAffine a1, const typename P::T *sc_in,
                                     BnAffine sc, const float *alpha, int n, int hw, int c,
                                     int relu)
{
    typedef typename P::T T;
    const size_t count = (size_t)n * hw * c;
    FOR_EACH(t, count / P::V) {
        const unsigned i = t * P::V;
        const int ch = (int)(i % c);
        const float a = alpha[i / (unsigned)(hw * c)];
        P x0 = load_pack<P>(b0, i), x1 = load_pack<P>(b1, i), xs = load_pack<P>(sc_in, i);
        P y, yr;
#pragma unroll
        for (int k = 0; k < P::V; k++) {
            float v0 = bn_at(a0, to_f(x0.v[k]), ch + k);
            float v1 = bn_at(a1, to_f(x1.v[k]), ch + k);
            float s = to_f(xs.v[k]);
            if (sc.center)
                s = bn_at(sc, s, ch + k);
            float v = s + (a * v0 + (1.0f - a) * v1);
            y.v[k] = from_f<T>(relu && !(v > 0.0f) ? 0.0f : v);
            yr.v[k] = from_f<T>(v > 0.0f ? v : 0.0f);
        }
        store_pack(out, i, y);
        if (out_relu)
            store_pack(out_relu, i, yr);
    }
}

/* element i of an (n, h, w, c) tensor: its channel, column, row and image */
struct Nhwc {
    int ch, x, y;
    unsigned img;
};

__device__ __forceinline__ Nhwc nhwc_at(unsigned i, int c, int h, int w)
{
    Nhwc p;
    p.ch = (int)(i % c);
    unsigned q = i / c;
    p.x = (int)(q % w);
    q /= w;
    p.y = (int)(q % h);
    p.img = q / h;
    return p;
}

/*
 * The resnet shortcut's inputs from r (n, h, w, c): p1 = pool_s(r) and
 * p2 = pool_s(shift(r)), (n, oh, ow, c); pooling with kernel 1 is
 * subsampling at (oh * s, ow * s). shift: SHIFT_ORIGINAL z[i][j] =
 * r[i-1][j-1], SHIFT_REIMPL z[i][j] = r[i+1][j+1], zero outside. The
 * elements of a pack are channels of one pixel, so they move together.
 */
template <typename P>
__global__ void pool_shift_kernel(typename P::T *p1, typename P::T *p2, const typename P::T *r,
                                  int n, int h, int w, int c, int s, int oh, int ow, int reimpl)
{
    typedef typename P::T T;
    const size_t count = (size_t)n * oh * ow * c;
    FOR_EACH(t, count / P::V) {
        const unsigned i = t * P::V;
        const Nhwc o = nhwc_at(i, c, oh, ow);
        const int sy = o.y * s, sx = o.x * s;
        const unsigned base = o.img * h * w * c + o.ch;
        store_pack(p1, i, load_pack<P>(r, base + ((unsigned)sy * w + sx) * c));
        const int zy = reimpl ? sy + 1 : sy - 1, zx = reimpl ? sx + 1 : sx - 1;
        P z;
        if (zy >= 0 && zy < h && zx >= 0 && zx < w)
            z = load_pack<P>(r, base + ((unsigned)zy * w + zx) * c);
        else
#pragma unroll
            for (int k = 0; k < P::V; k++)
                z.v[k] = from_f<T>(0.0f);
        store_pack(p2, i, z);
    }
}

/*
 * The input gradient of a resnet block with a projection shortcut, where x
 * (n, h, w, c) is the block's input and r = relu(x) what its branches and
 * shortcut read: dx = x > 0 ? dr + (pool_shift_kernel's gradient from dp1,
 * dp2 (n, oh, ow, c)) : 0, with dr the branches' share. The sum is rounded
 * to T before the mask, as it would be if stored between two passes.
 */
template <typename P>
__global__ void relu_backward_pool_kernel(typename P::T *dx, const typename P::T *dr,
                                          const typename P::T *dp1, const typename P::T *dp2,
                                          const typename P::T *xin, int n, int h, int w, int c,
                                          int s, int oh, int ow, int reimpl)
{
    typedef typename P::T T;
    const size_t count = (size_t)n * h * w * c;
    FOR_EACH(t, count / P::V) {
        const unsigned i = t * P::V;
        const Nhwc p = nhwc_at(i, c, h, w);
        const int x = p.x, y = p.y;
        const unsigned obase = p.img * oh * ow * c + p.ch;
        const P xs = load_pack<P>(xin, i), ds = load_pack<P>(dr, i);
        float g[P::V];
#pragma unroll
        for (int k = 0; k < P::V; k++)
            g[k] = to_f(ds.v[k]);
        if (y % s == 0 && x % s == 0 && y / s < oh && x / s < ow) {
            const P d1 = load_pack<P>(dp1, obase + ((unsigned)(y / s) * ow + x / s) * c);
#pragma unroll
            for (int k = 0; k < P::V; k++)
                g[k] += to_f(d1.v[k]);
        }
        /* r[y][x] is z[zy][zx] of the shifted map, sampled when on the grid */
        const int zy = reimpl ? y - 1 : y + 1, zx = reimpl ? x - 1 : x + 1;
        if (zy >= 0 && zy < h && zx >= 0 && zx < w && zy % s == 0 && zx % s == 0 &&
            zy / s < oh && zx / s < ow) {
            const P d2 = load_pack<P>(dp2, obase + ((unsigned)(zy / s) * ow + zx / s) * c);
#pragma unroll
            for (int k = 0; k < P::V; k++)
                g[k] += to_f(d2.v[k]);
        }
        P out;
#pragma unroll
        for (int k = 0; k < P::V; k++) {
            const float v = to_f(from_f<T>(g[k]));
            out.v[k] = from_f<T>(to_f(xs.v[k]) > 0.0f ? v : 0.0f);
        }
        store_pack(dx, i, out);
    }
}

/* cat (rows, ca + cb) = [a (rows, ca), b (rows, cb)]; packs where ca and cb
 * are multiples of V (none straddles the two) */
template <typename P>
__global__ void concat_kernel(typename P::T *cat, const typename P::T *a,
                              const typename P::T *b, size_t rows, int ca, int cb)
{
    const int c = ca + cb;
    FOR_EACH(t, rows * c / P::V) {
        const unsigned i = t * P::V;
        const unsigned row = i / c;
        const int ch = (int)(i % c);
        store_pack(cat, i, ch < ca ? load_pack<P>(a, row * ca + ch)
                                   : load_pack<P>(b, row * cb + (ch - ca)));
    }
}

/* the split: da = dcat[:, :ca], db = dcat[:, ca:] */
template <typename P>
__global__ void split_kernel(typename P::T *da, typename P::T *db, const typename P::T *dcat,
                             size_t rows, int ca, int cb)
{
    const int c = ca + cb;
    FOR_EACH(t, rows * c / P::V) {
        const unsigned i = t * P::V;
        const unsigned row = i / c;
        const int ch = (int)(i % c);
        if (ch < ca)
            store_pack(da, row * ca + ch, load_pack<P>(dcat, i));
        else
            store_pack(db, row * cb + (ch - ca), load_pack<P>(dcat, i));
    }
}

/* the input gradient of a resnet block with an identity shortcut:
 * dx = (x > 0 ? dr : 0) + g */
template <typename P>
__global__ void relu_backward_add_kernel(typename P::T *dx, const typename P::T *dr,
                                         const typename P::T *x, const typename P::T *g,
                                         size_t count)
{
    typedef typename P::T T;
    FOR_EACH(t, count / P::V) {
        const unsigned i = t * P::V;
        P xs = load_pack<P>(x, i), ds = load_pack<P>(dr, i), gs = load_pack<P>(g, i), y;
#pragma unroll
        for (int k = 0; k < P::V; k++) {
            float v = to_f(xs.v[k]) > 0.0f ? to_f(ds.v[k]) : 0.0f;
            v += to_f(gs.v[k]);
            y.v[k] = from_f<T>(v);
        }
        store_pack(dx, i, y);
    }
}

/* resnext identity shortcut: dx += g where out > 0 */
template <typename T>
__global__ void add_masked_kernel(T *dx, const T *g, const T *out, size_t count)
{
    FOR_EACH(i, count) {
        if (to_f(out[i]) > 0.0f)
            dx[i] = from_f<T>(to_f(dx[i]) + to_f(g[i]));
    }
}

/* pooled (n, c) = mean over hw of h (n, hw, c), ReLU first if relu */
template <typename T>
__global__ void head_pool_kernel(float *pooled, const T *h, int n, int hw, int c, int relu)
{
    FOR_EACH(i, (size_t)n * c) {
        int ch = (int)(i % c);
        unsigned img = i / c;
        const T *p = h + img * hw * c + ch;
        float sum = 0.0f;
        for (int k = 0; k < hw; k++) {
            float v = to_f(p[(size_t)k * c]);
            sum += relu && !(v > 0.0f) ? 0.0f : v;
        }
        pooled[i] = sum / (float)hw;
    }
}

/* g (n, hw, c) = dpooled[n, c] / hw, masked by h > 0 if relu */
template <typename T>
__global__ void head_pool_backward_kernel(T *g, const float *dpooled, const T *h, int n, int hw,
                                          int c, int relu)
{
    const size_t count = (size_t)n * hw * c;
    FOR_EACH(i, count) {
        int ch = (int)(i % c);
        unsigned img = i / (unsigned)(hw * c);
        float v = dpooled[img * c + ch] / (float)hw;
        if (relu && !(to_f(h[i]) > 0.0f))
            v = 0.0f;
        g[i] = from_f<T>(v);
    }
}

__global__ void bias_add_kernel(float *y, const float *b, int n, int k)
{
    FOR_EACH(i, (size_t)n * k) y[i] += b[i % k];
}

/* db[j] = sum over rows of dy (n, k) */
__global__ void column_sum_kernel(float *db, const float *dy, int n, int k)
{
    FOR_EACH(j, (size_t)k) {
        float s = 0.0f;
        for (int i = 0; i < n; i++)
            s += dy[(size_t)i * k + j];
        db[j] = s;
    }
}

/*
 * train.c's softmax_xent on the device, one thread per image: dlogits =
 * (softmax - onehot) / n; the loss and the misclassified count accumulate
 * into acc (loss sum, wrong, first step whose loss is not finite).
 */
struct StepAcc {
    double loss;
    unsigned long long wrong;
    unsigned long long bad_step;    /* ~0: none */
};

__global__ void xent_kernel(float *dlogits, StepAcc *acc, const float *logits, const int *labels,
                            int n, int classes, const StepVars *v)
{
    FOR_EACH(i, (size_t)n) {
        const float *z = logits + i * classes;
        int arg = 0;
        float zmax = z[0];
        for (int c = 1; c < classes; c++)
            if (z[c] > zmax) {
                zmax = z[c];
                arg = c;
            }
        double sum = 0.0;
        for (int c = 0; c < classes; c++)
            sum += exp((double)z[c] - zmax);
        double logsum = log(sum) + zmax;
        const int y = labels[i];
        double loss = logsum - z[y];
        float *d = dlogits + i * classes;
        for (int c = 0; c < classes; c++)
            d[c] = (float)((exp((double)z[c] - logsum) - (c == y)) / n);
        atomicAdd(&acc->loss, loss);
        if (arg != y)
            atomicAdd(&acc->wrong, 1ull);
        if (!isfinite(loss))
            atomicMin(&acc->bad_step, (unsigned long long)v->step);
    }
}

/* optim.h's SGD with Nesterov momentum */
__global__ void sgd_kernel(float *p, float *mom, const float *g, size_t count, float lr,
                           float momentum, float wd, const StepVars *v)
{
    if (v)
        lr = v->lr;
    FOR_EACH(i, count) {
        float gi = g[i] + wd * p[i];
        float buf = momentum * mom[i] + gi;
        mom[i] = buf;
        p[i] -= lr * (gi + momentum * buf);
    }
}

/* Where each conv's weights are: element offsets in the compute-type
 * slots (Wc, Gc) and in the float arenas (P, G), how many, and where they
 * start when all convs' weights are counted one after another (start). */
struct ConvSeg {
    unsigned slot, w, count, start;
};

/*
 * every conv's weights into its slot (to_slots) or its filter gradient out
 * of it: one launch over the total weights of the nsegs convs, element i of
 * the conv whose [start, start + count) holds it (the last whose start is
 * at most i, found by bisection). (A grid of (largest conv, convs) blocks
 * left most blocks idle: 22 us a call on an H200 for 26 2x32d's 2.9M weights.)
 */
template <typename T>
__global__ void slots_kernel(T *slots, float *arena, const ConvSeg *segs, int nsegs,
                             unsigned total, int to_slots)
{
    FOR_EACH(i, total) {
        int lo = 0, hi = nsegs - 1;
        while (lo < hi) {
            const int mid = (lo + hi + 1) / 2;
            if (segs[mid].start <= i)
                lo = mid;
            else
                hi = mid - 1;
        }
        const ConvSeg sg = segs[lo];
        const unsigned k = i - sg.start;
        if (to_slots)
            slots[sg.slot + k] = from_f<T>(arena[sg.w + k]);
        else
            arena[sg.w + k] = to_f(slots[sg.slot + k]);
    }
}

__global__ void fill_kernel(float *x, float v, size_t count)
{
    FOR_EACH(i, count) x[i] = v;
}

/* ---- random draws: the very functions of core/shake.c and core/data.c ---- */


/* alpha, beta (nblocks, n): shake.c's shake_draw */
__global__ void shake_draw_kernel(float *alpha, float *beta, int nblocks, int n, uint64_t seed,
                                  uint32_t step, int fwd, int bwd, int level, const StepVars *v)
{
    if (v)
        step = v->step;
    FOR_EACH(i, (size_t)nblocks * n) {
        int b = (int)(i / n), img = (int)(i % n);
        uint32_t key = level == 0 ? 0u : (uint32_t)img;   /* LEVEL_BATCH: image 0's */
        float a = fwd == 0 ? 0.5f : rng_uniform(seed, RNG_SHAKE_FWD, step, (uint32_t)b, key);
        float be = bwd == 2   ? a
                   : bwd == 0 ? 0.5f
                              : rng_uniform(seed, RNG_SHAKE_BWD, step, (uint32_t)b, key);
        alpha[i] = a;
        beta[i] = be;
    }
}

/*
 * data.c's data_batch: image j of the batch is dataset image idx[j],
 * normalized per channel, flipped and cropped from Philox (seed,
 * RNG_AUGMENT, epoch, idx[j]). Output (count, c, h, w) float when nchw,
 * else (count, h, w, c) in T. With v, idx and epoch come from the step's
 * variables (idx + v->offset).
 */
#define CROP_PAD 4
struct Norm {
    float mean[3], std[3];      /* per channel, 0..255 scale, as Dataset */
};
template <typename T>
__global__ void data_batch_kernel(T *out, int *labels, const uint8_t *pixels,
                                  const uint8_t *src_labels, const int *idx, int count, int c,
                                  int h, int w, Norm nm, int flip_ok, uint64_t seed, int epoch,
                                  int augment, int nchw, const StepVars *v)
{
    if (v) {
        idx += v->offset;
        epoch = v->epoch;
    }
    const size_t total = (size_t)count * c * h * w;
    FOR_EACH(i, total) {
        int j, ch, y, x;
        if (nchw) {
            x = (int)(i % w);
            y = (int)(i / w % h);
            ch = (int)(i / (unsigned)(w * h) % c);
            j = (int)(i / (unsigned)(w * h * c));
        } else {
            ch = (int)(i % c);
            x = (int)(i / c % w);
            y = (int)(i / (unsigned)(c * w) % h);
            j = (int)(i / (unsigned)(c * w * h));
        }
        const int img = idx[j];
        int flip = 0, dx = CROP_PAD, dy = CROP_PAD;
        if (augment) {
            Philox4 r = philox4x32(seed, RNG_AUGMENT, (uint32_t)epoch, (uint32_t)img, 0);
            flip = flip_ok && (r.v[0] >> 31);
            dx = (int)(((uint64_t)r.v[1] * (2 * CROP_PAD + 1)) >> 32);
            dy = (int)(((uint64_t)r.v[2] * (2 * CROP_PAD + 1)) >> 32);
        }
        int sy = y + dy - CROP_PAD, sx = x + dx - CROP_PAD;
        float v = 0.0f;
        if (sy >= 0 && sy < h && sx >= 0 && sx < w) {
            if (flip)
                sx = w - 1 - sx;
            uint8_t p = pixels[(((size_t)img * c + ch) * h + sy) * w + sx];
            v = ((float)p - nm.mean[ch]) / nm.std[ch];
        }
        out[i] = from_f<T>(v);
        if (ch == 0 && y == 0 && x == 0)
            labels[j] = src_labels[img];
    }
}

/* ---- batch norm ---- */

/* Partial sums per (chunk, channel) in double: forward (sum x, sum x^2),
 * backward (sum dy, sum dy * (x - mean)). Grid (ceil(c / 32), chunks),
 * block (32, 8). */
enum { BN_TX = 32, BN_TY = 8, BN_MAX_CHUNKS = 512 };

/*
 * The sums below walk their rows (or chunks) BN_UNROLL at a time: the loads
 * of all BN_UNROLL first, then the additions, in the same order as one at a
 * time, so the sums are the same to the bit. A loop that loads one row and
 * adds it before loading the next (nvcc unrolls none of these loops) waits
 * for memory once a row, 8 to 32 times in a call in 26 2x32d's first stage.
 * The H200 profile had the partial sums at 5 and 12 us a call on average
 * (forward, backward), for reads that its bandwidth allows in 1 to 5 us.
 */
enum { BN_UNROLL = 4 };

/* Where a batch norm's output gradient comes from (see the top comment):
 * dy = d[i], zero where m[i] <= 0 (if m), times coef[img] or 1 - coef[img]
 * (if coef). */
template <typename T> struct DySource {
    const T *d;
    const T *m;
    const float *coef;
    int one_minus;
    int hw;
};

/* The output gradients of elements i..i+V-1 (V = P::V, one row): dy as
 * DySource describes it. */
template <typename P>
__device__ __forceinline__ void dy_pack(float *g, const DySource<typename P::T> &s, unsigned row,
                                        unsigned i)
{
    const P d = load_pack<P>(s.d, i);
    P mk;
    if (s.m)
        mk = load_pack<P>(s.m, i);
    float f = 1.0f;
    if (s.coef) {
        float k = s.coef[row / (unsigned)s.hw];
        f = s.one_minus ? 1.0f - k : k;
    }
#pragma unroll
    for (int k = 0; k < P::V; k++) {
        float v = to_f(d.v[k]);
        if (s.m && !(to_f(mk.v[k]) > 0.0f))
            v = 0.0f;
        if (s.coef)
            v *= f;
        g[k] = v;
    }
}

template <typename T>
__global__ void bn_stats_partial_kernel(double *part, const T *x, size_t rows, int c, int ld,
                                        int chunks)
{
    __shared__ double s1[BN_TY][BN_TX], s2[BN_TY][BN_TX];
    EMU_SHARED(s1);
    EMU_SHARED(s2);
    const int ch = blockIdx.x * BN_TX + threadIdx.x;
    const size_t per = (rows + chunks - 1) / chunks;
    const size_t r0 = blockIdx.y * per, r1 = r0 + per < rows ? r0 + per : rows;
    double a = 0.0, b = 0.0;
    if (ch < c)
        for (size_t r = r0 + threadIdx.y; r < r1; r += BN_UNROLL * BN_TY) {
            float v[BN_UNROLL];
#pragma unroll
            for (int u = 0; u < BN_UNROLL; u++)
                if (r + u * BN_TY < r1)
                    v[u] = to_f(x[(r + u * BN_TY) * ld + ch]);
#pragma unroll
            for (int u = 0; u < BN_UNROLL; u++)
                if (r + u * BN_TY < r1) {
                    double d = v[u];
                    a += d;
                    b += d * d;
                }
        }
    s1[threadIdx.y][threadIdx.x] = a;
    s2[threadIdx.y][threadIdx.x] = b;
    __syncthreads();
    if (threadIdx.y == 0 && ch < c) {
        for (int k = 1; k < BN_TY; k++) {
            a += s1[k][threadIdx.x];
            b += s2[k][threadIdx.x];
        }
        part[(size_t)blockIdx.y * 2 * c + ch] = a;
        part[(size_t)blockIdx.y * 2 * c + c + ch] = b;
    }
}

template <typename T>
__global__ void bn_grad_partial_kernel(double *part, DySource<T> src, const T *x,
                                       const float *mean, size_t rows, int c, int ld, int chunks)
{
    __shared__ double s1[BN_TY][BN_TX], s2[BN_TY][BN_TX];
    EMU_SHARED(s1);
    EMU_SHARED(s2);
    const int ch = blockIdx.x * BN_TX + threadIdx.x;
    const size_t per = (rows + chunks - 1) / chunks;
    const size_t r0 = blockIdx.y * per, r1 = r0 + per < rows ? r0 + per : rows;
    double a = 0.0, b = 0.0;
    if (ch < c) {
        const float mu = mean[ch];
        for (size_t r = r0 + threadIdx.y; r < r1; r += BN_UNROLL * BN_TY) {
            float gv[BN_UNROLL], xv[BN_UNROLL];
#pragma unroll
            for (int u = 0; u < BN_UNROLL; u++) {
                const size_t ru = r + u * BN_TY;
                if (ru < r1) {
                    dy_pack<Pack<T, 1>>(&gv[u], src, (unsigned)ru, (unsigned)(ru * c + ch));
                    xv[u] = to_f(x[ru * ld + ch]);
                }
            }
#pragma unroll
            for (int u = 0; u < BN_UNROLL; u++)
                if (r + u * BN_TY < r1) {
                    double g = gv[u];
                    a += g;
                    b += g * (double)(xv[u] - mu);
                }
        }
    }
    s1[threadIdx.y][threadIdx.x] = a;
    s2[threadIdx.y][threadIdx.x] = b;
    __syncthreads();
    if (threadIdx.y == 0 && ch < c) {
        for (int k = 1; k < BN_TY; k++) {
            a += s1[k][threadIdx.x];
            b += s2[k][threadIdx.x];
        }
        part[(size_t)blockIdx.y * 2 * c + ch] = a;
        part[(size_t)blockIdx.y * 2 * c + c + ch] = b;
    }
}

/*
 * The backward partial sums (bn_grad_partial_kernel's), V = P::V channels
 * a thread (16-byte loads), for c a multiple of V with c / V <= 256
 * channel packs: grid (chunks), block (G * R) with G = c / V packs of a
 * row side by side and R rows at a time. Thread (g, r) sums rows r, r + R,
 * ... of its chunk in double; then thread (g, 0) adds the R sums of its
 * pack in row order: a fixed order, so the result repeats exactly.
 * (Measured on an H200, such a kernel pays for the three tensors the
 * backward reads, 12 against 15 us a call at 26 2x32d; for the forward's
 * one it took twice bn_stats_partial_kernel's time, which stays.)
 */
enum { BN_PACK_THREADS = 256, BN_PACK_ROWS = 32 };

template <typename P>
__global__ void bn_grad_packed_kernel(double *part, DySource<typename P::T> src,
                                      const typename P::T *x, const float *mean, size_t rows,
                                      int c, int ld, int chunks)
{
    enum { V = P::V };
    __shared__ double sh[BN_PACK_THREADS * 2 * V];
    EMU_SHARED(sh);
    const int G = c / V, R = blockDim.x / G;
    const int t = threadIdx.x, g = t % G, r0 = t / G;
    const size_t per = (rows + chunks - 1) / chunks;
    const size_t b0 = blockIdx.x * per, b1 = b0 + per < rows ? b0 + per : rows;
    double a[V], b[V];
    float mu[V];
#pragma unroll
    for (int k = 0; k < V; k++) {
        a[k] = b[k] = 0.0;
        mu[k] = mean[g * V + k];
    }
    for (size_t r = b0 + r0; r < b1; r += (size_t)BN_UNROLL * R) {
        P xv[BN_UNROLL];
        float gv[BN_UNROLL][V];
#pragma unroll
        for (int u = 0; u < BN_UNROLL; u++) {
            const unsigned ru = (unsigned)(r + (size_t)u * R);
            if (ru < b1) {
                xv[u] = load_pack<P>(x, ru * ld + g * V);
                dy_pack<P>(gv[u], src, ru, ru * c + g * V);
            }
        }
#pragma unroll
        for (int u = 0; u < BN_UNROLL; u++)
            if (r + (size_t)u * R < b1)
#pragma unroll
                for (int k = 0; k < V; k++) {
                    double gd = gv[u][k];
                    a[k] += gd;
                    b[k] += gd * (double)(to_f(xv[u].v[k]) - mu[k]);
                }
    }
#pragma unroll
    for (int k = 0; k < V; k++) {
        sh[t * 2 * V + k] = a[k];
        sh[t * 2 * V + V + k] = b[k];
    }
    __syncthreads();
    if (r0 != 0)
        return;
    /* thread (g, 0) adds rows 1..R-1's sums of its pack to its own */
    for (int rr = 1; rr < R; rr++) {
        const double *o = sh + (rr * G + g) * 2 * V;
#pragma unroll
        for (int k = 0; k < V; k++) {
            a[k] += o[k];
            b[k] += o[V + k];
        }
    }
    double *out = part + (size_t)blockIdx.x * 2 * c + g * V;
#pragma unroll
    for (int k = 0; k < V; k++) {
        out[k] = a[k];
        out[c + k] = b[k];
    }
}

/*
 * Batch statistics from the partials: mean, rstd (saved for backward),
 * scale for the forward, and the running update with the unbiased
 * variance (model.h's BN_MOMENTUM and BN_EPS).
 */
/*
 * The partials of 32 channels summed by a block of (32, BN_FY) threads:
 * thread (x, y) takes chunks y, y + BN_FY, ..., then thread (x, 0) adds the
 * BN_FY sums in order -- a fixed order, so the result repeats exactly, and
 * no thread walks all the chunks alone (up to 512 dependent loads). Leaves
 * the totals in *a and *b of thread (x, 0); returns whether it is that
 * thread of a channel that exists. BN_FINAL_UNROLL chunks' loads at a time
 * (as BN_UNROLL above, the same sums to the bit): 512 chunks in two rounds
 * of waiting for memory, not four; the kernels' launch bounds keep them
 * within the 64 registers a thread that a 1024-thread block allows (nvcc
 * 13 gives them 64 for sm_90, 56 for sm_80, no spills).
 */
enum { BN_FY = 32, BN_FINAL_UNROLL = 8 };

__device__ __forceinline__ bool bn_chunk_sums(double *a, double *b, const double *part,
                                              int chunks, int c)
{
    __shared__ double s1[BN_FY][BN_TX], s2[BN_FY][BN_TX];
    EMU_SHARED(s1);
    EMU_SHARED(s2);
    const int ch = blockIdx.x * BN_TX + threadIdx.x;
    double x = 0.0, y = 0.0;
    if (ch < c)
        for (int k = threadIdx.y; k < chunks; k += BN_FINAL_UNROLL * BN_FY) {
            double px[BN_FINAL_UNROLL], py[BN_FINAL_UNROLL];
#pragma unroll
            for (int u = 0; u < BN_FINAL_UNROLL; u++)
                if (k + u * BN_FY < chunks) {
                    px[u] = part[(size_t)(k + u * BN_FY) * 2 * c + ch];
                    py[u] = part[(size_t)(k + u * BN_FY) * 2 * c + c + ch];
                }
#pragma unroll
            for (int u = 0; u < BN_FINAL_UNROLL; u++)
                if (k + u * BN_FY < chunks) {
                    x += px[u];
                    y += py[u];
                }
        }
    s1[threadIdx.y][threadIdx.x] = x;
    s2[threadIdx.y][threadIdx.x] = y;
    __syncthreads();
    if (threadIdx.y != 0 || ch >= c)
        return false;
    for (int k = 1; k < BN_FY; k++) {
        x += s1[k][threadIdx.x];
        y += s2[k][threadIdx.x];
    }
    *a = x;
    *b = y;
    return true;
}

__global__ void __launch_bounds__(BN_TX * BN_FY)
    bn_stats_final_kernel(float *mean, float *rstd, float *scale, float *run_mean,
                          float *run_var, const double *part, int chunks, int c, double count,
                          const float *gamma)
{
    double a, b;
    if (bn_chunk_sums(&a, &b, part, chunks, c)) {
        const int ch = blockIdx.x * BN_TX + threadIdx.x;
        double mu = a / count;
        double var = b / count - mu * mu;
        if (var < 0.0)
            var = 0.0;
        float m = (float)mu, v = (float)var;
        float rs = 1.0f / sqrtf(v + BN_EPS);
        mean[ch] = m;
        rstd[ch] = rs;
        scale[ch] = gamma[ch] * rs;
        float unbiased = count > 1.0 ? (float)(var * count / (count - 1.0)) : v;
        run_mean[ch] = (1.0f - BN_MOMENTUM) * run_mean[ch] + BN_MOMENTUM * m;
        run_var[ch] = (1.0f - BN_MOMENTUM) * run_var[ch] + BN_MOMENTUM * unbiased;
    }
}

/*
 * Evaluation: every batch norm's scale from its running variance (centered
 * on the running mean), in one launch at the start of the forward pass,
 * block i the i-th batch norm's; they depend on nothing the pass computes,
 * and one launch a batch norm put some 50 on a 26-layer evaluation's
 * longest chain of launches (bench/graph_census.c).
 */
struct BnEvalSeg {
    float *scale;
    unsigned gamma, var, c;     /* params and state offsets, channels */
};

__global__ void bn_eval_kernel(const BnEvalSeg *segs, const float *P, const float *S)
{
    const BnEvalSeg sg = segs[blockIdx.x];
    for (unsigned ch = threadIdx.x; ch < sg.c; ch += blockDim.x)
        sg.scale[ch] = P[sg.gamma + ch] / sqrtf(S[sg.var + ch] + BN_EPS);
}

/*
 * dgamma = sum dy * xhat, dbeta = sum dy (overwritten), and the
 * coefficients of dx = k1 * dy + k2 * (x - mean) + k3:
 * dx = gamma * rstd * (dy - sum dy / M - xhat * sum(dy * xhat) / M).
 */
__global__ void __launch_bounds__(BN_TX * BN_FY)
    bn_grad_final_kernel(float *k1, float *k2, float *k3, float *dgamma, float *dbeta,
                         const double *part, int chunks, int c, double count,
                         const float *rstd, const float *gamma)
{
    double sdy, sdx;                /* sum dy, sum dy * (x - mean) */
    if (bn_chunk_sums(&sdy, &sdx, part, chunks, c)) {
        const int ch = blockIdx.x * BN_TX + threadIdx.x;
        double rs = rstd[ch], gm = gamma[ch];
        dgamma[ch] = (float)(sdx * rs);
        dbeta[ch] = (float)sdy;
        k1[ch] = (float)(gm * rs);
        k2[ch] = (float)(-gm * rs * rs * rs * sdx / count);
        k3[ch] = (float)(-gm * rs * sdy / count);
    }
}

template <typename P>
__global__ void bn_grad_apply_kernel(typename P::T *dx, DySource<typename P::T> src,
                                     const typename P::T *x, const float *mean, const float *k1,
                                     const float *k2, const float *k3, size_t rows, int c, int ld)
{
    typedef typename P::T T;
    FOR_EACH(t, rows * c / P::V) {
        const unsigned i = t * P::V;
        const int ch = (int)(i % c);
        const unsigned il = at_ld(i, c, ld);    /* x's and dx's element */
        const P xs = load_pack<P>(x, il);
        P y;
        float g[P::V];
        dy_pack<P>(g, src, i / c, i);
#pragma unroll
        for (int k = 0; k < P::V; k++) {
            const int cc = ch + k;
            y.v[k] = from_f<T>(k1[cc] * g[k] + k2[cc] * (to_f(xs.v[k]) - mean[cc]) + k3[cc]);
        }
        store_pack(dx, il, y);
    }
}

/* ---- the backend ---- */

/* cuDNN algorithm candidates for one direction of one convolution; the
 * batch sizes a convolution keeps them for */
enum { MAX_ALGOS = 8, PLANS = 4 };
typedef struct {
    int algo[MAX_ALGOS];
    cudnnMathType_t math[MAX_ALGOS];
    size_t ws[MAX_ALGOS];
    int count, cur;             /* cur: the one in use */
} AlgoList;

typedef struct {
    const ConvDesc *d;
    cudnnTensorDescriptor_t x, y;
    cudnnFilterDescriptor_t w;
    cudnnConvolutionDescriptor_t conv;
    AlgoList fwd, bwd_data, bwd_filter;
    int lane;                   /* the lane it runs on: handle and workspace */
    int wlane;                  /* the lane of its filter gradient */
    int n;                      /* batch the descriptors and algorithms are for; 0: none */
    size_t slot;                /* element offset of its weights in Wc and Gc */
    int idle;                   /* never runs: its block's merged conv does its work */
    /* the algorithms of the last few batch sizes: training's full and last
     * batches and evaluation's alternate every epoch, and cuDNN's
     * heuristics take long enough to show in an epoch's time */
    struct {
        int n;
        AlgoList fwd, bwd_data, bwd_filter;
    } plans[PLANS];
    int plan_next;              /* the slot the next new batch size takes */
} Conv;

static size_t conv_weights(const ConvDesc *d)
{
    return (size_t)d->cout * (d->cin / d->groups) * d->k * d->k;
}

typedef struct {
    const BnDesc *d;
    int lane;                   /* the lane its kernels run on */
    int ld;                     /* elements between rows of its input and input gradient */
    float *mean, *rstd;         /* batch statistics, saved for backward (c) */
    float *scale;               /* gamma * rstd, batch or running (c) */
    int train;                  /* what the last bn_forward computed */
} Bn;

typedef struct {
    void *r;                    /* resnet: relu(x), (n, ih, iw, cin) */
    void *c[2][3];              /* conv outputs = batch-norm inputs */
    void *act[2][2];            /* relu(bn(c[k][j])): inputs of conv[k][j+1] */
    void *p1, *p2;              /* resnet projection: pool_s(r), pool_s(shift(r)) */
    void *cat;                  /* the shortcut batch norm's input */
    void *out;                  /* the block's output (n, oh, ow, cout) */
    Conv conv[2][3], sc[2];
    Bn bn[2][3], sc_bn;
    /* merged: both branches' first convolutions as one (mconv, cout 2c:
     * branch 0's filters, then branch 1's, adjacent in Wc and Gc), into
     * one (rows, 2c) tensor of which c[0][0] and c[1][0] are the halves */
    int merged;
    ConvDesc mdesc;
    Conv mconv;
} Blk;

/*
 * A lane: a stream and what work queued on it needs to itself. The two
 * branches of a block are independent until their combination, so branch 1
 * runs on lane 1 while branch 0 runs on lane 0 (the main stream), forked
 * from it and joined back with events (lane_wait); in a captured graph
 * they are parallel paths. The layers of the later stages are too small to
 * fill a large GPU alone; two at a time fill more of it. With three lanes,
 * a projection shortcut (pooling, its convolutions, its batch norm) runs on
 * lane 2 beside them, forward and backward. With four, each branch's
 * filter gradients also leave its chain for a side lane (lane 2 for lane 0,
 * after any shortcut work queued there; lane 3 for lane 1): nothing in the
 * backward waits for them but the end, where the update needs them, and a
 * batch norm's backward that is about to overwrite the dc buffer one of
 * them reads (two buffers a branch lane take turns). Each lane has its own
 * cuDNN handle, workspace and scratch, so nothing is shared while they run;
 * the results are the same bit for bit whatever the number of lanes
 * (SHAKE_CUDA_STREAMS=1 to 4; 1 keeps everything on lane 0).
 */
typedef struct {
    cudaStream_t stream;
    cudnnHandle_t dnn;          /* bound to stream */
    void *ws;                   /* cuDNN workspace */
    size_t ws_size;
    /* a branch or shortcut lane's scratch (lanes 0 to 2; dact: 0 and 1) */
    double *part;               /* batch-norm partial sums */
    float *k1, *k2, *k3;        /* batch-norm backward coefficients (max channels) */
    void *dc[2], *dact;         /* backward scratch, max_act elements each (dc[1]: four lanes) */
    int dc_next;                /* the dc the next batch-norm backward takes */
    int dc_read[2];             /* a filter gradient on the side lane reads dc[i], done at dc_free[i] */
    int mdc_read;               /* a merged filter gradient on a side lane reads be->mdc,
                                   done at be->mdc_free (branch lanes, three or four lanes) */
    cudaEvent_t mark;           /* recorded where another lane waits for this one */
    cudaEvent_t dc_free[2];
} Lane;

/* the lanes that run branches: lanes 0 and 1, or 0 alone */
#define BRANCH_LANES(be) ((be)->nlanes < 2 ? 1 : 2)
/* the lane of the projection shortcuts: 2 with three lanes or more, else 0 */
#define SC_LANE(be) ((be)->nlanes < 3 ? 0 : 2)
/* the lanes with batch-norm scratch and a dc: those that run branches or shortcuts */
#define SCRATCH_LANES(be) ((be)->nlanes < 3 ? BRANCH_LANES(be) : 3)

/* pinned slots for the steps' variables: a slot is reused once its copy is done */
enum { VARS_RING = 64 };

struct Backend {
    const Model *m;
    int max_batch, device, use_bf16;
    size_t esize;               /* bytes per activation element */
    cudaStream_t stream;        /* the main stream, lane[0]'s */
    Lane lane[4];
    int nlanes;                 /* SHAKE_CUDA_STREAMS: 1, 2, 3 (the default) or 4 */
    cublasHandle_t blas;
    cudnnDataType_t dtype;
    float *P, *G, *M, *S;       /* params, grads, momentum (nparams); state (nstate) */
    /* what cuDNN reads and writes: each conv's weights and filter gradient
     * in the compute type, in 256-byte aligned slots (the float arenas'
     * offsets are only 4-byte aligned) */
    void *Wc, *Gc;
    ConvSeg *segs;              /* (nconvs) where each conv's weights are */
    BnEvalSeg *bn_evals;        /* (nbns) every batch norm, for bn_eval_kernel */
    int nbns;
    size_t seg_total;           /* the weights of all convs (segs[].count summed) */
    float *bn_arena;
    float *x_stage;             /* host images, NCHW float */
    void *xin;                  /* the images, NHWC */
    Conv stem_conv;
    Bn stem_bn;
    void *stem_c, *stem_out;
    Blk *blk;
    float *pooled, *dpooled, *logits, *dlogits;
    float *alpha, *beta, *half;
    /* backward scratch, each max_act elements (and each lane's dc, dact) */
    void *g[2], *dr, *dp1, *dp2, *s0, *s1;
    size_t max_act;
    int max_c;
    int nconvs;                 /* convs[0..nconvs): every conv, for algorithms and destroy */
    int nweighted;              /* convs[0..nweighted): those with weights of their own */
    Conv **convs;
    /* SHAKE_CUDA_MERGE (default 1): a block's two first convolutions, of
     * the same input, run as one (Blk.merged); mdc: the (rows, 2c) output
     * gradient of such a merged convolution */
    int merge;
    void *mdc;
    size_t mdc_count;
    cudaEvent_t mdc_free;       /* 3-4 lanes: the last merged filter gradient has read mdc */
    void *act_arena;
    /* set_data: the data sets' bytes and labels; batch: its indices */
    uint8_t *pixels[2];
    int data_n[2];
    Norm norm[2];
    int flip[2];
    int *idx;                   /* (2, max_batch): batch indices, then the batch's labels */
    int batch_n;                /* images batch() put in xin; 0: none */
    /* train_step: the epoch order, the step's variables and sums, the graph */
    int *order;
    int order_cap, order_epoch, order_n;
    const int *order_src;
    StepVars *vars;             /* device: what the step's kernels read */
    StepVars *vars_ring;        /* pinned host slots the copies come from */
    cudaEvent_t vars_done[VARS_RING];
    unsigned vars_next;
    StepAcc *acc;
    void *blas_ws;
    int use_graphs, require_graphs, warm;
    int verbose;                /* SHAKE_CUDA_VERBOSE=1: algorithm choices on stderr */
    int bn_max_chunks;          /* batch-norm partial sums per channel, at most */
    /* SHAKE_CUDA_FIND=1: cuDNN times the candidates (its Find), on scratch
     * input, output and weights and a workspace of WS_CAP, made when a
     * search needs them and given back after it (find_scratch_free) */
    int find;
    void *find_x, *find_y, *find_w, *find_ws;
    /* BackendOptions.algo_record: the algorithms picked, kept in a file so
     * that a run resumed in another process uses the same (NULL: none);
     * what the record's entries are keyed by on this machine */
    AlgoRecord *rec;
    int rec_failed;             /* a save failed (said once) */
    char rec_gpu[300], rec_library[40];
    int sms;                    /* the GPU's multiprocessors */
    size_t gpu_bytes;           /* and memory */
    long graph_launches;
    cudaGraphExec_t graph;
    TrainStep graph_key;        /* the constants the graph was captured with */
    /* evaluation's forward of a full batch on xin, captured once warm */
    cudaGraphExec_t eval_graph;
    int eval_warm;
    int train_n;
    char what[160];             /* the configuration, for out-of-memory messages */
};

/* ---- allocation ---- */

static int dev_alloc(Backend *be, void **p, size_t bytes, const char *what, Err *e)
{
    *p = NULL;
    if (bytes == 0)
        return 0;
    cudaError_t st = cudaMalloc(p, bytes);
    if (st == cudaErrorMemoryAllocation) {
        cudaGetLastError();     /* clear it */
        size_t free_b = 0, total_b = 0;
        cudaMemGetInfo(&free_b, &total_b);
        return err_set(e, "out of GPU memory: %.1f MB for %s with %.1f MB free of %.1f MB "
                          "(%s); try a smaller batch or precision=bf16",
                       bytes / 1048576.0, what, free_b / 1048576.0, total_b / 1048576.0,
                       be->what);
    }
    if (st != cudaSuccess)
        return err_set(e, "cudaMalloc of %.1f MB for %s: %s", bytes / 1048576.0, what,
                       cudaGetErrorString(st));
    return 0;
}

/* h (bytes, made on the host with malloc) into a new device buffer *p;
 * frees h either way */
static int dev_upload(Backend *be, void **p, void *h, size_t bytes, const char *what, Err *e)
{
    int rc = dev_alloc(be, p, bytes, what, e);
    cudaError_t st = rc ? cudaSuccess : cudaMemcpy(*p, h, bytes, cudaMemcpyHostToDevice);
    free(h);
    if (rc)
        return -1;
    CK(st);
    return 0;
}

/* Pieces of one allocation, in two passes as in ref.c: count, then place. */
typedef struct {
    char *base;
    size_t used;
} Carver;

static void *carve(Carver *cv, size_t bytes)
{
    void *p = cv->base ? cv->base + cv->used : NULL;
    cv->used += (bytes + 255) / 256 * 256;
    return p;
}

static size_t conv_out_count(const ConvDesc *c, int n)
{
    return (size_t)n * c->cout * c->oh * c->ow;
}

static void layout_acts(Backend *be, Carver *cv)
{
    const Model *m = be->m;
    const int N = be->max_batch;
    const size_t E = be->esize;
    const int resnet = m->spec.arch == ARCH_RESNET;
    be->xin = carve(cv, (size_t)N * m->spec.in_c * m->spec.in_h * m->spec.in_w * E);
    be->stem_c = carve(cv, conv_out_count(&m->stem_conv, N) * E);
    be->stem_out = carve(cv, conv_out_count(&m->stem_conv, N) * E);
    for (int b = 0; b < m->nblocks; b++) {
        const BlockDesc *B = &m->blocks[b];
        Blk *K = &be->blk[b];
        K->r = resnet ? carve(cv, (size_t)N * B->cin * B->ih * B->iw * E) : NULL;
        for (int k = 0; k < 2; k++)
            for (int j = 0; j < B->nconv; j++) {
                const size_t count = conv_out_count(&B->conv[k][j], N);
                if (j == 0 && K->merged) /* halves of one (rows, 2c) tensor */
                    K->c[k][j] = k == 0 ? carve(cv, 2 * count * E)
                                        : (char *)K->c[0][0] + (size_t)B->conv[0][0].cout * E;
                else
                    K->c[k][j] = carve(cv, count * E);
                if (j < B->nconv - 1)
                    K->act[k][j] = carve(cv, conv_out_count(&B->conv[k][j], N) * E);
            }
        K->p1 = K->p2 = K->cat = NULL;
        if (B->proj) {
            if (resnet) {
                K->p1 = carve(cv, (size_t)N * B->cin * B->oh * B->ow * E);
                K->p2 = carve(cv, (size_t)N * B->cin * B->oh * B->ow * E);
            }
            K->cat = carve(cv, (size_t)N * B->cout * B->oh * B->ow * E);
        }
        K->out = carve(cv, (size_t)N * B->cout * B->oh * B->ow * E);
    }
    be->g[0] = carve(cv, be->max_act * E);
    be->g[1] = carve(cv, be->max_act * E);
    be->dr = carve(cv, be->max_act * E);
    for (int l = 0; l < SCRATCH_LANES(be); l++) {
        Lane *ln = &be->lane[l];
        const int branch = l < BRANCH_LANES(be);
        ln->dc[0] = carve(cv, be->max_act * E);
        ln->dc[1] = be->nlanes == 4 && branch ? carve(cv, be->max_act * E) : ln->dc[0];
        ln->dact = branch ? carve(cv, be->max_act * E) : NULL;
    }
    be->mdc = carve(cv, be->mdc_count * E);
    be->dp1 = carve(cv, be->max_act * E);
    be->dp2 = carve(cv, be->max_act * E);
    be->s0 = carve(cv, be->max_act * E);
    be->s1 = carve(cv, be->max_act * E);
}

/* bn's statistics carved out of cv; its entry of tab (where not NULL) */
static void layout_bn(Bn *bn, const BnDesc *d, Carver *cv, BnEvalSeg *tab, int *n)
{
    bn->d = d;
    bn->ld = d->c;
    bn->mean = (float *)carve(cv, d->c * sizeof(float));
    bn->rstd = (float *)carve(cv, d->c * sizeof(float));
    bn->scale = (float *)carve(cv, d->c * sizeof(float));
    if (tab)
        tab[*n] = BnEvalSeg{bn->scale, (unsigned)d->gamma, (unsigned)d->var, (unsigned)d->c};
    (*n)++;
}

/* every batch norm's statistics; returns how many batch norms */
static int layout_bns(Backend *be, Carver *cv, BnEvalSeg *tab)
{
    const Model *m = be->m;
    int n = 0;
    layout_bn(&be->stem_bn, &m->stem_bn, cv, tab, &n);
    for (int b = 0; b < m->nblocks; b++) {
        const BlockDesc *B = &m->blocks[b];
        for (int k = 0; k < 2; k++)
            for (int j = 0; j < B->nconv; j++) {
                Bn *bn = &be->blk[b].bn[k][j];
                layout_bn(bn, &B->bn[k][j], cv, tab, &n);
                if (j == 0 && be->blk[b].merged)
                    bn->ld = 2 * bn->d->c;
            }
        if (B->proj)
            layout_bn(&be->blk[b].sc_bn, &B->sc_bn, cv, tab, &n);
    }
    return n;
}

/* ---- convolutions ---- */

static int conv_init(Backend *be, Conv *cv, const ConvDesc *d, Err *e)
{
    memset(cv, 0, sizeof *cv);
    cv->d = d;
    be->convs[be->nconvs++] = cv;   /* first, so that destroy frees what was made */
    CKDNN(cudnnCreateTensorDescriptor(&cv->x));
    CKDNN(cudnnCreateTensorDescriptor(&cv->y));
    CKDNN(cudnnCreateFilterDescriptor(&cv->w));
    CKDNN(cudnnCreateConvolutionDescriptor(&cv->conv));
    CKDNN(cudnnSetFilter4dDescriptor(cv->w, be->dtype, CUDNN_TENSOR_NHWC, d->cout,
                                     d->cin / d->groups, d->k, d->k));
    CKDNN(cudnnSetConvolution2dDescriptor(cv->conv, d->pad, d->pad, d->stride, d->stride, 1, 1,
                                          CUDNN_CROSS_CORRELATION, CUDNN_DATA_FLOAT));
    CKDNN(cudnnSetConvolutionGroupCount(cv->conv, d->groups));
    return 0;
}

static void conv_destroy(Conv *cv)
{
    if (cv->x)
        cudnnDestroyTensorDescriptor(cv->x);
    if (cv->y)
        cudnnDestroyTensorDescriptor(cv->y);
    if (cv->w)
        cudnnDestroyFilterDescriptor(cv->w);
    if (cv->conv)
        cudnnDestroyConvolutionDescriptor(cv->conv);
}

/* Workspace cap: algorithms that want more are passed over. */
static const size_t WS_CAP = (size_t)512 << 20;

/* cuDNN 9 reports "not supported" in a range of codes (3000-3999). */
static int not_supported(cudnnStatus_t st)
{
    return st >= CUDNN_STATUS_NOT_SUPPORTED && st < CUDNN_STATUS_NOT_SUPPORTED + 1000;
}

/* The workspace an algorithm needs for each direction of cv (its
 * descriptors and math type as set), through handle h. */
static cudnnStatus_t fwd_ws(cudnnHandle_t h, const Conv *cv, cudnnConvolutionFwdAlgo_t a,
                            size_t *ws)
{
    return cudnnGetConvolutionForwardWorkspaceSize(h, cv->x, cv->w, cv->conv, cv->y, a, ws);
}

static cudnnStatus_t data_ws(cudnnHandle_t h, const Conv *cv, cudnnConvolutionBwdDataAlgo_t a,
                             size_t *ws)
{
    return cudnnGetConvolutionBackwardDataWorkspaceSize(h, cv->w, cv->y, cv->conv, cv->x, a, ws);
}

static cudnnStatus_t filter_ws(cudnnHandle_t h, const Conv *cv,
                               cudnnConvolutionBwdFilterAlgo_t a, size_t *ws)
{
    return cudnnGetConvolutionBackwardFilterWorkspaceSize(h, cv->x, cv->y, cv->conv, cv->w, a,
                                                          ws);
}

/*
 * The candidates from cuDNN's heuristics, best first: supported for this
 * shape, allowed for the precision (fp32: FMA math, GEMM-like algorithms
 * where any is offered, any FMA-math one where none is), within the
 * workspace cap, deterministic ones first (a run repeats exactly on the
 * same GPU). A candidate that turns out unsupported when it runs is skipped
 * for the next (see conv_forward).
 */
#define FILL_ALGOS(list, perf, got, okfn, wsfn)                                           \
    do {                                                                                  \
        (list).count = (list).cur = 0;                                                    \
        for (int pass_ = 0; pass_ < 4 && !(pass_ == 2 && (list).count); pass_++)          \
            for (int q_ = 0; q_ < (got) && (list).count < MAX_ALGOS; q_++) {              \
                const int det_ = (perf)[q_].determinism == CUDNN_DETERMINISTIC;           \
                size_t ws_ = 0;                                                           \
                const cudnnMathType_t mt_ = be->use_bf16 ? (perf)[q_].mathType           \
                                                         : CUDNN_FMA_MATH;                \
                if ((perf)[q_].status != CUDNN_STATUS_SUCCESS || det_ != (pass_ % 2 == 0) || \
                    !okfn(be, (perf)[q_].algo, (perf)[q_].mathType, pass_ < 2) ||         \
                    cudnnSetConvolutionMathType(cv->conv, mt_) != CUDNN_STATUS_SUCCESS || \
                    wsfn(h, cv, (perf)[q_].algo, &ws_) != CUDNN_STATUS_SUCCESS)           \
                    continue;                                                             \
                if ((perf)[q_].memory > ws_)                                              \
                    ws_ = (perf)[q_].memory;                                              \
                if (ws_ > WS_CAP)                                                         \
                    continue;                                                             \
                (list).algo[(list).count] = (int)(perf)[q_].algo;                         \
                (list).math[(list).count] = mt_;                                          \
                (list).ws[(list).count++] = ws_;                                          \
                need = ws_ > need ? ws_ : need;                                           \
            }                                                                             \
        if ((list).count == 0)                                                            \
            return err_set(e, "cuDNN offers no usable algorithm for the %s of a %dx%d "   \
                              "convolution %d -> %d (stride %d, groups %d) at batch %d "  \
                              "in %s", #list, d->k, d->k, d->cin, d->cout, d->stride,     \
                           d->groups, n, be->use_bf16 ? "bf16" : "fp32");                 \
    } while (0)

/* fp32 keeps to FMA math (no TF32) and, where cuDNN has one (strict),
 * to GEMM-like algorithms: FFT and Winograd
 * transforms, and TF32 tensor cores, add rounding that the 1e-4 comparison
 * with ref would see. */
static int fwd_ok(const Backend *be, cudnnConvolutionFwdAlgo_t a, cudnnMathType_t mt, int strict)
{
    if (be->use_bf16)
        return 1;
    return (mt == CUDNN_FMA_MATH || mt == CUDNN_DEFAULT_MATH) &&
           (!strict || a == CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM ||
            a == CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM ||
            a == CUDNN_CONVOLUTION_FWD_ALGO_GEMM || a == CUDNN_CONVOLUTION_FWD_ALGO_DIRECT);
}

static int bwd_data_ok(const Backend *be, cudnnConvolutionBwdDataAlgo_t a, cudnnMathType_t mt,
                       int strict)
{
    if (be->use_bf16)
        return 1;
    return (mt == CUDNN_FMA_MATH || mt == CUDNN_DEFAULT_MATH) &&
           (!strict || a == CUDNN_CONVOLUTION_BWD_DATA_ALGO_0 ||
            a == CUDNN_CONVOLUTION_BWD_DATA_ALGO_1);
}

static int bwd_filter_ok(const Backend *be, cudnnConvolutionBwdFilterAlgo_t a,
                         cudnnMathType_t mt, int strict)
{
    if (be->use_bf16)
        return 1;
    return (mt == CUDNN_FMA_MATH || mt == CUDNN_DEFAULT_MATH) &&
           (!strict || a == CUDNN_CONVOLUTION_BWD_FILTER_ALGO_0 ||
            a == CUDNN_CONVOLUTION_BWD_FILTER_ALGO_1 || a == CUDNN_CONVOLUTION_BWD_FILTER_ALGO_3);
}

/* A captured step holds buffer addresses: any reallocation ends it. */
static void graph_drop(Backend *be)
{
    if (be->graph)
        cudaGraphExecDestroy(be->graph);
    if (be->eval_graph)
        cudaGraphExecDestroy(be->eval_graph);
    be->graph = NULL;
    be->eval_graph = NULL;
    be->warm = 0;
    be->eval_warm = 0;
}

static int grow_workspace(Backend *be, Lane *ln, size_t need, Err *e)
{
    if (need <= ln->ws_size)
        return 0;
    graph_drop(be);
    CK(cudaStreamSynchronize(ln->stream));
    CK(cudaFree(ln->ws));
    ln->ws = NULL;
    ln->ws_size = 0;
    TRY(dev_alloc(be, &ln->ws, need, "the cuDNN workspace", e));
    ln->ws_size = need;
    return 0;
}

/* the most weights of any conv, merged ones included */
static size_t largest_conv(const Backend *be)
{
    size_t n = 1;
    for (int i = 0; i < be->nconvs; i++)
        n = conv_weights(be->convs[i]->d) > n ? conv_weights(be->convs[i]->d) : n;
    return n;
}

/* The scratch cuDNN's Find runs the candidates on (zeros: the timing is
 * what counts): the largest input, output and filters of any conv, merged
 * ones included, fit. */
static int find_scratch(Backend *be, Err *e)
{
    if (be->find_ws)
        return 0;
    const size_t act = (be->max_act > be->mdc_count ? be->max_act : be->mdc_count) * be->esize;
    const size_t w = largest_conv(be) * be->esize;
    TRY(dev_alloc(be, &be->find_x, act, "the algorithm search's input", e));
    TRY(dev_alloc(be, &be->find_y, act, "the algorithm search's output", e));
    TRY(dev_alloc(be, &be->find_w, w, "the algorithm search's weights", e));
    CK(cudaMemset(be->find_x, 0, act));
    CK(cudaMemset(be->find_y, 0, act));
    CK(cudaMemset(be->find_w, 0, w));
    TRY(dev_alloc(be, &be->find_ws, WS_CAP, "the algorithm search's workspace", e));
    return 0;
}

/* The search's scratch back once the candidates are chosen: 512 MB of
 * workspace and two activations' worth that training never reads. A batch
 * size seen later makes it again. */
static void find_scratch_free(Backend *be)
{
    void **bufs[] = {&be->find_x, &be->find_y, &be->find_w, &be->find_ws};
    for (void **b : bufs) {
        if (*b)
            cudaFree(*b);
        *b = NULL;
    }
}

/* SHAKE_CUDA_VERBOSE with SHAKE_CUDA_FIND: every candidate cuDNN timed for
 * one direction of cv at batch n, in its order (fastest first) */
template <typename Perf>
static void print_found(const Backend *be, const Conv *cv, int n, const char *what,
                        const Perf *pf, int got)
{
    if (!be->verbose)
        return;
    const ConvDesc *d = cv->d;
    for (int i = 0; i < got; i++) {
        fprintf(stderr, "cuda: find: %dx%d conv %d -> %d (stride %d, groups %d, %dx%d) at batch %d, "
                        "%s, %s: algo %d math %d, ", d->k, d->k, d->cin, d->cout, d->stride,
                d->groups, d->ih, d->iw, n, be->use_bf16 ? "bf16" : "fp32", what,
                (int)pf[i].algo, (int)pf[i].mathType);
        if (pf[i].status != CUDNN_STATUS_SUCCESS)
            fprintf(stderr, "%s\n", cudnnGetErrorString(pf[i].status));
        else
            fprintf(stderr, "%.4f ms, %s, workspace %zu\n", pf[i].time,
                    pf[i].determinism == CUDNN_DETERMINISTIC ? "deterministic"
                                                             : "nondeterministic",
                    pf[i].memory);
    }
}

/*
 * Asks cuDNN for cv's candidates at batch n (the descriptors set for n):
 * its heuristics, or with be->find its Find. *need_main: the workspace the
 * forward and data gradient need on cv's lane; *need_filter: the filter
 * gradient's (on cv->wlane).
 */
static int conv_query(Backend *be, Conv *cv, int n, size_t *need_main, size_t *need_filter,
                      Err *e)
{
    const ConvDesc *d = cv->d;
    /* the heuristics see the descriptor's math type: before each query, the
     * widest the precision allows (FILL_ALGOS leaves a candidate's) */
#define WIDEST_MATH()                                                                 \
    CKDNN(cudnnSetConvolutionMathType(cv->conv, be->use_bf16 ? CUDNN_TENSOR_OP_MATH \
                                                             : CUDNN_FMA_MATH))
    WIDEST_MATH();
    size_t need = 0;
    int got = 0;
    Lane *ln = &be->lane[cv->lane];
    cudnnHandle_t h = ln->dnn;
    /* with be->find, the candidates as cuDNN timed them, fastest first */
    if (be->find)
        TRY(find_scratch(be, e));
    void *fx = be->find_x, *fy = be->find_y, *fw = be->find_w, *fws = be->find_ws;
    cudnnConvolutionFwdAlgoPerf_t pf[CUDNN_CONVOLUTION_FWD_ALGO_COUNT];
    if (be->find) {
        CKDNN(cudnnFindConvolutionForwardAlgorithmEx(h, cv->x, fx, cv->w, fw, cv->conv, cv->y,
                                                     fy, CUDNN_CONVOLUTION_FWD_ALGO_COUNT, &got,
                                                     pf, fws, WS_CAP));
        print_found(be, cv, n, "forward", pf, got);
    } else
        CKDNN(cudnnGetConvolutionForwardAlgorithm_v7(h, cv->x, cv->w, cv->conv, cv->y,
                                                     CUDNN_CONVOLUTION_FWD_ALGO_COUNT, &got,
                                                     pf));
    FILL_ALGOS(cv->fwd, pf, got, fwd_ok, fwd_ws);
    WIDEST_MATH();
    cudnnConvolutionBwdDataAlgoPerf_t pd[CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT];
    if (be->find) {
        CKDNN(cudnnFindConvolutionBackwardDataAlgorithmEx(
            h, cv->w, fw, cv->y, fy, cv->conv, cv->x, fx, CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT,
            &got, pd, fws, WS_CAP));
        print_found(be, cv, n, "backward data", pd, got);
    } else
        CKDNN(cudnnGetConvolutionBackwardDataAlgorithm_v7(h, cv->w, cv->y, cv->conv, cv->x,
                                                          CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT,
                                                          &got, pd));
    FILL_ALGOS(cv->bwd_data, pd, got, bwd_data_ok, data_ws);
    *need_main = need;          /* the filter gradient's may go to another lane */
    need = 0;
    WIDEST_MATH();
    cudnnConvolutionBwdFilterAlgoPerf_t pw[CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT];
    if (be->find) {
        CKDNN(cudnnFindConvolutionBackwardFilterAlgorithmEx(
            h, cv->x, fx, cv->y, fy, cv->conv, cv->w, fw, CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT,
            &got, pw, fws, WS_CAP));
        print_found(be, cv, n, "backward filter", pw, got);
    } else
        CKDNN(cudnnGetConvolutionBackwardFilterAlgorithm_v7(
            h, cv->x, cv->y, cv->conv, cv->w, CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT, &got,
            pw));
    FILL_ALGOS(cv->bwd_filter, pw, got, bwd_filter_ok, filter_ws);
#undef WIDEST_MATH
    *need_filter = need;
    return 0;
}

/* cv's key in the algorithm record at batch n; conv (len bytes) holds its
 * shape's words */
static AlgoKey rec_key(const Backend *be, const Conv *cv, int n, char *conv, size_t len)
{
    const ConvDesc *d = cv->d;
    snprintf(conv, len, "%dx%d conv %d -> %d, stride %d, pad %d, groups %d, input %dx%d", d->k,
             d->k, d->cin, d->cout, d->stride, d->pad, d->groups, d->ih, d->iw);
    return (AlgoKey){be->rec_gpu, be->rec_library, be->use_bf16 ? "bf16" : "fp32",
                     be->find ? "find" : "heuristics", conv, n};
}

/*
 * One direction's candidates from the record's: those that exist, that
 * the precision allows and whose workspace fits WS_CAP, in the record's
 * order. 0 if none does (the record is then not used for cv).
 */
template <typename A>
static int rec_list(Backend *be, Conv *cv, AlgoList *list, const AlgoLists *rl, int dir,
                    int nalgos, int (*ok)(const Backend *, A, cudnnMathType_t, int),
                    cudnnStatus_t (*wsfn)(cudnnHandle_t, const Conv *, A, size_t *),
                    size_t *need)
{
    list->count = list->cur = 0;
    for (int i = 0; i < rl->count[dir] && list->count < MAX_ALGOS; i++) {
        const int a = rl->algo[dir][i];
        const cudnnMathType_t mt = (cudnnMathType_t)rl->math[dir][i];
        size_t ws = 0;
        if (a >= nalgos || !ok(be, (A)a, mt, 0) ||
            (mt != CUDNN_DEFAULT_MATH && mt != CUDNN_TENSOR_OP_MATH && mt != CUDNN_FMA_MATH &&
             mt != CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION) ||
            cudnnSetConvolutionMathType(cv->conv, mt) != CUDNN_STATUS_SUCCESS ||
            wsfn(be->lane[cv->lane].dnn, cv, (A)a, &ws) != CUDNN_STATUS_SUCCESS || ws > WS_CAP)
            continue;
        list->algo[list->count] = a;
        list->math[list->count] = mt;
        list->ws[list->count++] = ws;
        *need = ws > *need ? ws : *need;
    }
    return list->count > 0;
}

/* cv's candidates at batch n from the record, if it has usable ones for
 * every direction: 1, or 0 (cv's lists then undefined) */
static int rec_lists(Backend *be, Conv *cv, const AlgoLists *rl, size_t *need_main,
                     size_t *need_filter)
{
    *need_main = *need_filter = 0;
    return rec_list<cudnnConvolutionFwdAlgo_t>(be, cv, &cv->fwd, rl, 0,
                                               CUDNN_CONVOLUTION_FWD_ALGO_COUNT, fwd_ok, fwd_ws,
                                               need_main) &&
           rec_list<cudnnConvolutionBwdDataAlgo_t>(be, cv, &cv->bwd_data, rl, 1,
                                                   CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT,
                                                   bwd_data_ok, data_ws, need_main) &&
           rec_list<cudnnConvolutionBwdFilterAlgo_t>(be, cv, &cv->bwd_filter, rl, 2,
                                                     CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT,
                                                     bwd_filter_ok, filter_ws, need_filter);
}

/* cv's lists at batch n into the record */
static int rec_put(Backend *be, const Conv *cv, const AlgoKey *k, Err *e)
{
    AlgoLists l;
    const AlgoList *dirs[ALGO_DIRS] = {&cv->fwd, &cv->bwd_data, &cv->bwd_filter};
    for (int dir = 0; dir < ALGO_DIRS; dir++) {
        l.count[dir] = dirs[dir]->count < ALGO_MAX ? dirs[dir]->count : ALGO_MAX;
        for (int i = 0; i < l.count[dir]; i++) {
            l.algo[dir][i] = dirs[dir]->algo[i];
            l.math[dir][i] = (int)dirs[dir]->math[i];
        }
    }
    return algo_record_put(be->rec, k, &l, e);
}

/* Writes the record if it changed; a failure is said once and the run goes
 * on (only a resumed run's exact repeat depends on the file). */
static void rec_flush(Backend *be)
{
    Err e = {{0}};
    if (!be->rec || algo_record_save(be->rec, &e) == 0 || be->rec_failed)
        return;
    be->rec_failed = 1;
    fprintf(stderr, "cuda backend: warning: %s; a run resumed from this one may pick other "
                    "algorithms\n",
            e.msg);
}

/* After convolutions were prepared for a batch size (not while a stream
 * captures): the record written, the search's scratch given back. */
static void prepared(Backend *be)
{
    rec_flush(be);
    find_scratch_free(be);
}

/* Descriptors and algorithm candidates for batch n (kept until n changes). */
static int conv_prepare(Backend *be, Conv *cv, int n, Err *e)
{
    if (cv->n == n)
        return 0;
    const ConvDesc *d = cv->d;
    /* the current batch's candidates back to its slot (a candidate found
     * unsupported stays skipped), then this batch's from its slot if any */
    int from = -1;
    for (int i = 0; i < PLANS; i++) {
        if (cv->n && cv->plans[i].n == cv->n) {
            cv->plans[i].fwd = cv->fwd;
            cv->plans[i].bwd_data = cv->bwd_data;
            cv->plans[i].bwd_filter = cv->bwd_filter;
        }
        if (cv->plans[i].n == n)
            from = i;
    }
    cv->n = 0;
    CKDNN(cudnnSetTensor4dDescriptor(cv->x, CUDNN_TENSOR_NHWC, be->dtype, n, d->cin, d->ih, d->iw));
    CKDNN(cudnnSetTensor4dDescriptor(cv->y, CUDNN_TENSOR_NHWC, be->dtype, n, d->cout, d->oh,
                                     d->ow));
    if (from >= 0) {
        /* the workspace only grows: it still holds what these need */
        cv->fwd = cv->plans[from].fwd;
        cv->bwd_data = cv->plans[from].bwd_data;
        cv->bwd_filter = cv->plans[from].bwd_filter;
        cv->n = n;
        return 0;
    }
    size_t need_main = 0, need = 0;
    const char *how = be->find ? "find" : "heuristics";
    char kconv[160];
    AlgoKey key = {};
    int recorded = 0;
    if (be->rec) {
        key = rec_key(be, cv, n, kconv, sizeof kconv);
        AlgoLists rl;
        recorded = algo_record_get(be->rec, &key, &rl) && rec_lists(be, cv, &rl, &need_main, &need);
        if (recorded)
            how = "record";
    }
    if (!recorded) {
        TRY(conv_query(be, cv, n, &need_main, &need, e));
        if (be->rec)
            TRY(rec_put(be, cv, &key, e));
    }
    Lane *ln = &be->lane[cv->lane];
    Lane *wln = &be->lane[cv->wlane];
    if (wln == ln) {
        TRY(grow_workspace(be, ln, need > need_main ? need : need_main, e));
    } else {
        TRY(grow_workspace(be, ln, need_main, e));
        TRY(grow_workspace(be, wln, need, e));
    }
    cv->n = n;
    const int slot = cv->plan_next;
    cv->plan_next = (slot + 1) % PLANS;
    cv->plans[slot].n = n;
    cv->plans[slot].fwd = cv->fwd;
    cv->plans[slot].bwd_data = cv->bwd_data;
    cv->plans[slot].bwd_filter = cv->bwd_filter;
    if (be->verbose)
        fprintf(stderr, "cuda: %dx%d conv %d -> %d (stride %d, groups %d, %dx%d) at batch %d, "
                        "%s: forward algo %d math %d, backward data %d math %d, backward filter "
                        "%d math %d (of %d, %d, %d candidates, %s), workspace %zu\n",
                d->k, d->k, d->cin, d->cout, d->stride, d->groups, d->ih, d->iw, n,
                be->use_bf16 ? "bf16" : "fp32", cv->fwd.algo[0], (int)cv->fwd.math[0],
                cv->bwd_data.algo[0], (int)cv->bwd_data.math[0], cv->bwd_filter.algo[0],
                (int)cv->bwd_filter.math[0], cv->fwd.count, cv->bwd_data.count,
                cv->bwd_filter.count, how, ln->ws_size);
    return 0;
}

/*
 * Runs `call` (a cuDNN call using algo and the descriptor's math type) with
 * the list's current candidate, moving on to the next one while cuDNN says
 * a candidate is not supported after all.
 */
#define RUN_ALGOS(list, what, call)                                                       \
    do {                                                                                  \
        for (;;) {                                                                        \
            if ((list).cur >= (list).count)                                               \
                return err_set(e, "%s:%d: cuDNN ran none of %d candidate algorithms for " \
                                  "the %s of a %dx%d convolution %d -> %d (groups %d)",   \
                               __FILE__, __LINE__, (list).count, what, cv->d->k,          \
                               cv->d->k, cv->d->cin, cv->d->cout, cv->d->groups);         \
            CKDNN(cudnnSetConvolutionMathType(cv->conv, (list).math[(list).cur]));        \
            const int algo = (list).algo[(list).cur];                                     \
            cudnnStatus_t st_ = (call);                                                   \
            if (st_ == CUDNN_STATUS_SUCCESS)                                              \
                break;                                                                    \
            if (!not_supported(st_))                                                      \
                return err_set(e, "%s:%d: cuDNN %s: %s", __FILE__, __LINE__, what,        \
                               cudnnGetErrorString(st_));                                 \
            (list).cur++;                                                                 \
        }                                                                                 \
    } while (0)

static const void *weights(const Backend *be, const Conv *cv)
{
    return (const char *)be->Wc + cv->slot * be->esize;
}

/* y = conv(x) */
static int conv_forward(Backend *be, void *y, const void *x, Conv *cv, int n, Err *e)
{
    TRY(conv_prepare(be, cv, n, e));
    const Lane *ln = &be->lane[cv->lane];
    const float one = 1.0f, zero = 0.0f;
    RUN_ALGOS(cv->fwd, "forward",
              cudnnConvolutionForward(ln->dnn, &one, cv->x, x, cv->w, weights(be, cv), cv->conv,
                                      (cudnnConvolutionFwdAlgo_t)algo, ln->ws, ln->ws_size, &zero,
                                      cv->y, y));
    return 0;
}

/* dx = (or += when accumulate) the input gradient */
static int conv_backward_data(Backend *be, void *dx, const void *dy, Conv *cv, int n,
                              int accumulate, Err *e)
{
    TRY(conv_prepare(be, cv, n, e));
    const Lane *ln = &be->lane[cv->lane];
    const float one = 1.0f, beta = accumulate ? 1.0f : 0.0f;
    RUN_ALGOS(cv->bwd_data, "backward data",
              cudnnConvolutionBackwardData(ln->dnn, &one, cv->w, weights(be, cv), cv->y, dy,
                                           cv->conv, (cudnnConvolutionBwdDataAlgo_t)algo, ln->ws,
                                           ln->ws_size, &beta, cv->x, dx));
    return 0;
}

/* the filter gradient, overwritten */
static int conv_backward_filter(Backend *be, const void *x, const void *dy, Conv *cv, int n,
                                Err *e)
{
    TRY(conv_prepare(be, cv, n, e));
    const Lane *ln = &be->lane[cv->wlane];
    const float one = 1.0f, zero = 0.0f;
    void *dw = (char *)be->Gc + cv->slot * be->esize;
    RUN_ALGOS(cv->bwd_filter, "backward filter",
              cudnnConvolutionBackwardFilter(ln->dnn, &one, cv->x, x, cv->y, dy, cv->conv,
                                             (cudnnConvolutionBwdFilterAlgo_t)algo, ln->ws,
                                             ln->ws_size, &zero, cv->w, dw));
    return 0;
}

/* ---- launch helpers: one place where precision picks the kernel ---- */

/* Launches kernel<T> for the precision's element type on (grid, block),
 * on stream s (LAUNCH_ON_S) or the main stream; inside the argument list,
 * T names that type (tp<T>(p) views an activation buffer as T *). LAUNCH:
 * one thread per element of count. */
#define LAUNCH_ON_S(s, kernel, grid, block, ...)                             \
    do {                                                                     \
        if (be->use_bf16) {                                                  \
            typedef bf16 T;                                                  \
            KERNEL(kernel<T>, grid, block, s)(__VA_ARGS__);                  \
        } else {                                                             \
            typedef float T;                                                 \
            KERNEL(kernel<T>, grid, block, s)(__VA_ARGS__);                  \
        }                                                                    \
        CKLAUNCH();                                                          \
    } while (0)
#define LAUNCH_ON(kernel, grid, block, ...) \
    LAUNCH_ON_S(be->stream, kernel, grid, block, __VA_ARGS__)
#define LAUNCH(kernel, count, ...) \
    LAUNCH_ON(kernel, blocks_for(count), THREADS, __VA_ARGS__)

/* Whether an elementwise kernel over (rows, c) may take V = 16 / esize
 * elements a thread: c a multiple of V and every pointer (NULL aside)
 * 16-byte aligned. */
static int packable(const Backend *be, int c, const void *p0, const void *p1 = NULL,
                    const void *p2 = NULL, const void *p3 = NULL, const void *p4 = NULL)
{
    const size_t v = 16 / be->esize;
    const void *ps[] = {p0, p1, p2, p3, p4};
    if (c % v != 0)
        return 0;
    for (const void *p : ps)
        if ((uintptr_t)p % 16 != 0)
            return 0;
    return 1;
}

/* kernel<P> with P = Pack<T, V>, T the element type in scope: V = 16 /
 * sizeof(T) elements a thread where pack (packable) says so, else one;
 * count elements in all, on stream s. LAUNCH_PACKED(_S): T the
 * precision's element type, which the argument list may name; on the main
 * stream or s. */
#define LAUNCH_PACKS(s, kernel, count, pack, ...)                                    \
    do {                                                                             \
        if (pack) {                                                                  \
            typedef Pack<T, 16 / sizeof(T)> P;                                       \
            KERNEL(kernel<P>, blocks_for((count) / P::V), THREADS, s)(__VA_ARGS__);  \
        } else {                                                                     \
            typedef Pack<T, 1> P;                                                    \
            KERNEL(kernel<P>, blocks_for(count), THREADS, s)(__VA_ARGS__);           \
        }                                                                            \
        CKLAUNCH();                                                                  \
    } while (0)
#define LAUNCH_PACKED_S(s, kernel, count, pack, ...)              \
    do {                                                          \
        if (be->use_bf16) {                                       \
            typedef bf16 T;                                       \
            LAUNCH_PACKS(s, kernel, count, pack, __VA_ARGS__);    \
        } else {                                                  \
            typedef float T;                                      \
            LAUNCH_PACKS(s, kernel, count, pack, __VA_ARGS__);    \
        }                                                         \
    } while (0)
#define LAUNCH_PACKED(kernel, count, pack, ...) \
    LAUNCH_PACKED_S(be->stream, kernel, count, pack, __VA_ARGS__)

template <typename T> static T *tp(void *p) { return (T *)p; }
template <typename T> static const T *tp(const void *p) { return (const T *)p; }

/* Wc from the float32 parameters (after load and every update) */
static int weights_refresh(Backend *be, Err *e)
{
    LAUNCH(slots_kernel, be->seg_total, tp<T>(be->Wc), be->P, be->segs, be->nweighted,
           (unsigned)be->seg_total, 1);
    return 0;
}

static unsigned bn_chunks(const Backend *be, size_t rows, int c)
{
    /* enough blocks to fill the GPU, each with a few hundred rows */
    size_t ch = rows / 256;
    int cblocks = (c + BN_TX - 1) / BN_TX;
    if (ch * cblocks > 2048)
        ch = 2048 / cblocks;
    if (ch < 1)
        ch = 1;
    if (ch > (size_t)be->bn_max_chunks)
        ch = (size_t)be->bn_max_chunks;
    return (unsigned)ch;
}

/* Whether the packed backward sums apply (bn_grad_packed_kernel), and their shape:
 * R rows at a time (at most BN_PACK_ROWS), a few rows a thread, at most
 * BN_MAX_CHUNKS chunks (the partials' buffer). */
static int bn_packed(const Backend *be, int c, const void *x, const void *d, const void *m)
{
    const int v = (int)(16 / be->esize);
    return c % v == 0 && c / v <= BN_PACK_THREADS && packable(be, c, x, d, m);
}

static unsigned bn_pack_shape(const Backend *be, size_t rows, int c, unsigned *threads)
{
    const int g = c / (int)(16 / be->esize);
    int r = BN_PACK_THREADS / g;
    if (r > BN_PACK_ROWS)
        r = BN_PACK_ROWS;
    *threads = (unsigned)(g * r);
    size_t ch = rows / ((size_t)r * 4);
    if (ch < 1)
        ch = 1;
    if (ch > (size_t)be->bn_max_chunks)
        ch = (size_t)be->bn_max_chunks;
    return (unsigned)ch;
}

/* Training: the batch statistics of x (rows, c), rows bn->ld apart, into
 * bn's mean, rstd and scale, and the running statistics updated.
 * Evaluation: bn uses the running statistics, whose scale forward_enqueue's
 * bn_eval_kernel computed for every batch norm at once. */
static int bn_forward(Backend *be, Bn *bn, const void *x, size_t rows, int train, Err *e)
{
    const BnDesc *d = bn->d;
    const int c = d->c;
    const Lane *ln = &be->lane[bn->lane];
    if (!train) {               /* forward_enqueue's bn_eval_kernel set the scale */
        bn->train = 0;
        return 0;
    }
    unsigned chunks = bn_chunks(be, rows, c);
    dim3 grid((c + BN_TX - 1) / BN_TX, chunks), block(BN_TX, BN_TY);
    LAUNCH_ON_S(ln->stream, bn_stats_partial_kernel, grid, block, ln->part, tp<T>(x), rows, c,
                bn->ld, (int)chunks);
    const dim3 fgrid((c + BN_TX - 1) / BN_TX), fblock(BN_TX, BN_FY);
    KERNEL(bn_stats_final_kernel, fgrid, fblock, ln->stream)(
        bn->mean, bn->rstd, bn->scale, be->S + d->mean, be->S + d->var, ln->part, (int)chunks, c,
        (double)rows, be->P + d->gamma);
    CKLAUNCH();
    bn->train = 1;
    return 0;
}

/* bn as the last bn_forward set it up: batch or running mean */
static BnAffine affine(const Backend *be, const Bn *bn)
{
    BnAffine a = {bn->train ? bn->mean : be->S + bn->d->mean, bn->scale, be->P + bn->d->beta};
    return a;
}

static int bn_apply(Backend *be, void *y, const void *x, const Bn *bn, size_t rows, int relu,
                    Err *e)
{
    const int c = bn->d->c;
    LAUNCH_PACKED_S(be->lane[bn->lane].stream, bn_apply_kernel, rows * c, packable(be, c, y, x),
                    tp<T>(y), tp<T>(x), affine(be, bn), rows, c, bn->ld, relu);
    return 0;
}

/*
 * The batch norm's input gradient dx (rows, c) =, from its output gradient
 * described by (d, m, coef, one_minus) as DySource; gamma and beta
 * gradients overwritten. hw: rows per image (for coef). x's and dx's rows
 * are bn->ld apart, d's and m's c.
 */
template <typename T>
static int bn_backward_t(Backend *be, void *dx, const void *d, const void *m, const float *coef,
                         int one_minus, int hw, const void *x, const Bn *bn, size_t rows, Err *e)
{
    const BnDesc *bd = bn->d;
    const int c = bd->c;
    const Lane *ln = &be->lane[bn->lane];
    DySource<T> src = {(const T *)d, (const T *)m, coef, one_minus, hw};
    unsigned chunks;
    if (bn_packed(be, c, x, d, m)) {
        typedef Pack<T, 16 / sizeof(T)> P;
        unsigned threads;
        chunks = bn_pack_shape(be, rows, c, &threads);
        KERNEL(bn_grad_packed_kernel<P>, chunks, threads, ln->stream)(ln->part, src, (const T *)x,
                                                                      bn->mean, rows, c, bn->ld,
                                                                      (int)chunks);
        CKLAUNCH();
    } else {
        chunks = bn_chunks(be, rows, c);
        dim3 grid((c + BN_TX - 1) / BN_TX, chunks), block(BN_TX, BN_TY);
        KERNEL(bn_grad_partial_kernel<T>, grid, block, ln->stream)(ln->part, src, (const T *)x,
                                                                  bn->mean, rows, c, bn->ld,
                                                                  (int)chunks);
        CKLAUNCH();
    }
    const dim3 fgrid((c + BN_TX - 1) / BN_TX), fblock(BN_TX, BN_FY);
    KERNEL(bn_grad_final_kernel, fgrid, fblock, ln->stream)(
        ln->k1, ln->k2, ln->k3, be->G + bd->gamma, be->G + bd->beta, ln->part, (int)chunks, c,
        (double)rows, bn->rstd, be->P + bd->gamma);
    CKLAUNCH();
    LAUNCH_PACKS(ln->stream, bn_grad_apply_kernel, rows * c, packable(be, c, dx, d, m, x),
                 (T *)dx, src, (const T *)x, bn->mean, ln->k1, ln->k2, ln->k3, rows, c, bn->ld);
    return 0;
}

static int bn_backward(Backend *be, void *dx, const void *d, const void *m, const float *coef,
                       int one_minus, int hw, const void *x, const Bn *bn, size_t rows, Err *e)
{
    return be->use_bf16 ? bn_backward_t<bf16>(be, dx, d, m, coef, one_minus, hw, x, bn, rows, e)
                    : bn_backward_t<float>(be, dx, d, m, coef, one_minus, hw, x, bn, rows, e);
}

/* ---- create / destroy ---- */

static void cuda_destroy(Backend *be)
{
    if (!be)
        return;
    if (be->stream) {           /* else the device was never set (or was bad) */
        cudaSetDevice(be->device);
        cudaStreamSynchronize(be->stream);
        for (int l = 1; l < 4; l++)
            if (be->lane[l].stream)
                cudaStreamSynchronize(be->lane[l].stream);
    }
    for (int i = 0; i < be->nconvs; i++)
        conv_destroy(be->convs[i]);
    if (be->rec) {
        rec_flush(be);
        algo_record_close(be->rec);
    }
    find_scratch_free(be);
    void *bufs[] = {be->P,  be->G,       be->M,         be->S,      be->Wc,
                    be->Gc, be->bn_arena, be->lane[0].part, be->lane[0].k1, be->lane[0].ws,
                    be->lane[1].ws, be->lane[2].ws, be->lane[3].ws,
                    be->x_stage, be->act_arena, be->pooled, be->alpha, be->pixels[0],
                    be->pixels[1], be->idx, be->order, be->vars, be->acc, be->blas_ws,
                    be->segs, be->bn_evals};
    if (be->eval_graph)
        cudaGraphExecDestroy(be->eval_graph);
    if (be->graph)
        cudaGraphExecDestroy(be->graph);
    if (be->vars_ring) {
        for (int i = 0; i < VARS_RING; i++)
            if (be->vars_done[i])
                cudaEventDestroy(be->vars_done[i]);
        cudaFreeHost(be->vars_ring);
    }
    if (be->blas)               /* before its workspace goes */
        cublasDestroy(be->blas);
    if (be->mdc_free)
        cudaEventDestroy(be->mdc_free);
    for (int l = 0; l < 4; l++) {
        Lane *ln = &be->lane[l];
        if (ln->dnn)
            cudnnDestroy(ln->dnn);
        cudaEvent_t evs[] = {ln->mark, ln->dc_free[0], ln->dc_free[1]};
        for (cudaEvent_t ev : evs)
            if (ev)
                cudaEventDestroy(ev);
    }
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        if (bufs[i])
            cudaFree(bufs[i]);
    for (int l = 1; l < 4; l++)
        if (be->lane[l].stream)
            cudaStreamDestroy(be->lane[l].stream);
    if (be->stream)
        cudaStreamDestroy(be->stream);
    /* nothing of this backend's may surface as a later call's error */
    cudaGetLastError();
    free(be->blk);
    free(be->convs);
    free(be);
}

int backend_cuda_devices(void)
{
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        cudaGetLastError();
        return 0;
    }
    return n;
}

static int use_device(int device, Err *e)
{
    int count = 0;
    cudaError_t st = cudaGetDeviceCount(&count);
    if (st != cudaSuccess || count == 0) {
        cudaGetLastError();
        return err_set(e, "cuda backend: no GPU visible (%s)",
                       st != cudaSuccess ? cudaGetErrorString(st) : "no devices");
    }
    if (device < 0 || device >= count)
        return err_set(e, "device=%d: this machine has %d GPU%s (0..%d)", device, count,
                       count == 1 ? "" : "s", count - 1);
    CK(cudaSetDevice(device));
    return 0;
}

static int create_body(Backend *be, const BackendOptions *o, Err *e)
{
    const Model *m = be->m;
    const int N = o->max_batch;
    cudaGetLastError();         /* an earlier failure in this thread is not ours */
    TRY(use_device(o->device, e));
    /* what it computes on: the record's entries hold for one kind of GPU
     * and one cuDNN; describe() adds the rest */
    cudaDeviceProp prop;
    CK(cudaGetDeviceProperties(&prop, o->device));
    snprintf(be->rec_gpu, sizeof be->rec_gpu, "%s (sm_%d%d)", prop.name, prop.major,
             prop.minor);
    const size_t dv = cudnnGetVersion();
    snprintf(be->rec_library, sizeof be->rec_library, "cuDNN %zu.%zu.%zu", dv / 10000,
             dv % 10000 / 100, dv % 100);
    be->sms = prop.multiProcessorCount;
    be->gpu_bytes = prop.totalGlobalMem;
    /* A GPU older than every architecture the build has code for (SASS
     * runs on later minors of its major, PTX on anything later) would fail
     * at the first launch, "no kernel image"; bf16 arithmetic and cuDNN's
     * bf16 convolutions need compute capability 8.0. Say so here, and what
     * to do instead. */
    cudaFuncAttributes fa;
    const cudaError_t image = cudaFuncGetAttributes(&fa, (const void *)fill_kernel);
    if (image != cudaSuccess) {
        cudaGetLastError();
        return err_set(e, "cuda backend: %s (compute capability %d.%d) cannot run this build's "
                          "kernels (%s): it has code for CUDA architectures %s; configure with "
                          "-DCMAKE_CUDA_ARCHITECTURES=%d%d (or 'native') and build again",
                       prop.name, prop.major, prop.minor, cudaGetErrorString(image),
                       SHAKE_CUDA_ARCHS, prop.major, prop.minor);
    }
    if (o->precision == PRECISION_BF16 && prop.major < 8)
        return err_set(e, "cuda backend: precision=bf16 needs a GPU of compute capability 8.0 "
                          "or later (A100, H100, RTX 30xx and later); %s is %d.%d: use "
                          "precision=fp32",
                       prop.name, prop.major, prop.minor);
    if (o->algo_record) {
        if (!(be->rec = algo_record_open(o->algo_record, o->algo_record_seed, e)))
            return -1;
        if (algo_record_warning(be->rec))
            fprintf(stderr, "cuda backend: warning: %s\n", algo_record_warning(be->rec));
    }
    /* a blocking stream: ordered after the default stream's copies and sets
     * (load, store, set_data use those) */
    CK(cudaStreamCreate(&be->stream));
    /* SHAKE_CUDA_STREAMS: 3 (a block's branches and its projection
     * shortcut side by side), 4 (and the branches' filter gradients), 2
     * (the branches only) or 1 */
    const char *streams = getenv("SHAKE_CUDA_STREAMS");
    be->nlanes = 3;
    if (streams) {
        if (!(streams[0] >= '1' && streams[0] <= '4' && streams[1] == '\0'))
            return err_set(e, "SHAKE_CUDA_STREAMS=%s: 1, 2, 3 or 4", streams);
        be->nlanes = streams[0] - '0';
    }
    be->lane[0].stream = be->stream;
    for (int l = 0; l < be->nlanes; l++) {
        Lane *ln = &be->lane[l];
        if (l > 0)
            CK(cudaStreamCreate(&ln->stream));
        CKDNN(cudnnCreate(&ln->dnn));
        CKDNN(cudnnSetStream(ln->dnn, ln->stream));
        CK(cudaEventCreateWithFlags(&ln->mark, cudaEventDisableTiming));
        for (int i = 0; i < 2; i++)
            CK(cudaEventCreateWithFlags(&ln->dc_free[i], cudaEventDisableTiming));
    }
    if (be->nlanes >= 3)
        CK(cudaEventCreateWithFlags(&be->mdc_free, cudaEventDisableTiming));
    CKBLAS(cublasCreate(&be->blas));
    CKBLAS(cublasSetStream(be->blas, be->stream));
    /* fp32 classifier for both precisions: no TF32 */
    CKBLAS(cublasSetMathMode(be->blas, CUBLAS_DEFAULT_MATH));
    /* cuBLAS's own workspace, fixed, so that a captured step allocates nothing */
    const size_t blas_ws = (size_t)32 << 20;
    TRY(dev_alloc(be, &be->blas_ws, blas_ws, "the cuBLAS workspace", e));
    CKBLAS(cublasSetWorkspace(be->blas, be->blas_ws, blas_ws));
    TRY(dev_alloc(be, (void **)&be->vars, sizeof(StepVars), "step variables", e));
    CK(cudaMallocHost((void **)&be->vars_ring, VARS_RING * sizeof(StepVars)));
    for (int i = 0; i < VARS_RING; i++)
        CK(cudaEventCreateWithFlags(&be->vars_done[i], cudaEventDisableTiming));
    TRY(dev_alloc(be, (void **)&be->acc, sizeof(StepAcc), "step sums", e));
    StepAcc zero_acc = {0.0, 0ull, ~0ull};
    CK(cudaMemcpy(be->acc, &zero_acc, sizeof zero_acc, cudaMemcpyHostToDevice));
    be->order_epoch = -1;
    /* 0: no graphs; require: a capture that fails is an error (tests) */
    const char *graphs = getenv("SHAKE_CUDA_GRAPHS");
    be->use_graphs = !graphs || strcmp(graphs, "0") != 0;
    const char *verbose = getenv("SHAKE_CUDA_VERBOSE");
    be->verbose = verbose && strcmp(verbose, "0") != 0;
    /* SHAKE_CUDA_BN_CHUNKS: at most this many partial sums per channel
     * (1..BN_MAX_CHUNKS), a tuning knob for measurements */
    const char *fd = getenv("SHAKE_CUDA_FIND");
    be->find = fd && strcmp(fd, "0") != 0;
    const char *bc = getenv("SHAKE_CUDA_BN_CHUNKS");
    be->bn_max_chunks = BN_MAX_CHUNKS;
    if (bc) {
        char *end;
        long v = strtol(bc, &end, 10);
        if (end == bc || *end || v < 1 || v > BN_MAX_CHUNKS)
            return err_set(e, "SHAKE_CUDA_BN_CHUNKS=%s: a whole number in 1..%d", bc,
                           (int)BN_MAX_CHUNKS);
        be->bn_max_chunks = (int)v;
    }
    be->require_graphs = graphs && strcmp(graphs, "require") == 0;
    /* SHAKE_CUDA_MERGE: 1 (the default) runs a block's two first
     * convolutions as one, 0 each on its own (for comparison) */
    const char *merge = getenv("SHAKE_CUDA_MERGE");
    be->merge = 1;
    if (merge) {
        if (!((merge[0] == '0' || merge[0] == '1') && merge[1] == '\0'))
            return err_set(e, "SHAKE_CUDA_MERGE=%s: 0 or 1", merge);
        be->merge = merge[0] == '1';
    }

    /* sizes: the largest activation and channel count */
    size_t max_act = (size_t)N * m->spec.in_c * m->spec.in_h * m->spec.in_w;
    int max_c = m->stem_bn.c;
    size_t stem = conv_out_count(&m->stem_conv, N);
    if (stem > max_act)
        max_act = stem;
    for (int b = 0; b < m->nblocks; b++) {
        const BlockDesc *B = &m->blocks[b];
        size_t in = (size_t)N * B->cin * B->ih * B->iw, out = (size_t)N * B->cout * B->oh * B->ow;
        max_act = in > max_act ? in : max_act;
        max_act = out > max_act ? out : max_act;
        for (int k = 0; k < 2; k++)
            for (int j = 0; j < B->nconv; j++) {
                size_t s = conv_out_count(&B->conv[k][j], N);
                max_act = s > max_act ? s : max_act;
                max_c = B->bn[k][j].c > max_c ? B->bn[k][j].c : max_c;
            }
        max_c = B->cout > max_c ? B->cout : max_c;
    }
    be->max_act = max_act;
    be->max_c = max_c;
    /* the kernels index with 32 bits (FOR_EACH) */
    if (max_act >= ((size_t)1 << 31) || m->nparams >= ((size_t)1 << 31))
        return err_set(e, "cuda backend: %zu activations of one tensor at batch %d (or %zu "
                          "parameters) exceed the kernels' 32-bit indices; use a smaller batch",
                       max_act, N, m->nparams);

    /* every conv: stem, branches, shortcuts */
    be->blk = (Blk *)calloc((size_t)m->nblocks, sizeof(Blk));
    be->convs = (Conv **)calloc((size_t)1 + (size_t)m->nblocks * 9, sizeof(Conv *));
    if (!be->blk || !be->convs)
        return err_set(e, "cuda backend: out of host memory");
    TRY(conv_init(be, &be->stem_conv, &m->stem_conv, e));
    for (int b = 0; b < m->nblocks; b++) {
        const BlockDesc *B = &m->blocks[b];
        for (int k = 0; k < 2; k++)
            for (int j = 0; j < B->nconv; j++) {
                Conv *c = &be->blk[b].conv[k][j];
                TRY(conv_init(be, c, &B->conv[k][j], e));
                c->lane = be->nlanes >= 2 ? k : 0;
                c->wlane = be->nlanes == 4 ? k + 2 : c->lane;
                be->blk[b].bn[k][j].lane = c->lane;
            }
        if (B->proj) {
            for (int p = 0; p < B->nsc; p++) {
                Conv *c = &be->blk[b].sc[p];
                TRY(conv_init(be, c, &B->sc[p], e));
                c->lane = c->wlane = SC_LANE(be);
            }
            be->blk[b].sc_bn.lane = SC_LANE(be);
        }
    }
    be->nweighted = be->nconvs;
    /* merged first convolutions: the same input, so one convolution with
     * both branches' filters (cout 2c) on the main lane; its filter
     * gradient on a side lane, off the path that the data gradients take
     * (three lanes: the shortcuts', four: branch 1's filter lane; fewer:
     * the main lane), and its data gradient is the sum of the branches' */
    be->mdc_count = 0;
    for (int b = 0; b < m->nblocks; b++) {
        const BlockDesc *B = &m->blocks[b];
        Blk *K = &be->blk[b];
        const ConvDesc *c0 = &B->conv[0][0], *c1 = &B->conv[1][0];
        K->merged = be->merge && B->nconv >= 2 && c0->groups == 1 && c1->groups == 1 &&
                    c0->cin == c1->cin && c0->cout == c1->cout && c0->k == c1->k &&
                    c0->stride == c1->stride && c0->pad == c1->pad && c0->ih == c1->ih &&
                    c0->iw == c1->iw && 2 * conv_out_count(c0, N) < ((size_t)1 << 31);
        if (!K->merged)
            continue;
        K->mdesc = *c0;
        K->mdesc.cout = 2 * c0->cout;
        TRY(conv_init(be, &K->mconv, &K->mdesc, e));
        K->mconv.lane = 0;
        K->mconv.wlane = be->nlanes == 4 ? 3 : be->nlanes == 3 ? 2 : 0;
        K->conv[0][0].idle = K->conv[1][0].idle = 1;
        const size_t mc = conv_out_count(&K->mdesc, N);
        be->mdc_count = mc > be->mdc_count ? mc : be->mdc_count;
    }

    const size_t np = m->nparams, ns = m->nstate;
    TRY(dev_alloc(be, (void **)&be->P, np * 4, "parameters", e));
    TRY(dev_alloc(be, (void **)&be->G, np * 4, "gradients", e));
    TRY(dev_alloc(be, (void **)&be->M, np * 4, "momentum", e));
    TRY(dev_alloc(be, (void **)&be->S, ns * 4, "running statistics", e));
    CK(cudaMemset(be->G, 0, np * 4));
    CK(cudaMemset(be->M, 0, np * 4));
    size_t slots = 0;
    for (int i = 0; i < be->nweighted; i++) {
        Conv *c = be->convs[i];
        if (c->idle)            /* a merged pair's: below */
            continue;
        c->slot = slots;
        slots += (conv_weights(c->d) + 127) / 128 * 128;
    }
    /* a merged pair's filters in one slot, branch 0's then branch 1's,
     * which the merged conv reads as its own */
    for (int b = 0; b < m->nblocks; b++) {
        Blk *K = &be->blk[b];
        if (!K->merged)
            continue;
        K->mconv.slot = K->conv[0][0].slot = slots;
        K->conv[1][0].slot = slots + conv_weights(K->conv[0][0].d);
        slots += (conv_weights(&K->mdesc) + 127) / 128 * 128;
    }
    TRY(dev_alloc(be, &be->Wc, slots * be->esize, "convolution weights", e));
    TRY(dev_alloc(be, &be->Gc, slots * be->esize, "convolution filter gradients", e));
    {
        ConvSeg *h = (ConvSeg *)malloc((size_t)be->nweighted * sizeof *h);
        if (!h)
            return err_set(e, "cuda backend: out of host memory");
        be->seg_total = 0;
        for (int i = 0; i < be->nweighted; i++) {
            const Conv *c = be->convs[i];
            h[i] = ConvSeg{(unsigned)c->slot, (unsigned)c->d->w, (unsigned)conv_weights(c->d),
                           (unsigned)be->seg_total};
            be->seg_total += h[i].count;
        }
        TRY(dev_upload(be, (void **)&be->segs, h, (size_t)be->nweighted * sizeof *h,
                       "convolution table", e));
    }
    Carver cv = {NULL, 0};
    be->nbns = layout_bns(be, &cv, NULL);
    TRY(dev_alloc(be, (void **)&be->bn_arena, cv.used, "batch-norm statistics", e));
    cv = (Carver){(char *)be->bn_arena, 0};
    {
        BnEvalSeg *h = (BnEvalSeg *)malloc((size_t)be->nbns * sizeof *h);
        if (!h)
            return err_set(e, "cuda backend: out of host memory");
        layout_bns(be, &cv, h);
        TRY(dev_upload(be, (void **)&be->bn_evals, h, (size_t)be->nbns * sizeof *h,
                       "batch-norm table", e));
    }
    /* each lane's batch-norm scratch, in one buffer of each kind */
    const size_t part = (size_t)BN_MAX_CHUNKS * 2 * max_c;
    const int scratch_lanes = SCRATCH_LANES(be);
    TRY(dev_alloc(be, (void **)&be->lane[0].part, scratch_lanes * part * sizeof(double),
                  "batch-norm partial sums", e));
    TRY(dev_alloc(be, (void **)&be->lane[0].k1,
                  scratch_lanes * 3 * (size_t)max_c * sizeof(float), "batch-norm coefficients",
                  e));
    for (int l = 0; l < scratch_lanes; l++) {
        Lane *ln = &be->lane[l];
        ln->part = be->lane[0].part + l * part;
        ln->k1 = be->lane[0].k1 + (size_t)l * 3 * max_c;
        ln->k2 = ln->k1 + max_c;
        ln->k3 = ln->k2 + max_c;
    }
    TRY(dev_alloc(be, (void **)&be->x_stage,
                  (size_t)N * m->spec.in_c * m->spec.in_h * m->spec.in_w * 4, "input images", e));
    cv = (Carver){NULL, 0};
    layout_acts(be, &cv);
    TRY(dev_alloc(be, &be->act_arena, cv.used, "activations", e));
    cv = (Carver){(char *)be->act_arena, 0};
    layout_acts(be, &cv);
    /* head and coefficients: float */
    const size_t nb = (size_t)m->nblocks;
    size_t head = (size_t)2 * N * m->fc_in + (size_t)2 * N * m->spec.classes + 2 * nb * N + N;
    TRY(dev_alloc(be, (void **)&be->pooled, head * 4, "classifier buffers", e));
    be->dpooled = be->pooled + (size_t)N * m->fc_in;
    be->logits = be->dpooled + (size_t)N * m->fc_in;
    be->dlogits = be->logits + (size_t)N * m->spec.classes;
    TRY(dev_alloc(be, (void **)&be->alpha, (2 * nb * N + N) * 4, "coefficients", e));
    be->beta = be->alpha + nb * N;
    be->half = be->beta + nb * N;
    KERNEL(fill_kernel, blocks_for(N), THREADS, be->stream)(be->half, 0.5f, (size_t)N);
    CKLAUNCH();
    /* algorithms and workspace for the full batch now, so that memory
     * problems show at create */
    for (int i = 0; i < be->nconvs; i++)
        if (!be->convs[i]->idle)
            TRY(conv_prepare(be, be->convs[i], N, e));
    prepared(be);
    CK(cudaStreamSynchronize(be->stream));
    return 0;
}

static Backend *cuda_create(const Model *m, const BackendOptions *o, Err *e)
{
    if (o->max_batch < 1) {
        err_set(e, "cuda backend: max_batch must be at least 1, got %d", o->max_batch);
        return NULL;
    }
    Backend *be = (Backend *)calloc(1, sizeof *be);
    if (!be) {
        err_set(e, "cuda backend: out of host memory");
        return NULL;
    }
    be->m = m;
    be->max_batch = o->max_batch;
    be->device = o->device;
    be->use_bf16 = o->precision == PRECISION_BF16;
    be->esize = be->use_bf16 ? 2 : 4;
    be->dtype = be->use_bf16 ? CUDNN_DATA_BFLOAT16 : CUDNN_DATA_FLOAT;
    char desc[64];
    model_describe(m, desc, sizeof desc);
    snprintf(be->what, sizeof be->what, "model %s, batch %d, precision %s, device %d", desc,
             o->max_batch, be->use_bf16 ? "bf16" : "fp32", o->device);
    if (create_body(be, o, e)) {
        cuda_destroy(be);
        return NULL;
    }
    return be;
}

/* ---- load / store: PyTorch layouts on the host, NHWC filters here ---- */

/* (K, C, R, S) <-> (K, R, S, C) for every conv with k > 1, in place via tmp */
static void permute_convs(const Backend *be, float *arena, float *tmp, int to_device)
{
    for (int i = 0; i < be->nweighted; i++) {
        const ConvDesc *d = be->convs[i]->d;
        if (d->k == 1)
            continue;
        const int K = d->cout, C = d->cin / d->groups, R = d->k, S = d->k;
        float *w = arena + d->w;
        memcpy(tmp, w, (size_t)K * C * R * S * sizeof(float));
        for (int k = 0; k < K; k++)
            for (int c = 0; c < C; c++)
                for (int r = 0; r < R; r++)
                    for (int s = 0; s < S; s++) {
                        size_t kcrs = (((size_t)k * C + c) * R + r) * S + s;
                        size_t krsc = (((size_t)k * R + r) * S + s) * C + c;
                        if (to_device)
                            w[krsc] = tmp[kcrs];
                        else
                            w[kcrs] = tmp[krsc];
                    }
    }
}

/* host arena (canonical) -> device arena (device layout) */
static int upload_params(Backend *be, float *dst, const float *src, Err *e)
{
    const size_t np = be->m->nparams;
    float *h = (float *)malloc(np * sizeof(float));
    float *tmp = (float *)malloc(largest_conv(be) * sizeof(float));
    if (!h || !tmp) {
        free(h);
        free(tmp);
        return err_set(e, "cuda backend: out of host memory");
    }
    memcpy(h, src, np * sizeof(float));
    permute_convs(be, h, tmp, 1);
    cudaError_t st = cudaMemcpy(dst, h, np * sizeof(float), cudaMemcpyHostToDevice);
    free(h);
    free(tmp);
    CK(st);
    return 0;
}

static int download_params(Backend *be, float *dst, const float *src, Err *e)
{
    const size_t np = be->m->nparams;
    float *tmp = (float *)malloc(largest_conv(be) * sizeof(float));
    if (!tmp)
        return err_set(e, "cuda backend: out of host memory");
    cudaError_t st = cudaMemcpy(dst, src, np * sizeof(float), cudaMemcpyDeviceToHost);
    if (st == cudaSuccess)
        permute_convs(be, dst, tmp, 0);
    free(tmp);
    CK(st);
    return 0;
}

static int cuda_load(Backend *be, const float *params, const float *state, const float *momentum,
                     Err *e)
{
    const Model *m = be->m;
    CK(cudaSetDevice(be->device));
    CK(cudaStreamSynchronize(be->stream));
    TRY(upload_params(be, be->P, params, e));
    if (momentum)
        TRY(upload_params(be, be->M, momentum, e));
    else
        CK(cudaMemset(be->M, 0, m->nparams * sizeof(float)));
    CK(cudaMemcpy(be->S, state, m->nstate * sizeof(float), cudaMemcpyHostToDevice));
    TRY(weights_refresh(be, e));
    CK(cudaStreamSynchronize(be->stream));
    be->train_n = 0;
    return 0;
}

static int cuda_store(Backend *be, float *params, float *state, float *momentum, float *grads,
                      Err *e)
{
    CK(cudaSetDevice(be->device));
    CK(cudaStreamSynchronize(be->stream));
    if (params)
        TRY(download_params(be, params, be->P, e));
    if (momentum)
        TRY(download_params(be, momentum, be->M, e));
    if (grads)
        TRY(download_params(be, grads, be->G, e));
    if (state)
        CK(cudaMemcpy(state, be->S, be->m->nstate * sizeof(float), cudaMemcpyDeviceToHost));
    return 0;
}

/* ---- forward ---- */

/* Lane `to` waits (on the device) for what lane `from` has queued so far:
 * a fork (to > 0) or a join (to = 0); nothing when they are one lane. */
static int lane_wait(Backend *be, int to, int from, Err *e)
{
    if (be->nlanes < 2 || to == from)
        return 0;
    CK(cudaEventRecord(be->lane[from].mark, be->lane[from].stream));
    CK(cudaStreamWaitEvent(be->lane[to].stream, be->lane[from].mark, 0));
    return 0;
}

/* The dc buffer the next batch-norm backward on lane l writes: with four
 * lanes a branch lane's two take turns, and one a filter gradient on the
 * side lane still reads is waited for. */
static int dc_take(Backend *be, int l, void **dc, Err *e)
{
    Lane *ln = &be->lane[l];
    const int i = ln->dc_next;
    if (be->nlanes == 4 && l < BRANCH_LANES(be))
        ln->dc_next = 1 - i;
    if (ln->dc_read[i]) {
        CK(cudaStreamWaitEvent(ln->stream, ln->dc_free[i], 0));
        ln->dc_read[i] = 0;
    }
    *dc = ln->dc[i];
    return 0;
}

/* The filter gradient of cv from its input x and dc, the output gradient
 * branch lane l's last batch-norm backward wrote (dc_take): on cv's
 * filter lane, which waits for lane l's work so far. */
static int filter_grad(Backend *be, int l, const void *x, void *dc, Conv *cv, int n, Err *e)
{
    if (cv->wlane == l)
        return conv_backward_filter(be, x, dc, cv, n, e);
    Lane *ln = &be->lane[l];
    TRY(lane_wait(be, cv->wlane, l, e));
    TRY(conv_backward_filter(be, x, dc, cv, n, e));
    const int i = dc == ln->dc[0] ? 0 : 1;
    CK(cudaEventRecord(ln->dc_free[i], be->lane[cv->wlane].stream));
    ln->dc_read[i] = 1;
    return 0;
}

static int block_forward(Backend *be, int b, const void *x, const float *coef, int n, int train,
                         Err *e)
{
    const Model *m = be->m;
    const BlockDesc *B = &m->blocks[b];
    Blk *K = &be->blk[b];
    const int resnet = m->spec.arch == ARCH_RESNET;
    const size_t in_count = (size_t)n * B->cin * B->ih * B->iw;
    const int last = B->nconv - 1;

    /* resnet blocks are pre-activation: branches and projection see
     * relu(x), which the previous block's combination wrote with x */
    const void *bin = x;
    if (resnet) {
        if (b == 0)
            LAUNCH_PACKED(relu_kernel, in_count, packable(be, B->cin, K->r, x), tp<T>(K->r),
                          tp<T>(x), in_count);
        bin = K->r;
    }
    /* a projection shortcut on a lane of its own, from here on (it needs
     * nothing the branches compute); merged: both first convolutions at
     * once, before the branches part, each on its lane */
    const int sl = SC_LANE(be);
    if (B->proj)
        TRY(lane_wait(be, sl, 0, e));
    if (K->merged)
        TRY(conv_forward(be, K->c[0][0], bin, &K->mconv, n, e));
    TRY(lane_wait(be, 1, 0, e));
    for (int k = 0; k < 2; k++) {
        const void *h = bin;
        for (int j = 0; j < B->nconv; j++) {
            const ConvDesc *c = &B->conv[k][j];
            const size_t rows = (size_t)n * c->oh * c->ow;
            if (j > 0 || !K->merged)
                TRY(conv_forward(be, K->c[k][j], h, &K->conv[k][j], n, e));
            TRY(bn_forward(be, &K->bn[k][j], K->c[k][j], rows, train, e));
            if (j < last) {
                TRY(bn_apply(be, K->act[k][j], K->c[k][j], &K->bn[k][j], rows, 1, e));
                h = K->act[k][j];
            }
        }
    }
    const size_t orows = (size_t)n * B->oh * B->ow;
    if (B->proj) {
        const cudaStream_t ss = be->lane[sl].stream;
        if (resnet) {
            const size_t pc = orows * B->cin;
            LAUNCH_PACKED_S(ss, pool_shift_kernel, pc, packable(be, B->cin, K->p1, K->p2, K->r),
                            tp<T>(K->p1), tp<T>(K->p2), tp<T>(K->r), n, B->ih, B->iw, B->cin,
                            B->stride, B->oh, B->ow, m->spec.shift == SHIFT_REIMPL);
            TRY(conv_forward(be, be->s0, K->p1, &K->sc[0], n, e));
            TRY(conv_forward(be, be->s1, K->p2, &K->sc[1], n, e));
            const int ca = B->sc[0].cout, cb = B->sc[1].cout;
            LAUNCH_PACKED_S(ss, concat_kernel, orows * B->cout,
                            packable(be, ca, K->cat, be->s0) && packable(be, cb, be->s1),
                            tp<T>(K->cat), tp<T>(be->s0), tp<T>(be->s1), orows, ca, cb);
        } else {
            TRY(conv_forward(be, K->cat, x, &K->sc[0], n, e));
        }
        TRY(bn_forward(be, &K->sc_bn, K->cat, orows, train, e));
        TRY(lane_wait(be, 0, sl, e));
    }
    TRY(lane_wait(be, 0, 1, e));
    const Bn *b0 = &K->bn[0][last], *b1 = &K->bn[1][last];
    const BnAffine no_bn = {NULL, NULL, NULL};
    void *out_relu = resnet && b + 1 < m->nblocks ? be->blk[b + 1].r : NULL;
    const void *sc_in = B->proj ? (const void *)K->cat : x;
    LAUNCH_PACKED(shake_combine_kernel, orows * B->cout,
                  packable(be, B->cout, K->out, out_relu, K->c[0][last], K->c[1][last], sc_in),
                  tp<T>(K->out), tp<T>(out_relu), tp<T>(K->c[0][last]), tp<T>(K->c[1][last]),
                  affine(be, b0), affine(be, b1), tp<T>(sc_in),
                  B->proj ? affine(be, &K->sc_bn) : no_bn, coef, n, B->oh * B->ow, B->cout,
                  !resnet);
    return 0;
}

static int forward_enqueue(Backend *be, int n, int train, Err *e);
typedef int (*Enqueue)(Backend *be, const void *arg, int n, Err *e);
static int capture(Backend *be, cudaGraphExec_t *exec, int n, Enqueue enqueue, const void *arg,
                   Err *e);

static int eval_enqueue(Backend *be, const void *arg, int n, Err *e)
{
    (void)arg;
    return forward_enqueue(be, n, 0, e);
}

static int cuda_forward(Backend *be, float *logits, const float *x, const float *alpha, int n,
                        int train, Err *e)
{
    const Model *m = be->m;
    const ModelSpec *s = &m->spec;
    if (n < 1 || n > be->max_batch)
        return err_set(e, "cuda forward: batch %d outside 1..%d", n, be->max_batch);
    if (train && !alpha)
        return err_set(e, "cuda forward: training needs alpha");
    CK(cudaSetDevice(be->device));
    if (!x && be->batch_n != n)
        return err_set(e, "cuda forward: no input (x is NULL and batch() made %d images, not %d)",
                       be->batch_n, n);
    be->train_n = 0;
    const int hw_in = s->in_h * s->in_w;
    if (train)
        CK(cudaMemcpyAsync(be->alpha, alpha, (size_t)m->nblocks * n * sizeof(float),
                           cudaMemcpyHostToDevice, be->stream));
    if (x) {
        CK(cudaMemcpyAsync(be->x_stage, x, (size_t)n * s->in_c * hw_in * sizeof(float),
                           cudaMemcpyHostToDevice, be->stream));
        const size_t xc = (size_t)n * s->in_c * hw_in;
        LAUNCH(nchw_to_nhwc_kernel, xc, tp<T>(be->xin), be->x_stage, n, s->in_c, hw_in);
    }
    be->batch_n = 0;            /* a batch is used once */
    if (!train && n == be->max_batch && be->use_graphs) {
        /* evaluation's full batches: one graph launch, once warm (as for
         * training, lazy loading and cuDNN's first calls happen outside) */
        if (!be->eval_graph && be->eval_warm >= 1)
            TRY(capture(be, &be->eval_graph, n, eval_enqueue, NULL, e));
        if (be->eval_graph) {
            CK(cudaGraphLaunch(be->eval_graph, be->stream));
            be->graph_launches++;
        } else {
            be->eval_warm++;
            TRY(forward_enqueue(be, n, 0, e));
        }
    } else {
        TRY(forward_enqueue(be, n, train, e));
    }
    CK(cudaMemcpyAsync(logits, be->logits, (size_t)n * s->classes * sizeof(float),
                       cudaMemcpyDeviceToHost, be->stream));
    prepared(be);               /* a batch size not seen before */
    CK(cudaStreamSynchronize(be->stream));
    if (train)
        be->train_n = n;
    return 0;
}

/* The network on be->xin (and be->alpha when training) into be->logits,
 * queued on the stream: no copies, no synchronization (capturable). */
static int forward_enqueue(Backend *be, int n, int train, Err *e)
{
    const Model *m = be->m;
    const ModelSpec *s = &m->spec;
    const ConvDesc *sc = &m->stem_conv;
    const size_t srows = (size_t)n * sc->oh * sc->ow;
    if (!train) {
        KERNEL(bn_eval_kernel, be->nbns, 128, be->stream)(be->bn_evals, be->P, be->S);
        CKLAUNCH();
    }
    TRY(conv_forward(be, be->stem_c, be->xin, &be->stem_conv, n, e));
    TRY(bn_forward(be, &be->stem_bn, be->stem_c, srows, train, e));
    TRY(bn_apply(be, be->stem_out, be->stem_c, &be->stem_bn, srows, m->stem_relu, e));
    const void *h = be->stem_out;
    for (int b = 0; b < m->nblocks; b++) {
        TRY(block_forward(be, b, h, train ? be->alpha + (size_t)b * n : be->half, n, train, e));
        h = be->blk[b].out;
    }
    const int fhw = m->feat_h * m->feat_w;
    const int resnet = s->arch == ARCH_RESNET;
    const size_t pc = (size_t)n * m->fc_in;
    LAUNCH(head_pool_kernel, pc, be->pooled, tp<T>(h), n, fhw, m->fc_in, resnet);
    /* logits (n, K) row-major = pooled (n, I) @ W^T, W (K, I) row-major:
     * column-major, logits^T (K, n) = W_cm^T (K, I) pooled_cm (I, n) */
    const float one = 1.0f, zero = 0.0f;
    const int K = s->classes, I = m->fc_in;
    CKBLAS(cublasSgemm(be->blas, CUBLAS_OP_T, CUBLAS_OP_N, K, n, I, &one, be->P + m->fc_w, I,
                       be->pooled, I, &zero, be->logits, K));
    KERNEL(bias_add_kernel, blocks_for((size_t)n * K), THREADS, be->stream)(be->logits,
                                                                         be->P + m->fc_b, n, K);
    CKLAUNCH();
    return 0;
}

/* ---- backward ---- */

/*
 * A projection shortcut's backward on its lane, from g = d(out), as far as
 * it goes without the branches: its batch norm's input gradient into the
 * lane's dc (*dc), its filter gradients, and resnet's data gradients into
 * be->dp1 and be->dp2 (resnext's goes into dx, after the branches', in
 * block_backward).
 */
static int shortcut_backward(Backend *be, int b, const void *g, const void *mask, const void *x,
                             int n, void **dc, Err *e)
{
    const Model *m = be->m;
    const BlockDesc *B = &m->blocks[b];
    Blk *K = &be->blk[b];
    const int sl = SC_LANE(be);
    const size_t orows = (size_t)n * B->oh * B->ow;
    TRY(dc_take(be, sl, dc, e));
    if (m->spec.arch == ARCH_RESNET) {
        const int ca = B->sc[0].cout, cb = B->sc[1].cout;
        TRY(bn_backward(be, *dc, g, NULL, NULL, 0, 1, K->cat, &K->sc_bn, orows, e));
        LAUNCH_PACKED_S(be->lane[sl].stream, split_kernel, orows * B->cout,
                        packable(be, ca, be->s0, *dc) && packable(be, cb, be->s1),
                        tp<T>(be->s0), tp<T>(be->s1), tp<T>((const void *)*dc), orows, ca, cb);
        TRY(conv_backward_filter(be, K->p1, be->s0, &K->sc[0], n, e));
        TRY(conv_backward_filter(be, K->p2, be->s1, &K->sc[1], n, e));
        TRY(conv_backward_data(be, be->dp1, be->s0, &K->sc[0], n, 0, e));
        TRY(conv_backward_data(be, be->dp2, be->s1, &K->sc[1], n, 0, e));
    } else {
        TRY(bn_backward(be, *dc, g, mask, NULL, 0, 1, K->cat, &K->sc_bn, orows, e));
        TRY(conv_backward_filter(be, x, *dc, &K->sc[0], n, e));
    }
    return 0;
}

/*
 * The gradient of block_forward. g (n, oh, ow, cout): d(out); dx (n, ih, iw,
 * cin) = d(x), overwritten; beta (n) on the device. Uses the lanes' dc and
 * dact, be->dr, be->dp1, be->dp2, be->s0, be->s1 as scratch.
 */
static int block_backward(Backend *be, int b, void *dx, const void *g, const void *x,
                          const float *beta, int n, Err *e)
{
    const Model *m = be->m;
    const BlockDesc *B = &m->blocks[b];
    Blk *K = &be->blk[b];
    const int resnet = m->spec.arch == ARCH_RESNET;
    const int last = B->nconv - 1;
    const int ohw = B->oh * B->ow;
    const size_t in_count = (size_t)n * B->cin * B->ih * B->iw;
    /* resnext: y = relu(sum), so every use of g is masked by out > 0 */
    const void *mask = resnet ? NULL : K->out;
    /* the branches' input and where its gradient goes */
    const void *bin = resnet ? K->r : x;
    void *dbin = resnet ? be->dr : dx;

    /* a projection shortcut on a lane of its own starts first, beside the
     * branches */
    const int sl = SC_LANE(be);
    const int sc_side = B->proj && sl != 0;
    void *sdc = NULL;
    TRY(lane_wait(be, 1, 0, e));
    if (sc_side) {
        TRY(lane_wait(be, sl, 0, e));
        TRY(shortcut_backward(be, b, g, mask, x, n, &sdc, e));
    }
    /* the branches, each on its lane; branch 1 adds its input gradient to
     * branch 0's once that is written */
    for (int k = 0; k < 2; k++) {
        const int l = K->conv[k][0].lane;
        const Lane *ln = &be->lane[l];
        for (int j = last; j >= 0; j--) {
            const ConvDesc *c = &B->conv[k][j];
            const size_t rows = (size_t)n * c->oh * c->ow;
            void *dc = NULL;
            if (j == 0 && K->merged) {
                /* its half of the merged conv's output gradient, once the
                 * last merged filter gradient has read mdc */
                if (be->lane[l].mdc_read) {
                    CK(cudaStreamWaitEvent(ln->stream, be->mdc_free, 0));
                    be->lane[l].mdc_read = 0;
                }
                dc = (char *)be->mdc + (size_t)k * c->cout * be->esize;
            } else
                TRY(dc_take(be, l, &dc, e));
            if (j == last) /* branch k gets beta * g (k = 0) or (1 - beta) * g (k = 1) */
                TRY(bn_backward(be, dc, g, mask, beta, k == 1, ohw, K->c[k][j], &K->bn[k][j],
                                rows, e));
            else           /* through relu(bn(c)) */
                TRY(bn_backward(be, dc, ln->dact, K->act[k][j], NULL, 0, 1, K->c[k][j],
                                &K->bn[k][j], rows, e));
            if (j == 0 && K->merged)
                break;          /* the merged conv's gradients follow the branches */
            const void *in = j > 0 ? K->act[k][j - 1] : bin;
            TRY(filter_grad(be, l, in, dc, &K->conv[k][j], n, e));
            if (j > 0) {
                TRY(conv_backward_data(be, ln->dact, dc, &K->conv[k][j], n, 0, e));
            } else {
                if (k == 1)
                    TRY(lane_wait(be, 1, 0, e));
                TRY(conv_backward_data(be, dbin, dc, &K->conv[k][j], n, k == 1, e));
            }
        }
    }
    TRY(lane_wait(be, 0, 1, e));
    if (K->merged) {            /* the data gradient sums the branches' */
        if (K->mconv.wlane == 0)
            TRY(conv_backward_filter(be, bin, be->mdc, &K->mconv, n, e));
        TRY(conv_backward_data(be, dbin, be->mdc, &K->mconv, n, 0, e));
    }

    /* a shortcut that shares the main lane (one or two lanes): all of it
     * here, after the branches (before them it would hold up branch 0, whose
     * batch norms would also overwrite the dc resnext's data gradient reads) */
    if (B->proj && !sc_side)
        TRY(shortcut_backward(be, b, g, mask, x, n, &sdc, e));
    if (!resnet && B->proj) {   /* its data gradient after the branches' */
        TRY(lane_wait(be, sl, 0, e));
        TRY(conv_backward_data(be, dx, sdc, &K->sc[0], n, 1, e));
    }
    if (sc_side)
        TRY(lane_wait(be, 0, sl, e));
    /* the merged filter gradient on a side lane (three or four lanes), off
     * the path to the next block: after the shortcut's join, which would
     * otherwise wait for it; the branches' next writes of mdc wait for its
     * read */
    if (K->merged && K->mconv.wlane != 0) {
        const int wl = K->mconv.wlane;
        TRY(lane_wait(be, wl, 0, e));
        TRY(conv_backward_filter(be, bin, be->mdc, &K->mconv, n, e));
        CK(cudaEventRecord(be->mdc_free, be->lane[wl].stream));
        be->lane[0].mdc_read = be->lane[1].mdc_read = 1;
    }
    /* resnet: after every consumer of relu(x) has added its share */
    if (resnet && B->proj) {
        LAUNCH_PACKED(relu_backward_pool_kernel, in_count,
                      packable(be, B->cin, dx, be->dr, be->dp1, be->dp2, x), tp<T>(dx),
                      tp<T>((const void *)be->dr), tp<T>((const void *)be->dp1),
                      tp<T>((const void *)be->dp2), tp<T>(x), n, B->ih, B->iw, B->cin, B->stride,
                      B->oh, B->ow, m->spec.shift == SHIFT_REIMPL);
    } else if (resnet) {        /* the identity shortcut passes g straight through */
        LAUNCH_PACKED(relu_backward_add_kernel, in_count, packable(be, B->cin, dx, be->dr, x, g),
                      tp<T>(dx), tp<T>((const void *)be->dr), tp<T>(x), tp<T>(g), in_count);
    } else if (!B->proj) {
        LAUNCH(add_masked_kernel, in_count, tp<T>(dx), tp<T>(g), tp<T>((const void *)K->out),
               in_count);
    }
    return 0;
}

static int backward_enqueue(Backend *be, int n, Err *e);

static int cuda_backward(Backend *be, const float *dlogits, const float *beta, int n, Err *e)
{
    const Model *m = be->m;
    const ModelSpec *s = &m->spec;
    if (be->train_n == 0)
        return err_set(e, "cuda backward: no training forward to differentiate");
    if (n != be->train_n)
        return err_set(e, "cuda backward: batch %d, but the forward had %d", n, be->train_n);
    CK(cudaSetDevice(be->device));
    const int K = s->classes;
    CK(cudaMemcpyAsync(be->dlogits, dlogits, (size_t)n * K * sizeof(float),
                       cudaMemcpyHostToDevice, be->stream));
    CK(cudaMemcpyAsync(be->beta, beta, (size_t)m->nblocks * n * sizeof(float),
                       cudaMemcpyHostToDevice, be->stream));
    TRY(backward_enqueue(be, n, e));
    CK(cudaStreamSynchronize(be->stream));
    return 0;
}

/* The gradients from be->dlogits and be->beta, queued (capturable). */
static int backward_enqueue(Backend *be, int n, Err *e)
{
    const Model *m = be->m;
    const ModelSpec *s = &m->spec;
    const int K = s->classes, I = m->fc_in;

    /* classifier, column-major views as in forward:
     * dW_cm (I, K) = pooled_cm (I, n) dlogits_cm^T (n, K);
     * dpooled_cm (I, n) = W_cm (I, K) dlogits_cm (K, n) */
    const float one = 1.0f, zero = 0.0f;
    CKBLAS(cublasSgemm(be->blas, CUBLAS_OP_N, CUBLAS_OP_T, I, K, n, &one, be->pooled, I,
                       be->dlogits, K, &zero, be->G + m->fc_w, I));
    CKBLAS(cublasSgemm(be->blas, CUBLAS_OP_N, CUBLAS_OP_N, I, n, K, &one, be->P + m->fc_w, I,
                       be->dlogits, K, &zero, be->dpooled, I));
    KERNEL(column_sum_kernel, blocks_for(K), THREADS, be->stream)(be->G + m->fc_b, be->dlogits, n,
                                                                 K);
    CKLAUNCH();

    /* the filter gradients' reads of the dc buffers that a previous backward
     * left are long done: it ended waiting for them */
    for (int l = 0; l < BRANCH_LANES(be); l++)
        be->lane[l].dc_read[0] = be->lane[l].dc_read[1] = be->lane[l].mdc_read = 0;

    /* global pooling; resnet's head ReLU masks by the last block's output */
    const int fhw = m->feat_h * m->feat_w;
    const void *hlast = be->blk[m->nblocks - 1].out;
    int cur = 0;
    LAUNCH(head_pool_backward_kernel, (size_t)n * fhw * I, tp<T>(be->g[cur]), be->dpooled,
           tp<T>(hlast), n, fhw, I, s->arch == ARCH_RESNET);
    for (int b = m->nblocks - 1; b >= 0; b--) {
        const void *x = b > 0 ? be->blk[b - 1].out : be->stem_out;
        TRY(block_backward(be, b, be->g[1 - cur], be->g[cur], x, be->beta + (size_t)b * n, n, e));
        cur = 1 - cur;
    }

    /* stem: relu (resnext) and batch norm, then the filter gradient only */
    const ConvDesc *sc = &m->stem_conv;
    const size_t srows = (size_t)n * sc->oh * sc->ow;
    void *dc = NULL;
    TRY(dc_take(be, 0, &dc, e));
    TRY(bn_backward(be, dc, be->g[cur], m->stem_relu ? be->stem_out : NULL, NULL, 0, 1,
                    be->stem_c, &be->stem_bn, srows, e));
    TRY(conv_backward_filter(be, be->xin, dc, &be->stem_conv, n, e));
    /* the side lanes' filter gradients, before the update reads them */
    for (int l = 2; l < be->nlanes; l++)
        TRY(lane_wait(be, 0, l, e));

    /* the filter gradients into the float arena, where the update reads them */
    LAUNCH(slots_kernel, be->seg_total, tp<T>(be->Gc), be->G, be->segs, be->nweighted,
           (unsigned)be->seg_total, 0);
    return 0;
}

static int cuda_update(Backend *be, float lr, float momentum, float wd, Err *e)
{
    const size_t np = be->m->nparams;
    CK(cudaSetDevice(be->device));
    KERNEL(sgd_kernel, blocks_for(np), THREADS, be->stream)(be->P, be->M, be->G, np, lr,
                                                           momentum, wd, NULL);
    CKLAUNCH();
    TRY(weights_refresh(be, e));
    CK(cudaStreamSynchronize(be->stream));
    return 0;
}

/* ---- data on the device ---- */

static Norm norm_of(const Dataset *d)
{
    Norm nm;
    memset(&nm, 0, sizeof nm);
    for (int c = 0; c < d->c && c < 3; c++) {
        nm.mean[c] = d->mean[c];
        nm.std[c] = d->std[c];
    }
    return nm;
}

static int cuda_set_data(Backend *be, const Dataset *train, const Dataset *test, Err *e)
{
    const ModelSpec *s = &be->m->spec;
    const Dataset *sets[2] = {train, test};
    CK(cudaSetDevice(be->device));
    CK(cudaStreamSynchronize(be->stream));
    if (!be->idx)
        TRY(dev_alloc(be, (void **)&be->idx, (size_t)2 * be->max_batch * sizeof(int),
                      "batch indices", e));
    /* the device's epoch order indexed the old set */
    be->order_epoch = -1;
    be->order_src = NULL;
    be->batch_n = 0;
    for (int k = 0; k < 2; k++) {
        const Dataset *d = sets[k];
        if (be->pixels[k]) {
            graph_drop(be);
            CK(cudaFree(be->pixels[k]));
            be->pixels[k] = NULL;
        }
        be->data_n[k] = 0;
        if (!d)
            continue;
        if (d->c != s->in_c || d->h != s->in_h || d->w != s->in_w || d->c > 3)
            return err_set(e, "cuda set_data: %s images are %dx%dx%d, the model takes %dx%dx%d",
                           k ? "test" : "training", d->c, d->h, d->w, s->in_c, s->in_h, s->in_w);
        const size_t bytes = (size_t)d->n * d->c * d->h * d->w;
        /* pixels then labels, one allocation */
        TRY(dev_alloc(be, (void **)&be->pixels[k], bytes + (size_t)d->n,
                      k ? "the test set" : "the training set", e));
        CK(cudaMemcpy(be->pixels[k], d->pixels, bytes, cudaMemcpyHostToDevice));
        CK(cudaMemcpy(be->pixels[k] + bytes, d->labels, (size_t)d->n, cudaMemcpyHostToDevice));
        be->data_n[k] = d->n;
        be->norm[k] = norm_of(d);
        be->flip[k] = d->flip;
    }
    return 0;
}

static int cuda_batch(Backend *be, int set, const int *idx, int count, uint64_t seed, int epoch,
                      int augment, Err *e)
{
    const ModelSpec *s = &be->m->spec;
    if (set < 0 || set > 1 || !be->pixels[set])
        return err_set(e, "cuda batch: no %s set on the device (set_data first)",
                       set ? "test" : "training");
    if (count < 1 || count > be->max_batch)
        return err_set(e, "cuda batch: %d images outside 1..%d", count, be->max_batch);
    for (int j = 0; j < count; j++)
        if (idx[j] < 0 || idx[j] >= be->data_n[set])
            return err_set(e, "cuda batch: image %d outside the set's %d", idx[j],
                           be->data_n[set]);
    CK(cudaSetDevice(be->device));
    CK(cudaMemcpyAsync(be->idx, idx, (size_t)count * sizeof(int), cudaMemcpyHostToDevice,
                       be->stream));
    const size_t bytes = (size_t)be->data_n[set] * s->in_c * s->in_h * s->in_w;
    const size_t total = (size_t)count * s->in_c * s->in_h * s->in_w;
    /* the labels go to the idx buffer's second half, unused: the host has them */
    LAUNCH(data_batch_kernel, total, tp<T>(be->xin), be->idx + be->max_batch, be->pixels[set],
           be->pixels[set] + bytes, be->idx, count, s->in_c, s->in_h, s->in_w, be->norm[set],
           be->flip[set], seed, epoch, augment, 0, (const StepVars *)NULL);
    be->batch_n = count;
    return 0;
}

/* ---- the whole step on the device ---- */

/* batch, draws, forward, loss, backward, update: queued, capturable */
static int step_enqueue(Backend *be, const TrainStep *ts, Err *e)
{
    const Model *m = be->m;
    const ModelSpec *s = &m->spec;
    const int n = ts->count;
    const size_t bytes = (size_t)be->data_n[0] * s->in_c * s->in_h * s->in_w;
    const size_t total = (size_t)n * s->in_c * s->in_h * s->in_w;
    int *labels = be->idx + be->max_batch;
    LAUNCH(data_batch_kernel, total, tp<T>(be->xin), labels, be->pixels[0], be->pixels[0] + bytes,
           (const int *)be->order, n, s->in_c, s->in_h, s->in_w, be->norm[0], be->flip[0],
           ts->seed, 0, ts->augment, 0, (const StepVars *)be->vars);
    KERNEL(shake_draw_kernel, blocks_for((size_t)m->nblocks * n), THREADS, be->stream)(
        be->alpha, be->beta, m->nblocks, n, ts->seed, 0u, ts->forward, ts->backward, ts->level,
        be->vars);
    CKLAUNCH();
    TRY(forward_enqueue(be, n, 1, e));
    KERNEL(xent_kernel, blocks_for(n), THREADS, be->stream)(be->dlogits, be->acc, be->logits,
                                                           labels, n, s->classes, be->vars);
    CKLAUNCH();
    TRY(backward_enqueue(be, n, e));
    const size_t np = m->nparams;
    KERNEL(sgd_kernel, blocks_for(np), THREADS, be->stream)(be->P, be->M, be->G, np, 0.0f,
                                                           ts->momentum, ts->wd, be->vars);
    CKLAUNCH();
    TRY(weights_refresh(be, e));
    return 0;
}

/* the settings a captured step bakes in */
static int same_constants(const TrainStep *a, const TrainStep *b)
{
    return a->count == b->count && a->seed == b->seed && a->augment == b->augment &&
           a->forward == b->forward && a->backward == b->backward && a->level == b->level &&
           a->momentum == b->momentum && a->wd == b->wd;
}

/*
 * Captures what enqueue(be, arg, n) queues as a CUDA graph into *exec. A
 * capture that fails (a call that cannot be captured) leaves the work to
 * run eagerly, with a warning: the results are the same, only slower
 * (SHAKE_CUDA_GRAPHS=require makes it an error).
 */
static int capture(Backend *be, cudaGraphExec_t *exec, int n, Enqueue enqueue, const void *arg,
                   Err *e)
{
    /* descriptors, algorithms and workspace for this batch before capture:
     * nothing may allocate or synchronize inside it */
    for (int i = 0; i < be->nconvs; i++)
        if (!be->convs[i]->idle)
            TRY(conv_prepare(be, be->convs[i], n, e));
    prepared(be);
    CK(cudaStreamSynchronize(be->stream));
    CK(cudaStreamBeginCapture(be->stream, cudaStreamCaptureModeThreadLocal));
    Err ce = {{0}};
    int rc = enqueue(be, arg, n, &ce);
    cudaGraph_t g = NULL;
    cudaError_t st = cudaStreamEndCapture(be->stream, &g);
    if (rc == 0 && st == cudaSuccess)
        st = cudaGraphInstantiate(exec, g, 0);
    if (g)
        cudaGraphDestroy(g);
    if (rc != 0 || st != cudaSuccess) {
        cudaGetLastError();
        *exec = NULL;
        const char *why = rc ? ce.msg : cudaGetErrorString(st);
        if (be->require_graphs)
            return err_set(e, "cuda backend: capturing %s as a CUDA graph failed: %s",
                           enqueue == eval_enqueue ? "evaluation" : "the training step", why);
        be->use_graphs = 0;
        fprintf(stderr, "cuda backend: capturing %s as a CUDA graph failed (%s); running "
                        "without graphs\n",
                enqueue == eval_enqueue ? "evaluation" : "the training step", why);
    }
    return 0;
}

static int step_enqueue_arg(Backend *be, const void *arg, int n, Err *e)
{
    (void)n;
    return step_enqueue(be, (const TrainStep *)arg, e);
}

static int cuda_train_step(Backend *be, const TrainStep *ts, Err *e)
{
    if (!be->pixels[0])
        return err_set(e, "cuda train_step: no training set on the device (set_data first)");
    if (ts->count < 1 || ts->count > be->max_batch)
        return err_set(e, "cuda train_step: batch %d outside 1..%d", ts->count, be->max_batch);
    if (ts->offset < 0 || ts->offset + ts->count > ts->norder || ts->norder > be->data_n[0])
        return err_set(e, "cuda train_step: images %d..%d of an order of %d (training set %d)",
                       ts->offset, ts->offset + ts->count, ts->norder, be->data_n[0]);
    CK(cudaSetDevice(be->device));
    be->train_n = 0;
    be->batch_n = 0;
    if (be->order_cap < ts->norder) {
        graph_drop(be);
        CK(cudaStreamSynchronize(be->stream));
        if (be->order)
            CK(cudaFree(be->order));
        be->order = NULL;
        be->order_cap = 0;
        TRY(dev_alloc(be, (void **)&be->order, (size_t)ts->norder * sizeof(int), "epoch order",
                      e));
        be->order_cap = ts->norder;
        be->order_epoch = -1;
    }
    if (ts->epoch != be->order_epoch || ts->order != be->order_src ||
        ts->norder != be->order_n) {
        for (int i = 0; i < ts->norder; i++)
            if (ts->order[i] < 0 || ts->order[i] >= be->data_n[0])
                return err_set(e, "cuda train_step: order holds image %d of %d", ts->order[i],
                               be->data_n[0]);
        CK(cudaMemcpyAsync(be->order, ts->order, (size_t)ts->norder * sizeof(int),
                           cudaMemcpyHostToDevice, be->stream));
        be->order_epoch = ts->epoch;
        be->order_src = ts->order;
        be->order_n = ts->norder;
    }
    /* from a pinned slot, so that the copy does not hold the host up; the
     * slot's previous copy finished long ago, but make sure */
    const unsigned slot = be->vars_next % VARS_RING;
    if (be->vars_next++ >= VARS_RING)
        CK(cudaEventSynchronize(be->vars_done[slot]));
    StepVars *v = &be->vars_ring[slot];
    v->offset = ts->offset;
    v->epoch = ts->epoch;
    v->step = (uint32_t)ts->step;
    v->lr = ts->lr;
    CK(cudaMemcpyAsync(be->vars, v, sizeof *v, cudaMemcpyHostToDevice, be->stream));
    CK(cudaEventRecord(be->vars_done[slot], be->stream));

    /* graphs for full batches once warm (lazy module loading and cuDNN's
     * first-call setup happen outside the capture) */
    if (be->use_graphs && ts->count == be->max_batch) {
        if (be->graph && !same_constants(ts, &be->graph_key))
            graph_drop(be);
        if (!be->graph && be->warm >= 2) {
            TRY(capture(be, &be->graph, ts->count, step_enqueue_arg, ts, e));
            if (be->graph)
                be->graph_key = *ts;
        }
        if (be->graph) {
            CK(cudaGraphLaunch(be->graph, be->stream));
            be->graph_launches++;
            return 0;
        }
        be->warm++;
    }
    TRY(step_enqueue(be, ts, e));
    prepared(be);               /* a batch size not seen before */
    return 0;
}

static int cuda_step_stats(Backend *be, double *loss_sum, int64_t *wrong, int64_t *bad_step,
                           Err *e)
{
    CK(cudaSetDevice(be->device));
    StepAcc a, zero_acc = {0.0, 0ull, ~0ull};
    CK(cudaMemcpyAsync(&a, be->acc, sizeof a, cudaMemcpyDeviceToHost, be->stream));
    CK(cudaStreamSynchronize(be->stream));
    CK(cudaMemcpy(be->acc, &zero_acc, sizeof zero_acc, cudaMemcpyHostToDevice));
    *loss_sum = a.loss;
    *wrong = (int64_t)a.wrong;
    *bad_step = a.bad_step == ~0ull ? -1 : (int64_t)a.bad_step;
    return 0;
}

static void cuda_describe(const Backend *be, char *buf, size_t len)
{
    int drv = 0, rt = 0, blas = 0;
    cudaDriverGetVersion(&drv);
    cudaRuntimeGetVersion(&rt);
    cublasGetVersion(be->blas, &blas);
    snprintf(buf, len, "%s, %d SMs, %.0f GiB, with CUDA driver %d.%d, runtime %d.%d, %s, "
                       "cuBLAS %d.%d.%d, in %s",
             be->rec_gpu, be->sms, (double)be->gpu_bytes / (1 << 30), drv / 1000,
             drv % 1000 / 10, rt / 1000, rt % 1000 / 10, be->rec_library, blas / 10000,
             blas % 10000 / 100, blas % 100, be->use_bf16 ? "bf16" : "fp32");
}

extern "C" const BackendOps backend_cuda = {
    "cuda",
    cuda_create,
    cuda_destroy,
    cuda_load,
    cuda_store,
    cuda_forward,
    cuda_backward,
    cuda_update,
    cuda_set_data,
    cuda_batch,
    cuda_train_step,
    cuda_step_stats,
    cuda_describe,
};

/* ---- the device-side draws, for tests ---- */

int backend_cuda_shake_draw(float *alpha, float *beta, int nblocks, int n, uint64_t seed,
                            int64_t step, int fwd, int bwd, int level, int device, Err *e)
{
    TRY(use_device(device, e));
    const size_t count = (size_t)nblocks * n;
    float *d = NULL;
    CK(cudaMalloc(&d, 2 * count * sizeof(float)));
    KERNEL(shake_draw_kernel, blocks_for(count), THREADS, 0)(d, d + count, nblocks, n, seed,
                                                      (uint32_t)step, fwd, bwd, level, NULL);
    cudaError_t st = cudaGetLastError();
    if (st == cudaSuccess)
        st = cudaMemcpy(alpha, d, count * sizeof(float), cudaMemcpyDeviceToHost);
    if (st == cudaSuccess)
        st = cudaMemcpy(beta, d + count, count * sizeof(float), cudaMemcpyDeviceToHost);
    cudaFree(d);
    CK(st);
    return 0;
}

int backend_cuda_data_batch(float *x, int *labels, const Dataset *ds, const int *idx, int count,
                            uint64_t seed, int epoch, int augment, int device, Err *e)
{
    TRY(use_device(device, e));
    if (ds->c > 3)
        return err_set(e, "cuda data batch: %d channels, at most 3", ds->c);
    const size_t img = (size_t)ds->c * ds->h * ds->w, out = (size_t)count * img;
    uint8_t *pix = NULL, *lab = NULL;
    int *didx = NULL, *dlab = NULL;
    float *dx = NULL;
    cudaError_t st = cudaMalloc(&pix, (size_t)ds->n * img);
    if (st == cudaSuccess)
        st = cudaMalloc(&lab, (size_t)ds->n);
    if (st == cudaSuccess)
        st = cudaMalloc(&didx, (size_t)count * sizeof(int));
    if (st == cudaSuccess)
        st = cudaMalloc(&dlab, (size_t)count * sizeof(int));
    if (st == cudaSuccess)
        st = cudaMalloc(&dx, out * sizeof(float));
    if (st == cudaSuccess)
        st = cudaMemcpy(pix, ds->pixels, (size_t)ds->n * img, cudaMemcpyHostToDevice);
    if (st == cudaSuccess)
        st = cudaMemcpy(lab, ds->labels, (size_t)ds->n, cudaMemcpyHostToDevice);
    if (st == cudaSuccess)
        st = cudaMemcpy(didx, idx, (size_t)count * sizeof(int), cudaMemcpyHostToDevice);
    if (st == cudaSuccess) {
        Norm nm = norm_of(ds);
        KERNEL(data_batch_kernel<float>, blocks_for(out), THREADS, 0)(
            dx, dlab, pix, lab, didx, count, ds->c, ds->h, ds->w, nm, ds->flip, seed, epoch,
            augment, 1, NULL);
        st = cudaGetLastError();
    }
    if (st == cudaSuccess)
        st = cudaMemcpy(x, dx, out * sizeof(float), cudaMemcpyDeviceToHost);
    if (st == cudaSuccess)
        st = cudaMemcpy(labels, dlab, (size_t)count * sizeof(int), cudaMemcpyDeviceToHost);
    cudaFree(pix);
    cudaFree(lab);
    cudaFree(didx);
    cudaFree(dlab);
    cudaFree(dx);
    CK(st);
    return 0;
}

long backend_cuda_graph_launches(const Backend *be)
{
    return be->graph_launches;
}

int backend_cuda_search_buffers(const Backend *be)
{
    return (be->find_x != NULL) + (be->find_y != NULL) + (be->find_w != NULL) +
           (be->find_ws != NULL);
}

int backend_cuda_conv_algos(const Backend *be, int i, int algo[3])
{
    if (i < 0 || i >= be->nconvs)
        return -1;
    const Conv *cv = be->convs[i];
    if (cv->idle || !cv->n)
        return 0;
    algo[0] = cv->fwd.algo[cv->fwd.cur];
    algo[1] = cv->bwd_data.algo[cv->bwd_data.cur];
    algo[2] = cv->bwd_filter.algo[cv->bwd_filter.cur];
    return 1;
}

int backend_cuda_merged_blocks(const Backend *be)
{
    int n = 0;
    for (int b = 0; b < be->m->nblocks; b++)
        n += be->blk[b].merged;
    return n;
}
