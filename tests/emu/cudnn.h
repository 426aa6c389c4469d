/*
 * The cuDNN calls kernels/cuda.cu makes, emulated on the CPU (see
 * cuda_runtime.h): 2-D cross-correlation in NHWC with KRSC filters, groups,
 * stride, padding and alpha/beta blending, in float32 or bf16 (accumulated
 * in double, stored in the descriptor's type), as cuDNN documents them.
 *
 * The heuristics offer two candidates per direction, the first of which
 * reports "not supported" when it runs (cuDNN may do this), so that the
 * backend's fallback to the next candidate is exercised; each asks for a
 * small workspace that must be passed in.
 */
#ifndef SHAKE_EMU_CUDNN_H
#define SHAKE_EMU_CUDNN_H

#include "cuda_bf16.h"
#include "cuda_runtime.h"

typedef enum {
    CUDNN_STATUS_SUCCESS = 0,
    CUDNN_STATUS_BAD_PARAM = 2000,
    CUDNN_STATUS_NOT_SUPPORTED = 3000,
} cudnnStatus_t;

typedef enum { CUDNN_DATA_FLOAT = 0, CUDNN_DATA_BFLOAT16 = 9 } cudnnDataType_t;
typedef enum { CUDNN_TENSOR_NCHW = 0, CUDNN_TENSOR_NHWC = 1 } cudnnTensorFormat_t;
typedef enum { CUDNN_CONVOLUTION = 0, CUDNN_CROSS_CORRELATION = 1 } cudnnConvolutionMode_t;
typedef enum {
    CUDNN_DEFAULT_MATH = 0,
    CUDNN_TENSOR_OP_MATH = 1,
    CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION = 2,
    CUDNN_FMA_MATH = 3,
} cudnnMathType_t;
typedef enum { CUDNN_NON_DETERMINISTIC = 0, CUDNN_DETERMINISTIC = 1 } cudnnDeterminism_t;

typedef enum {
    CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM = 0,
    CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM = 1,
    CUDNN_CONVOLUTION_FWD_ALGO_GEMM = 2,
    CUDNN_CONVOLUTION_FWD_ALGO_DIRECT = 3,
    CUDNN_CONVOLUTION_FWD_ALGO_COUNT = 8,
} cudnnConvolutionFwdAlgo_t;
typedef enum {
    CUDNN_CONVOLUTION_BWD_DATA_ALGO_0 = 0,
    CUDNN_CONVOLUTION_BWD_DATA_ALGO_1 = 1,
    CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT = 6,
} cudnnConvolutionBwdDataAlgo_t;
typedef enum {
    CUDNN_CONVOLUTION_BWD_FILTER_ALGO_0 = 0,
    CUDNN_CONVOLUTION_BWD_FILTER_ALGO_1 = 1,
    CUDNN_CONVOLUTION_BWD_FILTER_ALGO_3 = 3,
    CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT = 7,
} cudnnConvolutionBwdFilterAlgo_t;

template <typename A> struct EmuAlgoPerf {
    A algo;
    cudnnStatus_t status;
    float time;
    size_t memory;
    cudnnDeterminism_t determinism;
    cudnnMathType_t mathType;
    int reserved[3];
};
typedef EmuAlgoPerf<cudnnConvolutionFwdAlgo_t> cudnnConvolutionFwdAlgoPerf_t;
typedef EmuAlgoPerf<cudnnConvolutionBwdDataAlgo_t> cudnnConvolutionBwdDataAlgoPerf_t;
typedef EmuAlgoPerf<cudnnConvolutionBwdFilterAlgo_t> cudnnConvolutionBwdFilterAlgoPerf_t;

struct EmuDnn {
    cudaStream_t stream;
};
struct EmuTensor {
    cudnnDataType_t type;
    int n, c, h, w;
};
struct EmuFilter {
    cudnnDataType_t type;
    int k, c, r, s;
};
struct EmuConv {
    int pad_h, pad_w, u, v, groups;
    cudnnMathType_t math;
};
typedef EmuDnn *cudnnHandle_t;
typedef EmuTensor *cudnnTensorDescriptor_t;
typedef EmuFilter *cudnnFilterDescriptor_t;
typedef EmuConv *cudnnConvolutionDescriptor_t;

