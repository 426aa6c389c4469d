/*
 * A CPU emulation of the part of the CUDA runtime that kernels/cuda.cu
 * uses, so that the tests run the cuda backend's own code -- its kernels,
 * its bookkeeping, its graph capture -- on machines without a GPU (CI).
 * Built only into the test program test_cuda_emu (tests/emu/cuda_emu.cc);
 * the real backend is untouched by it.
 *
 * What it models: device memory is host memory, filled with NaN bytes when
 * allocated (a kernel that reads what nobody wrote shows up as NaN), with a
 * fixed capacity so that running out can be tested; a kernel launch runs
 * every thread of every block in turn (threads of a block in descending
 * order, so that a thread that reads its block's shared memory after
 * __syncthreads finds what the higher-numbered threads wrote -- the only
 * pattern cuda.cu uses); streams run
 * their work at once unless capturing, when launches, copies and library
 * calls are recorded into the graph and replayed by cudaGraphLaunch.
 * What it cannot model: concurrency (races), the real libraries' numerics
 * and algorithm coverage, timing.
 */
#ifndef SHAKE_EMU_CUDA_RUNTIME_H
#define SHAKE_EMU_CUDA_RUNTIME_H

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <tuple>
#include <vector>

/* device code calls these unqualified, as CUDA provides them */
using std::isfinite;

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static

struct dim3 {
    unsigned x, y, z;
    dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

inline thread_local dim3 blockIdx, threadIdx, blockDim, gridDim;

inline void __syncthreads() {}

typedef enum {
    cudaSuccess = 0,
    cudaErrorInvalidValue = 1,
    cudaErrorMemoryAllocation = 2,
    cudaErrorInvalidDevice = 101,
    cudaErrorNoDevice = 100,
    cudaErrorStreamCaptureUnjoined = 904,
    cudaErrorStreamCaptureIsolation = 905,
} cudaError_t;

typedef enum {
    cudaMemcpyHostToHost = 0,
    cudaMemcpyHostToDevice = 1,
    cudaMemcpyDeviceToHost = 2,
    cudaMemcpyDeviceToDevice = 3,
    cudaMemcpyDefault = 4,
} cudaMemcpyKind;

typedef enum {
    cudaStreamCaptureModeGlobal = 0,
    cudaStreamCaptureModeThreadLocal = 1,
    cudaStreamCaptureModeRelaxed = 2,
} cudaStreamCaptureMode;

enum { cudaEventDisableTiming = 2 };

typedef std::vector<std::function<void()>> EmuOps;

struct EmuStream {
    EmuOps *capture;            /* recording into this while capturing */
    /* while capturing: which capture (a number), the stream whose capture
     * this one joined (NULL: its own), the streams that joined its capture
     * (the origin's), and how many of its operations were recorded, and of
     * those, how many another stream of the capture has waited for (all
     * must be, at the end) */
    unsigned long capture_id;
    EmuStream *origin;
    std::vector<EmuStream *> joined;
    size_t ops, waited;
};
typedef EmuStream *cudaStream_t;

struct EmuGraph {
    EmuOps ops;
};
typedef EmuGraph *cudaGraph_t;
typedef EmuGraph *cudaGraphExec_t;

struct EmuEvent {
    /* its last record: the stream, the capture it was made in (0: none),
     * and how many operations that stream had recorded by then */
    EmuStream *stream;
    unsigned long capture_id;
    size_t ops;
};
typedef EmuEvent *cudaEvent_t;

/* ---- the emulated device ---- */

/* Capacity of the emulated device memory (out-of-memory tests). */
static const size_t EMU_DEVICE_BYTES = (size_t)8 << 30;

inline size_t emu_used;
inline thread_local cudaError_t emu_last_error = cudaSuccess;
inline int emu_device;

inline cudaError_t emu_error(cudaError_t e)
{
    if (e != cudaSuccess)
        emu_last_error = e;
    return e;
}

/* Runs op now, or records it where the stream is capturing. */
inline void emu_enqueue(cudaStream_t s, std::function<void()> op)
{
    if (s && s->capture) {
        s->capture->push_back(std::move(op));
        s->ops++;
    } else
        op();
}

/* KERNEL(k, grid, block, stream)(args): every thread of every block. */
template <typename... P> struct EmuLaunch {
    void (*k)(P...);
    dim3 grid, block;
    cudaStream_t stream;
    /* the parameters' own types: arguments convert at the call (NULL to a
     * pointer, ...) and are kept by value, as a launch keeps them */
    void operator()(P... args)
    {
        auto kernel = k;
        dim3 g = grid, b = block;
        std::tuple<P...> params(args...);
        emu_enqueue(stream, [=]() {
            gridDim = g;
            blockDim = b;
            for (unsigned bz = 0; bz < g.z; bz++)
                for (unsigned by = 0; by < g.y; by++)
                    for (unsigned bx = 0; bx < g.x; bx++) {
                        blockIdx = dim3(bx, by, bz);
                        for (unsigned tz = b.z; tz-- > 0;)
                            for (unsigned ty = b.y; ty-- > 0;)
                                for (unsigned tx = b.x; tx-- > 0;) {
                                    threadIdx = dim3(tx, ty, tz);
                                    std::apply(kernel, params);
                                }
                    }
        });
    }
};

template <typename... P>
EmuLaunch<P...> emu_launch(void (*k)(P...), dim3 grid, dim3 block, cudaStream_t s)
{
    return EmuLaunch<P...>{k, grid, block, s};
}

#define KERNEL(k, grid, block, stream) \
    emu_launch(k, dim3(grid), dim3(block), (cudaStream_t)(stream))

/* ---- atomics (one thread at a time) ---- */

inline double atomicAdd(double *p, double v)
{
    double old = *p;
    *p += v;
    return old;
}

inline unsigned long long atomicAdd(unsigned long long *p, unsigned long long v)
{
    unsigned long long old = *p;
    *p += v;
    return old;
}

inline unsigned long long atomicMin(unsigned long long *p, unsigned long long v)
{
    unsigned long long old = *p;
    if (v < old)
        *p = v;
    return old;
}

/* ---- runtime API ---- */

inline const char *cudaGetErrorString(cudaError_t e)
{
    switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInvalidDevice: return "invalid device ordinal";
    case cudaErrorNoDevice: return "no CUDA-capable device is detected";
    case cudaErrorStreamCaptureUnjoined:
        return "capture sequence contains a fork that was not joined to the primary stream";
    case cudaErrorStreamCaptureIsolation:
        return "dependency created on uncaptured work in another stream";
    }
    return "unknown error";
}