inline const char *cudnnGetErrorString(cudnnStatus_t s)
{
    switch (s) {
    case CUDNN_STATUS_SUCCESS: return "CUDNN_STATUS_SUCCESS";
    case CUDNN_STATUS_BAD_PARAM: return "CUDNN_STATUS_BAD_PARAM";
    case CUDNN_STATUS_NOT_SUPPORTED: return "CUDNN_STATUS_NOT_SUPPORTED";
    }
    return "CUDNN_STATUS_UNKNOWN";
}

inline size_t cudnnGetVersion() { return 90000; }

inline cudnnStatus_t cudnnCreate(cudnnHandle_t *h)
{
    *h = new EmuDnn{NULL};
    return CUDNN_STATUS_SUCCESS;
}
inline cudnnStatus_t cudnnDestroy(cudnnHandle_t h)
{
    delete h;
    return CUDNN_STATUS_SUCCESS;
}
inline cudnnStatus_t cudnnSetStream(cudnnHandle_t h, cudaStream_t s)
{
    h->stream = s;
    return CUDNN_STATUS_SUCCESS;
}

inline cudnnStatus_t cudnnCreateTensorDescriptor(cudnnTensorDescriptor_t *d)
{
    *d = new EmuTensor{CUDNN_DATA_FLOAT, 0, 0, 0, 0};
    return CUDNN_STATUS_SUCCESS;
}
inline cudnnStatus_t cudnnDestroyTensorDescriptor(cudnnTensorDescriptor_t d)
{
    delete d;
    return CUDNN_STATUS_SUCCESS;
}
inline cudnnStatus_t cudnnSetTensor4dDescriptor(cudnnTensorDescriptor_t d, cudnnTensorFormat_t f,
                                                cudnnDataType_t t, int n, int c, int h, int w)
{
    if (f != CUDNN_TENSOR_NHWC || n < 1 || c < 1 || h < 1 || w < 1)
        return CUDNN_STATUS_BAD_PARAM;
    *d = EmuTensor{t, n, c, h, w};
    return CUDNN_STATUS_SUCCESS;
}
inline cudnnStatus_t cudnnCreateFilterDescriptor(cudnnFilterDescriptor_t *d)
{
    *d = new EmuFilter{CUDNN_DATA_FLOAT, 0, 0, 0, 0};
    return CUDNN_STATUS_SUCCESS;
}
inline cudnnStatus_t cudnnDestroyFilterDescriptor(cudnnFilterDescriptor_t d)
{
    delete d;
    return CUDNN_STATUS_SUCCESS;
}
inline cudnnStatus_t cudnnSetFilter4dDescriptor(cudnnFilterDescriptor_t d, cudnnDataType_t t,
                                                cudnnTensorFormat_t f, int k, int c, int r, int s)
{
    if (f != CUDNN_TENSOR_NHWC)
        return CUDNN_STATUS_BAD_PARAM;
    *d = EmuFilter{t, k, c, r, s};
    return CUDNN_STATUS_SUCCESS;
}
inline cudnnStatus_t cudnnCreateConvolutionDescriptor(cudnnConvolutionDescriptor_t *d)
{
    *d = new EmuConv{0, 0, 1, 1, 1, CUDNN_DEFAULT_MATH};
    return CUDNN_STATUS_SUCCESS;
}
inline cudnnStatus_t cudnnDestroyConvolutionDescriptor(cudnnConvolutionDescriptor_t d)
{
    delete d;
    return CUDNN_STATUS_SUCCESS;
}
inline cudnnStatus_t cudnnSetConvolution2dDescriptor(cudnnConvolutionDescriptor_t d, int pad_h,
                                                     int pad_w, int u, int v, int dil_h, int dil_w,
                                                     cudnnConvolutionMode_t mode,
                                                     cudnnDataType_t)
{
    if (dil_h != 1 || dil_w != 1 || mode != CUDNN_CROSS_CORRELATION || u < 1 || v < 1)
        return CUDNN_STATUS_BAD_PARAM;
    d->pad_h = pad_h;
    d->pad_w = pad_w;
    d->u = u;
    d->v = v;
    return CUDNN_STATUS_SUCCESS;
}
inline cudnnStatus_t cudnnSetConvolutionGroupCount(cudnnConvolutionDescriptor_t d, int g)
{
    d->groups = g;
    return CUDNN_STATUS_SUCCESS;
}
inline cudnnStatus_t cudnnSetConvolutionMathType(cudnnConvolutionDescriptor_t d,
                                                 cudnnMathType_t m)
{
    d->math = m;
    return CUDNN_STATUS_SUCCESS;
}

/* ---- shapes, heuristics, workspace ---- */

static const size_t EMU_DNN_WS = 4096;

/* The descriptors describe one convolution, y = conv(x, w)? */
inline bool emu_conv_ok(const EmuTensor *x, const EmuFilter *w, const EmuConv *c,
                        const EmuTensor *y)
{
    if (x->type != w->type || y->type != x->type || c->groups < 1 || x->c % c->groups ||
        w->k % c->groups || w->c != x->c / c->groups || y->c != w->k || y->n != x->n)
        return false;
    int oh = (x->h + 2 * c->pad_h - w->r) / c->u + 1;
    int ow = (x->w + 2 * c->pad_w - w->s) / c->v + 1;
    return oh == y->h && ow == y->w;
}

template <typename A>
inline void emu_offer(EmuAlgoPerf<A> *perf, int requested, int *returned, A first, A second,
                      cudnnMathType_t math)
{
    const A algos[2] = {first, second};
    *returned = requested < 2 ? requested : 2;
    for (int i = 0; i < *returned; i++)
        perf[i] = EmuAlgoPerf<A>{algos[i], CUDNN_STATUS_SUCCESS, 1.0f, EMU_DNN_WS,
                                 CUDNN_DETERMINISTIC, math, {0, 0, 0}};
}