inline cudaError_t cudaGetLastError()
{
    cudaError_t e = emu_last_error;
    emu_last_error = cudaSuccess;
    return e;
}

inline cudaError_t cudaGetDeviceCount(int *n)
{
    *n = 1;
    return cudaSuccess;
}

inline cudaError_t cudaSetDevice(int d)
{
    if (d != 0)
        return emu_error(cudaErrorInvalidDevice);
    emu_device = d;
    return cudaSuccess;
}

/* Each block carries its size in front, for cudaFree's bookkeeping. */
inline cudaError_t cudaMalloc(void **p, size_t bytes)
{
    *p = NULL;
    if (bytes > EMU_DEVICE_BYTES - emu_used)
        return emu_error(cudaErrorMemoryAllocation);
    unsigned char *b = (unsigned char *)malloc(bytes + 64);
    if (!b)
        return emu_error(cudaErrorMemoryAllocation);
    memcpy(b, &bytes, sizeof bytes);
    memset(b + 64, 0xff, bytes);  /* NaN in every float: unwritten reads show */
    emu_used += bytes;
    *p = b + 64;
    return cudaSuccess;
}

template <typename T> inline cudaError_t cudaMalloc(T **p, size_t bytes)
{
    return cudaMalloc((void **)p, bytes);
}

inline cudaError_t cudaFree(void *p)
{
    if (!p)
        return cudaSuccess;
    unsigned char *b = (unsigned char *)p - 64;
    size_t bytes;
    memcpy(&bytes, b, sizeof bytes);
    emu_used -= bytes;
    free(b);
    return cudaSuccess;
}

inline cudaError_t cudaMallocHost(void **p, size_t bytes)
{
    *p = malloc(bytes);
    return *p ? cudaSuccess : emu_error(cudaErrorMemoryAllocation);
}

inline cudaError_t cudaFreeHost(void *p)
{
    free(p);
    return cudaSuccess;
}

inline cudaError_t cudaMemGetInfo(size_t *free_b, size_t *total)
{
    *free_b = EMU_DEVICE_BYTES - emu_used;
    *total = EMU_DEVICE_BYTES;
    return cudaSuccess;
}

inline cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t n, cudaMemcpyKind,
                                   cudaStream_t s = 0)
{
    /* the source is read when the copy runs, as on a GPU; a host source is
     * staged now, as the runtime does for pageable memory */
    std::vector<unsigned char> staged((const unsigned char *)src, (const unsigned char *)src + n);
    emu_enqueue(s, [=]() { memcpy(dst, staged.data(), n); });
    return cudaSuccess;
}

inline cudaError_t cudaMemcpy(void *dst, const void *src, size_t n, cudaMemcpyKind)
{
    memcpy(dst, src, n);
    return cudaSuccess;
}

inline cudaError_t cudaMemset(void *p, int v, size_t n)
{
    memset(p, v, n);
    return cudaSuccess;
}