inline cudnnStatus_t cudnnGetConvolutionForwardAlgorithm_v7(
    cudnnHandle_t, cudnnTensorDescriptor_t x, cudnnFilterDescriptor_t w,
    cudnnConvolutionDescriptor_t c, cudnnTensorDescriptor_t y, int requested, int *returned,
    cudnnConvolutionFwdAlgoPerf_t *perf)
{
    if (!emu_conv_ok(x, w, c, y))
        return CUDNN_STATUS_BAD_PARAM;
    emu_offer(perf, requested, returned, CUDNN_CONVOLUTION_FWD_ALGO_GEMM,
              CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM, c->math);
    return CUDNN_STATUS_SUCCESS;
}
inline cudnnStatus_t cudnnGetConvolutionBackwardDataAlgorithm_v7(
    cudnnHandle_t, cudnnFilterDescriptor_t w, cudnnTensorDescriptor_t y,
    cudnnConvolutionDescriptor_t c, cudnnTensorDescriptor_t x, int requested, int *returned,
    cudnnConvolutionBwdDataAlgoPerf_t *perf)
{
    if (!emu_conv_ok(x, w, c, y))
        return CUDNN_STATUS_BAD_PARAM;
    emu_offer(perf, requested, returned, CUDNN_CONVOLUTION_BWD_DATA_ALGO_0,
              CUDNN_CONVOLUTION_BWD_DATA_ALGO_1, c->math);
    return CUDNN_STATUS_SUCCESS;
}
inline cudnnStatus_t cudnnGetConvolutionBackwardFilterAlgorithm_v7(
    cudnnHandle_t, cudnnTensorDescriptor_t x, cudnnTensorDescriptor_t y,
    cudnnConvolutionDescriptor_t c, cudnnFilterDescriptor_t w, int requested, int *returned,
    cudnnConvolutionBwdFilterAlgoPerf_t *perf)
{
    if (!emu_conv_ok(x, w, c, y))
        return CUDNN_STATUS_BAD_PARAM;
    emu_offer(perf, requested, returned, CUDNN_CONVOLUTION_BWD_FILTER_ALGO_0,
              CUDNN_CONVOLUTION_BWD_FILTER_ALGO_1, c->math);
    return CUDNN_STATUS_SUCCESS;
}
inline cudnnStatus_t cudnnGetConvolutionForwardWorkspaceSize(
    cudnnHandle_t, cudnnTensorDescriptor_t x, cudnnFilterDescriptor_t w,
    cudnnConvolutionDescriptor_t c, cudnnTensorDescriptor_t y, cudnnConvolutionFwdAlgo_t,
    size_t *ws)
{
    *ws = EMU_DNN_WS;
    return emu_conv_ok(x, w, c, y) ? CUDNN_STATUS_SUCCESS : CUDNN_STATUS_BAD_PARAM;
}
inline cudnnStatus_t cudnnGetConvolutionBackwardDataWorkspaceSize(
    cudnnHandle_t, cudnnFilterDescriptor_t w, cudnnTensorDescriptor_t y,
    cudnnConvolutionDescriptor_t c, cudnnTensorDescriptor_t x, cudnnConvolutionBwdDataAlgo_t,
    size_t *ws)
{
    *ws = EMU_DNN_WS;
    return emu_conv_ok(x, w, c, y) ? CUDNN_STATUS_SUCCESS : CUDNN_STATUS_BAD_PARAM;
}
inline cudnnStatus_t cudnnGetConvolutionBackwardFilterWorkspaceSize(
    cudnnHandle_t, cudnnTensorDescriptor_t x, cudnnTensorDescriptor_t y,
    cudnnConvolutionDescriptor_t c, cudnnFilterDescriptor_t w, cudnnConvolutionBwdFilterAlgo_t,
    size_t *ws)
{
    *ws = EMU_DNN_WS;
    return emu_conv_ok(x, w, c, y) ? CUDNN_STATUS_SUCCESS : CUDNN_STATUS_BAD_PARAM;
}

/* ---- the convolutions ---- */

inline double emu_load(const void *p, cudnnDataType_t t, size_t i)
{
    if (t == CUDNN_DATA_BFLOAT16)
        return __bfloat162float(((const __nv_bfloat16 *)p)[i]);
    return ((const float *)p)[i];
}

inline void emu_store(void *p, cudnnDataType_t t, size_t i, double v)
{
    if (t == CUDNN_DATA_BFLOAT16)
        ((__nv_bfloat16 *)p)[i] = __float2bfloat16_rn((float)v);
    else
        ((float *)p)[i] = (float)v;
}

/* The common checks of a call: shapes, scaling factors, workspace, and the
 * first candidate's "not supported". */
inline cudnnStatus_t emu_conv_call(const EmuTensor *x, const EmuFilter *w, const EmuConv *c,
                                   const EmuTensor *y, int algo, int unsupported, size_t ws)
{
    if (!emu_conv_ok(x, w, c, y))
        return CUDNN_STATUS_BAD_PARAM;
    if (algo == unsupported)
        return CUDNN_STATUS_NOT_SUPPORTED;
    if (ws < EMU_DNN_WS)
        return CUDNN_STATUS_BAD_PARAM;
    return CUDNN_STATUS_SUCCESS;
}

/* A tensor of the descriptor's type as floats (bf16 widened). */
inline std::vector<float> emu_floats(const void *p, cudnnDataType_t t, size_t n)
{
    std::vector<float> v(n);
    for (size_t i = 0; i < n; i++)
        v[i] = (float)emu_load(p, t, i);
    return v;
}

/* out = alpha * acc + beta * out, in out's type (beta 0: out not read) */
inline void emu_blend(void *out, cudnnDataType_t t, const std::vector<double> &acc, double a,
                      double b)
{
    for (size_t i = 0; i < acc.size(); i++)
        emu_store(out, t, i, a * acc[i] + (b != 0 ? b * emu_load(out, t, i) : 0.0));
}