inline cudaError_t cudaStreamCreate(cudaStream_t *s)
{
    *s = new EmuStream{NULL, 0, NULL, {}, 0, 0};
    return cudaSuccess;
}

inline cudaError_t cudaStreamSynchronize(cudaStream_t s)
{
    return s && s->capture ? emu_error(cudaErrorInvalidValue) : cudaSuccess;
}

inline cudaError_t cudaStreamDestroy(cudaStream_t s)
{
    delete s;
    return cudaSuccess;
}

inline cudaError_t cudaEventCreateWithFlags(cudaEvent_t *ev, unsigned)
{
    *ev = new EmuEvent{NULL, 0, 0};
    return cudaSuccess;
}

/*
 * Streams run their work at once, in the order the host queues it: a
 * serialization that every event order allows, so outside a capture an
 * event orders nothing more. Inside one, as in CUDA: a stream that waits
 * for an event recorded in a capturing stream joins that capture (its
 * work is recorded into the same graph, in the order the host queued it),
 * and the capture may only end once every joined stream's work has been
 * waited for by another stream of the capture (else
 * cudaErrorStreamCaptureUnjoined). A capturing stream may not wait for an
 * event recorded outside its capture (cudaErrorStreamCaptureIsolation).
 */
inline unsigned long emu_captures;

inline cudaError_t cudaEventRecord(cudaEvent_t ev, cudaStream_t s)
{
    if (!ev)
        return emu_error(cudaErrorInvalidValue);
    ev->stream = s;
    ev->capture_id = s && s->capture ? s->capture_id : 0;
    ev->ops = s && s->capture ? s->ops : 0;
    return cudaSuccess;
}

inline cudaError_t cudaStreamWaitEvent(cudaStream_t s, cudaEvent_t ev, unsigned flags = 0)
{
    if (!ev || !s || flags != 0)
        return emu_error(cudaErrorInvalidValue);
    EmuStream *src = ev->stream;
    /* recorded in a capture that is still going on */
    const int live = ev->capture_id && src->capture && src->capture_id == ev->capture_id;
    if (s->capture && !live)
        return emu_error(cudaErrorStreamCaptureIsolation);
    if (!live || src == s)
        return cudaSuccess;
    if (ev->ops > src->waited)
        src->waited = ev->ops;
    if (!s->capture) {
        EmuStream *origin = src->origin ? src->origin : src;
        s->capture = src->capture;
        s->capture_id = src->capture_id;
        s->origin = origin;
        s->ops = s->waited = 0;
        origin->joined.push_back(s);
    } else if (s->capture != src->capture) {
        return emu_error(cudaErrorInvalidValue);
    }
    return cudaSuccess;
}

inline cudaError_t cudaEventSynchronize(cudaEvent_t) { return cudaSuccess; }

inline cudaError_t cudaEventDestroy(cudaEvent_t ev)
{
    delete ev;
    return cudaSuccess;
}

inline cudaError_t cudaStreamBeginCapture(cudaStream_t s, cudaStreamCaptureMode)
{
    if (!s || s->capture)
        return emu_error(cudaErrorInvalidValue);
    s->capture = new EmuOps;
    s->capture_id = ++emu_captures;
    s->origin = NULL;
    s->joined.clear();
    s->ops = s->waited = 0;
    return cudaSuccess;
}

/* the capture ends either way: its streams leave it */
inline cudaError_t cudaStreamEndCapture(cudaStream_t s, cudaGraph_t *g)
{
    *g = NULL;
    if (!s || !s->capture || s->origin)
        return emu_error(cudaErrorInvalidValue);
    int unjoined = 0;
    for (EmuStream *j : s->joined) {
        unjoined |= j->waited < j->ops;
        j->capture = NULL;
        j->origin = NULL;
    }
    s->joined.clear();
    EmuOps *ops = s->capture;
    s->capture = NULL;
    if (unjoined) {
        delete ops;
        return emu_error(cudaErrorStreamCaptureUnjoined);
    }
    *g = new EmuGraph{std::move(*ops)};
    delete ops;
    return cudaSuccess;
}

inline cudaError_t cudaGraphInstantiate(cudaGraphExec_t *exec, cudaGraph_t g,
                                        unsigned long long)
{
    *exec = new EmuGraph{g->ops};
    return cudaSuccess;
}

inline cudaError_t cudaGraphDestroy(cudaGraph_t g)
{
    delete g;
    return cudaSuccess;
}

inline cudaError_t cudaGraphExecDestroy(cudaGraphExec_t g)
{
    delete g;
    return cudaSuccess;
}

inline cudaError_t cudaGraphLaunch(cudaGraphExec_t g, cudaStream_t s)
{
    for (const auto &op : g->ops)
        emu_enqueue(s, op);
    return cudaSuccess;
}

#endif