inline size_t emu_count(const EmuTensor *t)
{
    return (size_t)t->n * t->c * t->h * t->w;
}

/*
 * The three products of a convolution, y (n, oh, ow, k) from x (n, h, w, c)
 * and w (k, r, s, c/g): mode 0 accumulates y, 1 accumulates x (backward
 * data, from y), 2 accumulates w (backward filter). Parallel over what each
 * mode writes apart: images for 0 and 1, output channels for 2.
 */
inline void emu_conv(int mode, const EmuTensor &X, const EmuFilter &W, const EmuConv &C,
                     const EmuTensor &Y, const float *x, const float *w, const float *y,
                     double *acc)
{
    const int cg = X.c / C.groups, kg = W.k / C.groups;
    const int outer = mode == 2 ? W.k : Y.n;
#pragma omp parallel for schedule(static)
    for (int o = 0; o < outer; o++) {
        const int n0 = mode == 2 ? 0 : o, n1 = mode == 2 ? Y.n : o + 1;
        const int k0 = mode == 2 ? o : 0, k1 = mode == 2 ? o + 1 : Y.c;
        for (int n = n0; n < n1; n++)
            for (int oy = 0; oy < Y.h; oy++)
                for (int ox = 0; ox < Y.w; ox++)
                    for (int k = k0; k < k1; k++) {
                        const int g = k / kg;
                        const size_t yi = (((size_t)n * Y.h + oy) * Y.w + ox) * Y.c + k;
                        double sum = 0;
                        for (int r = 0; r < W.r; r++) {
                            const int iy = oy * C.u - C.pad_h + r;
                            if (iy < 0 || iy >= X.h)
                                continue;
                            for (int s = 0; s < W.s; s++) {
                                const int ix = ox * C.v - C.pad_w + s;
                                if (ix < 0 || ix >= X.w)
                                    continue;
                                const size_t xb =
                                    (((size_t)n * X.h + iy) * X.w + ix) * X.c + (size_t)g * cg;
                                const size_t wb = (((size_t)k * W.r + r) * W.s + s) * W.c;
                                if (mode == 0)
                                    for (int ci = 0; ci < cg; ci++)
                                        sum += (double)x[xb + ci] * w[wb + ci];
                                else if (mode == 1)
                                    for (int ci = 0; ci < cg; ci++)
                                        acc[xb + ci] += (double)y[yi] * w[wb + ci];
                                else
                                    for (int ci = 0; ci < cg; ci++)
                                        acc[wb + ci] += (double)y[yi] * x[xb + ci];
                            }
                        }
                        if (mode == 0)
                            acc[yi] = sum;
                    }
    }
}

inline cudnnStatus_t cudnnConvolutionForward(cudnnHandle_t h, const void *alpha,
                                             cudnnTensorDescriptor_t xd, const void *x,
                                             cudnnFilterDescriptor_t wd, const void *w,
                                             cudnnConvolutionDescriptor_t cd,
                                             cudnnConvolutionFwdAlgo_t algo, void *, size_t ws,
                                             const void *beta, cudnnTensorDescriptor_t yd,
                                             void *y)
{
    cudnnStatus_t st = emu_conv_call(xd, wd, cd, yd, algo, CUDNN_CONVOLUTION_FWD_ALGO_GEMM, ws);
    if (st != CUDNN_STATUS_SUCCESS)
        return st;
    const double a = *(const float *)alpha, b = *(const float *)beta;
    const EmuTensor X = *xd, Y = *yd;
    const EmuFilter W = *wd;
    const EmuConv C = *cd;
    emu_name = "conv_fwd";
    emu_enqueue(h->stream, [=]() {
        std::vector<float> xf = emu_floats(x, X.type, emu_count(&X));
        std::vector<float> wf = emu_floats(w, W.type, (size_t)W.k * W.r * W.s * W.c);
        std::vector<double> acc(emu_count(&Y), 0.0);
        emu_conv(0, X, W, C, Y, xf.data(), wf.data(), NULL, acc.data());
        emu_blend(y, Y.type, acc, a, b);
    });
    return CUDNN_STATUS_SUCCESS;
}

inline cudnnStatus_t cudnnConvolutionBackwardData(cudnnHandle_t h, const void *alpha,
                                                  cudnnFilterDescriptor_t wd, const void *w,
                                                  cudnnTensorDescriptor_t dyd, const void *dy,
                                                  cudnnConvolutionDescriptor_t cd,
                                                  cudnnConvolutionBwdDataAlgo_t algo, void *,
                                                  size_t ws, const void *beta,
                                                  cudnnTensorDescriptor_t dxd, void *dx)
{
    cudnnStatus_t st =
        emu_conv_call(dxd, wd, cd, dyd, algo, CUDNN_CONVOLUTION_BWD_DATA_ALGO_0, ws);
    if (st != CUDNN_STATUS_SUCCESS)
        return st;
    const double a = *(const float *)alpha, b = *(const float *)beta;
    const EmuTensor X = *dxd, Y = *dyd;
    const EmuFilter W = *wd;
    const EmuConv C = *cd;
    emu_name = "conv_bwd_data";
    emu_enqueue(h->stream, [=]() {
        std::vector<float> yf = emu_floats(dy, Y.type, emu_count(&Y));
        std::vector<float> wf = emu_floats(w, W.type, (size_t)W.k * W.r * W.s * W.c);
        std::vector<double> acc(emu_count(&X), 0.0);
        emu_conv(1, X, W, C, Y, NULL, wf.data(), yf.data(), acc.data());
        emu_blend(dx, X.type, acc, a, b);
    });
    return CUDNN_STATUS_SUCCESS;
}

inline cudnnStatus_t cudnnConvolutionBackwardFilter(cudnnHandle_t h, const void *alpha,
                                                    cudnnTensorDescriptor_t xd, const void *x,
                                                    cudnnTensorDescriptor_t dyd, const void *dy,
                                                    cudnnConvolutionDescriptor_t cd,
                                                    cudnnConvolutionBwdFilterAlgo_t algo, void *,
                                                    size_t ws, const void *beta,
                                                    cudnnFilterDescriptor_t dwd, void *dw)
{
    cudnnStatus_t st =
        emu_conv_call(xd, dwd, cd, dyd, algo, CUDNN_CONVOLUTION_BWD_FILTER_ALGO_0, ws);
    if (st != CUDNN_STATUS_SUCCESS)
        return st;
    const double a = *(const float *)alpha, b = *(const float *)beta;
    const EmuTensor X = *xd, Y = *dyd;
    const EmuFilter W = *dwd;
    const EmuConv C = *cd;
    emu_name = "conv_bwd_filter";
    emu_enqueue(h->stream, [=]() {
        std::vector<float> xf = emu_floats(x, X.type, emu_count(&X));
        std::vector<float> yf = emu_floats(dy, Y.type, emu_count(&Y));
        std::vector<double> acc((size_t)W.k * W.r * W.s * W.c, 0.0);
        emu_conv(2, X, W, C, Y, xf.data(), NULL, yf.data(), acc.data());
        emu_blend(dw, W.type, acc, a, b);
    });
    return CUDNN_STATUS_SUCCESS;
}

/*
 * cuDNN's Find: runs each candidate on the buffers given and returns them
 * fastest first, those that cannot run with a status saying so. Here: the
 * candidate that runs writes its output once, and comes first; the one
 * that reports "not supported" comes last with that status.
 * SHAKE_EMU_FIND_FLIP=1 stands for a Find whose timings came out otherwise
 * (as they may from one process to the next): the forward's first
 * candidate is then IMPLICIT_PRECOMP_GEMM (which runs as well), not
 * IMPLICIT_GEMM. =2 flips every other forward Find of the process (as
 * timings may from one call to the next).
 */
inline unsigned long emu_find_calls;
/* The end of each Find: st, the status of running one candidate and then
 * listing them; the list reordered as above; returns once it has run, as
 * cuDNN's Find does. */
template <typename A>
inline cudnnStatus_t emu_found(cudnnHandle_t h, cudnnStatus_t st, EmuAlgoPerf<A> *perf,
                               const int *returned)
{
    if (st == CUDNN_STATUS_SUCCESS && *returned >= 2) {
        EmuAlgoPerf<A> unsupported = perf[0];
        unsupported.status = CUDNN_STATUS_NOT_SUPPORTED;
        perf[0] = perf[1];
        perf[0].time = 0.5f;
        perf[1] = unsupported;
    }
    cudaStreamSynchronize(h->stream);
    return st;
}

inline cudnnStatus_t cudnnFindConvolutionForwardAlgorithmEx(
    cudnnHandle_t h, cudnnTensorDescriptor_t xd, const void *x, cudnnFilterDescriptor_t wd,
    const void *w, cudnnConvolutionDescriptor_t cd, cudnnTensorDescriptor_t yd, void *y,
    int requested, int *returned, cudnnConvolutionFwdAlgoPerf_t *perf, void *ws, size_t wsb)
{
    const float one = 1.0f, zero = 0.0f;
    cudnnStatus_t st = cudnnConvolutionForward(h, &one, xd, x, wd, w, cd,
                                               CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM, ws, wsb,
                                               &zero, yd, y);
    if (st == CUDNN_STATUS_SUCCESS)
        st = cudnnGetConvolutionForwardAlgorithm_v7(h, xd, wd, cd, yd, requested, returned, perf);
    st = emu_found(h, st, perf, returned);
    const char *flip = getenv("SHAKE_EMU_FIND_FLIP");
    const int odd = emu_find_calls++ % 2 == 1;
    if (st == CUDNN_STATUS_SUCCESS && *returned >= 1 && flip &&
        (strcmp(flip, "1") == 0 || (strcmp(flip, "2") == 0 && odd)))
        perf[0].algo = CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM;
    return st;
}

inline cudnnStatus_t cudnnFindConvolutionBackwardDataAlgorithmEx(
    cudnnHandle_t h, cudnnFilterDescriptor_t wd, const void *w, cudnnTensorDescriptor_t dyd,
    const void *dy, cudnnConvolutionDescriptor_t cd, cudnnTensorDescriptor_t dxd, void *dx,
    int requested, int *returned, cudnnConvolutionBwdDataAlgoPerf_t *perf, void *ws, size_t wsb)
{
    const float one = 1.0f, zero = 0.0f;
    cudnnStatus_t st = cudnnConvolutionBackwardData(h, &one, wd, w, dyd, dy, cd,
                                                    CUDNN_CONVOLUTION_BWD_DATA_ALGO_1, ws, wsb,
                                                    &zero, dxd, dx);
    if (st == CUDNN_STATUS_SUCCESS)
        st = cudnnGetConvolutionBackwardDataAlgorithm_v7(h, wd, dyd, cd, dxd, requested, returned,
                                                         perf);
    return emu_found(h, st, perf, returned);
}

inline cudnnStatus_t cudnnFindConvolutionBackwardFilterAlgorithmEx(
    cudnnHandle_t h, cudnnTensorDescriptor_t xd, const void *x, cudnnTensorDescriptor_t dyd,
    const void *dy, cudnnConvolutionDescriptor_t cd, cudnnFilterDescriptor_t dwd, void *dw,
    int requested, int *returned, cudnnConvolutionBwdFilterAlgoPerf_t *perf, void *ws,
    size_t wsb)
{
    const float one = 1.0f, zero = 0.0f;
    cudnnStatus_t st = cudnnConvolutionBackwardFilter(h, &one, xd, x, dyd, dy, cd,
                                                      CUDNN_CONVOLUTION_BWD_FILTER_ALGO_1, ws,
                                                      wsb, &zero, dwd, dw);
    if (st == CUDNN_STATUS_SUCCESS)
        st = cudnnGetConvolutionBackwardFilterAlgorithm_v7(h, xd, dyd, cd, dwd, requested,
                                                           returned, perf);
    return emu_found(h, st, perf, returned);
}

#endif
