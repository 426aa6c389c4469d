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
 * every block in turn, and a block's threads one after another, each up to
 * the next __syncthreads, where it waits for the others (fiber.h: as
 * fibers, in ascending order at one launch and descending at the next, so
 * that a missing barrier shows). Streams, as on a GPU, run their work later:
 * each launch, copy and library call becomes a node that depends on its
 * stream's previous one and on the events the stream waited for, and a
 * synchronization (of a stream, an event, or the device by a synchronous
 * copy, set or free) runs what it waits for in an order that those
 * dependencies allow: mostly the node queued last among those ready, now
 * and then one at random (seeded by SHAKE_EMU_SEED, default 1). Work on two
 * streams that nothing orders so runs in either order, and most often the
 * later-queued first: a consumer whose wait for its producer is missing
 * runs before it, a reader whose buffer is not waited for before reuse
 * runs after the overwrite; either shows up as a wrong or NaN result, as
 * a race would on a GPU. While a
 * stream captures, its nodes go into the graph instead, with the same
 * dependencies, and cudaGraphLaunch queues them.
 * Each captured graph's census (its launches by name, and which lie on its
 * longest chain) is kept for tests/emu/census.h.
 * What it cannot model: two kernels truly at once (a race inside one
 * kernel), the real libraries' numerics and algorithm coverage, timing.
 */
#ifndef SHAKE_EMU_CUDA_RUNTIME_H
#define SHAKE_EMU_CUDA_RUNTIME_H

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <algorithm>
#include <functional>
#include <string>
#include <tuple>
#include <unordered_map>
#include <vector>

/* device code calls these unqualified, as CUDA provides them */
using std::isfinite;

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static
#define __launch_bounds__(...)

struct dim3 {
    unsigned x, y, z;
    dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

inline thread_local dim3 blockIdx, threadIdx, blockDim, gridDim;

#include "fiber.h"

typedef enum {
    cudaSuccess = 0,
    cudaErrorInvalidValue = 1,
    cudaErrorMemoryAllocation = 2,
    cudaErrorInvalidDevice = 101,
    cudaErrorNoDevice = 100,
    cudaErrorNoKernelImageForDevice = 209,
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

/* A node of queued work; op empty for a node that only waits. */
struct EmuNode {
    std::function<void()> op;
    std::vector<EmuNode *> deps, next;  /* what it waits for; what waits for it */
    int missing;                        /* deps not done yet */
    bool done;
    unsigned long wanted;               /* by the emu_run of this number */
    unsigned long seq;                  /* queued as the seq-th node */
};

/* A captured node: deps are indices of earlier nodes of the same graph;
 * name: the kernel or library call it runs (NULL: a node that only waits). */
struct EmuCapNode {
    std::function<void()> op;
    std::vector<int> deps;
    const char *name;
};

/* the name the next queued operation gets (KERNEL and the library calls
 * set it; anything else is "?") */
inline const char *emu_name = "?";
typedef std::vector<EmuCapNode> EmuOps;

struct EmuStream {
    EmuNode *last;              /* its last node queued and not yet run (NULL: none) */
    EmuOps *capture;            /* recording into this while capturing */
    int cap_last;               /* while capturing: its last node there (-1: none) */
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
     * how many operations that stream had recorded by then, and the node
     * it stands for (queued, not run yet) or, in a capture, its index */
    EmuStream *stream;
    unsigned long capture_id;
    size_t ops;
    EmuNode *node;
    int cap_node;
};
typedef EmuEvent *cudaEvent_t;

/* ---- the emulated device ---- */

/* Capacity of the emulated device memory (out-of-memory tests). */
static const size_t EMU_DEVICE_BYTES = (size_t)8 << 30;

/* The emulated GPU's compute capability, major * 10 + minor: SHAKE_EMU_SM
 * (default 90). The build it stands for has code for sm_80 and later
 * (SASS for 8.x, PTX for anything later), or from SHAKE_EMU_BUILD_SM on:
 * a GPU older than that has no kernel image. */
inline int emu_sm(const char *var, int dflt)
{
    const char *v = getenv(var);
    return v && *v ? atoi(v) : dflt;
}

inline size_t emu_used;
inline thread_local cudaError_t emu_last_error = cudaSuccess;
inline int emu_device;

inline cudaError_t emu_error(cudaError_t e)
{
    if (e != cudaSuccess)
        emu_last_error = e;
    return e;
}

/* ---- queued work ---- */

inline std::vector<EmuNode *> emu_nodes;  /* queued since the queue was last empty */
inline std::vector<EmuStream *> emu_streams;
inline std::vector<EmuEvent *> emu_events;
inline uint64_t emu_rng;

inline uint64_t emu_random()
{
    if (!emu_rng) {
        const char *seed = getenv("SHAKE_EMU_SEED");
        emu_rng = 0x9E3779B97F4A7C15ull * (seed ? strtoull(seed, NULL, 10) : 1) | 1;
    }
    emu_rng ^= emu_rng << 13;
    emu_rng ^= emu_rng >> 7;
    emu_rng ^= emu_rng << 17;
    return emu_rng;
}

inline EmuNode *emu_node(std::function<void()> op, std::initializer_list<EmuNode *> deps)
{
    static unsigned long queued;
    EmuNode *n = new EmuNode{std::move(op), {}, {}, 0, false, 0, ++queued};
    for (EmuNode *d : deps)
        if (d && !d->done) {
            n->deps.push_back(d);
            d->next.push_back(n);
            n->missing++;
        }
    emu_nodes.push_back(n);
    return n;
}

/*
 * Runs the queued nodes that `until` depends on (all of them: NULL, all
 * queued), each once what it waits for has run: of those ready, the one
 * queued last, or one in four times one at random. When nothing is left
 * queued, the nodes are freed.
 */
inline void emu_run(EmuNode *until)
{
    static unsigned long runs;
    const unsigned long run = ++runs;
    std::vector<EmuNode *> want;
    if (until) {
        std::vector<EmuNode *> stack{until};
        while (!stack.empty()) {
            EmuNode *n = stack.back();
            stack.pop_back();
            if (n->done || n->wanted == run)
                continue;
            n->wanted = run;
            want.push_back(n);
            for (EmuNode *d : n->deps)
                stack.push_back(d);
        }
    } else {
        for (EmuNode *n : emu_nodes)
            if (!n->done) {
                n->wanted = run;
                want.push_back(n);
            }
    }
    /* the deps of a wanted node are wanted too: starting from those ready,
     * this runs them all */
    std::vector<EmuNode *> ready;
    for (EmuNode *n : want)
        if (n->missing == 0)
            ready.push_back(n);
    while (!ready.empty()) {
        size_t i = 0;
        const uint64_t r = emu_random();
        if (r % 4 == 0) {
            i = (size_t)((r >> 2) % ready.size());
        } else {
            for (size_t j = 1; j < ready.size(); j++)
                if (ready[j]->seq > ready[i]->seq)
                    i = j;
        }
        EmuNode *n = ready[i];
        ready[i] = ready.back();
        ready.pop_back();
        if (n->op)
            n->op();
        n->done = true;
        for (EmuNode *m : n->next)
            if (--m->missing == 0 && m->wanted == run)
                ready.push_back(m);
    }
    for (EmuNode *n : emu_nodes)
        if (!n->done)
            return;
    for (EmuNode *n : emu_nodes)
        delete n;
    emu_nodes.clear();
    for (EmuStream *st : emu_streams)
        st->last = NULL;
    for (EmuEvent *ev : emu_events)
        ev->node = NULL;
}

/* Queues op on stream s, or records it where s is capturing; the legacy
 * stream (NULL) waits for all queued work and runs op at once. */
inline void emu_enqueue(cudaStream_t s, std::function<void()> op)
{
    if (s && s->capture) {
        EmuCapNode c{std::move(op), {}, emu_name};
        if (s->cap_last >= 0)
            c.deps.push_back(s->cap_last);
        s->capture->push_back(std::move(c));
        s->cap_last = (int)s->capture->size() - 1;
        s->ops++;
    } else if (s) {
        s->last = emu_node(std::move(op), {s->last});
    } else {
        emu_run(NULL);
        op();
    }
    emu_name = "?";
}

/*
 * A kernel's __shared__ arrays, which it names with EMU_SHARED after their
 * declaration (nothing on a GPU): each block of it starts with every byte
 * of them 0xff, NaN in a float or a double. On a GPU a block's shared
 * memory starts out as whatever was there; here the arrays are statics,
 * and a thread that read what no thread of its block wrote would get what
 * the previous block left, often the right value.
 */
struct EmuShared {
    void *p;
    size_t bytes;
};
inline std::vector<EmuShared> *emu_shared_now;   /* the running kernel's */

inline void emu_shared_note(void *p, size_t bytes)
{
    if (!emu_shared_now)
        return;
    for (const EmuShared &a : *emu_shared_now)
        if (a.p == p)
            return;
    memset(p, 0xff, bytes);     /* the first of its blocks, before any thread wrote */
    emu_shared_now->push_back({p, bytes});
}
#define EMU_SHARED(a) emu_shared_note((void *)(a), sizeof(a))

/* what the launches so far showed of a kernel */
struct EmuKernelSeen {
    int barriers;               /* 0: not launched yet, 1: reaches __syncthreads, 2: does not */
    unsigned long launches;
    std::vector<EmuShared> shared;
};
inline std::unordered_map<const void *, EmuKernelSeen> emu_kernels;

/* KERNEL(k, grid, block, stream)(args): every thread of every block; a
 * block on fibers (fiber.h) for a kernel that reaches __syncthreads, whose
 * threads then run in ascending order at one such launch, descending at
 * the next. */
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
        const char *name = emu_name;
        std::tuple<P...> params(args...);
        emu_enqueue(stream, [=]() {
            EmuKernelSeen &seen = emu_kernels[(const void *)kernel];
            const bool up = seen.launches++ % 2 == 0;
            gridDim = g;
            blockDim = b;
            const unsigned n = b.x * b.y * b.z;
            std::function<void()> thread = [&]() { std::apply(kernel, params); };
            bool reached = false;
            emu_barrier_unexpected = false;
            emu_shared_now = &seen.shared;
            for (unsigned bz = 0; bz < g.z; bz++)
                for (unsigned by = 0; by < g.y; by++)
                    for (unsigned bx = 0; bx < g.x; bx++) {
                        blockIdx = dim3(bx, by, bz);
                        for (const EmuShared &a : seen.shared)
                            memset(a.p, 0xff, a.bytes);
                        if (seen.barriers != 2)
                            reached |= emu_block_run(n, thread, up);
                        else
                            for (unsigned i = 0; i < n; i++) {
                                threadIdx = emu_thread_idx(i);
                                thread();
                            }
                    }
            emu_shared_now = NULL;
            if (emu_barrier_unexpected) {
                fprintf(stderr, "emulation: %s reached __syncthreads, which it had not at its "
                                "first launch (run on fibers)\n", name);
                abort();
            }
            if (seen.barriers == 0)
                seen.barriers = reached ? 1 : 2;
        });
    }
};

template <typename... P>
EmuLaunch<P...> emu_launch(void (*k)(P...), dim3 grid, dim3 block, cudaStream_t s)
{
    return EmuLaunch<P...>{k, grid, block, s};
}

#define KERNEL(k, grid, block, stream) \
    (emu_name = #k, emu_launch(k, dim3(grid), dim3(block), (cudaStream_t)(stream)))

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
    case cudaErrorNoKernelImageForDevice:
        return "no kernel image is available for execution on the device";
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

/* the one emulated GPU's identity (what the algorithm record keys on) */
struct cudaDeviceProp {
    char name[256];
    int major, minor;
    int multiProcessorCount;
    size_t totalGlobalMem;
};

inline cudaError_t cudaDriverGetVersion(int *v)
{
    *v = 13000;
    return cudaSuccess;
}

inline cudaError_t cudaRuntimeGetVersion(int *v)
{
    *v = 13000;
    return cudaSuccess;
}

inline cudaError_t cudaGetDeviceProperties(cudaDeviceProp *p, int d)
{
    if (d != 0)
        return emu_error(cudaErrorInvalidDevice);
    *p = cudaDeviceProp{};
    strcpy(p->name, "CPU emulation");
    const int sm = emu_sm("SHAKE_EMU_SM", 90);
    p->major = sm / 10;
    p->minor = sm % 10;
    p->multiProcessorCount = 1;
    p->totalGlobalMem = EMU_DEVICE_BYTES;
    return cudaSuccess;
}

struct cudaFuncAttributes {
    int maxThreadsPerBlock;
};

/* whether the build has code this GPU runs (see emu_sm) */
inline cudaError_t cudaFuncGetAttributes(cudaFuncAttributes *a, const void *f)
{
    (void)f;
    if (emu_sm("SHAKE_EMU_SM", 90) < emu_sm("SHAKE_EMU_BUILD_SM", 80))
        return emu_error(cudaErrorNoKernelImageForDevice);
    a->maxThreadsPerBlock = 1024;
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
    emu_run(NULL);              /* as on a GPU: the device synchronizes first */
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

inline cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t n, cudaMemcpyKind kind,
                                   cudaStream_t s = 0)
{
    if (kind != cudaMemcpyHostToDevice && kind != cudaMemcpyDeviceToHost &&
        kind != cudaMemcpyDeviceToDevice)
        return emu_error(cudaErrorInvalidValue);
    /* a device source is read when the copy runs, as on a GPU; a host
     * source is staged now, as the runtime does for pageable memory */
    if (kind != cudaMemcpyHostToDevice) {
        emu_name = "memcpy";
        emu_enqueue(s, [=]() { memcpy(dst, src, n); });
        return cudaSuccess;
    }
    std::vector<unsigned char> staged((const unsigned char *)src, (const unsigned char *)src + n);
    emu_name = "memcpy";
    emu_enqueue(s, [=]() { memcpy(dst, staged.data(), n); });
    return cudaSuccess;
}

/* the synchronous copy and set: on the legacy stream, after all queued work */
inline cudaError_t cudaMemcpy(void *dst, const void *src, size_t n, cudaMemcpyKind)
{
    emu_run(NULL);
    memcpy(dst, src, n);
    return cudaSuccess;
}

inline cudaError_t cudaMemset(void *p, int v, size_t n)
{
    emu_run(NULL);
    memset(p, v, n);
    return cudaSuccess;
}

inline cudaError_t cudaStreamCreate(cudaStream_t *s)
{
    *s = new EmuStream{NULL, NULL, -1, 0, NULL, {}, 0, 0};
    emu_streams.push_back(*s);
    return cudaSuccess;
}

inline cudaError_t cudaStreamSynchronize(cudaStream_t s)
{
    if (s && s->capture)
        return emu_error(cudaErrorInvalidValue);
    if (!s)
        emu_run(NULL);
    else if (s->last)
        emu_run(s->last);
    return cudaSuccess;
}

inline cudaError_t cudaStreamDestroy(cudaStream_t s)
{
    if (!s)
        return cudaSuccess;
    if (s->last)                /* its work still runs, as on a GPU */
        emu_run(s->last);
    emu_streams.erase(std::find(emu_streams.begin(), emu_streams.end(), s));
    delete s;
    return cudaSuccess;
}

inline cudaError_t cudaEventCreateWithFlags(cudaEvent_t *ev, unsigned)
{
    *ev = new EmuEvent{NULL, 0, 0, NULL, -1};
    emu_events.push_back(*ev);
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
    ev->node = s && !s->capture ? s->last : NULL;
    ev->cap_node = s && s->capture ? s->cap_last : -1;
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
    if (!live) {                /* after the event's work, in the queue */
        if (ev->node && !ev->node->done && ev->node != s->last)
            s->last = emu_node(nullptr, {s->last, ev->node});
        return cudaSuccess;
    }
    if (src == s)
        return cudaSuccess;
    if (ev->ops > src->waited)
        src->waited = ev->ops;
    if (!s->capture) {          /* s joins the capture, after the event's node */
        EmuStream *origin = src->origin ? src->origin : src;
        s->capture = src->capture;
        s->capture_id = src->capture_id;
        s->origin = origin;
        s->ops = s->waited = 0;
        s->cap_last = ev->cap_node;
        origin->joined.push_back(s);
    } else if (s->capture != src->capture) {
        return emu_error(cudaErrorInvalidValue);
    } else if (ev->cap_node >= 0 && ev->cap_node != s->cap_last) {
        EmuCapNode c{nullptr, {ev->cap_node}};
        if (s->cap_last >= 0)
            c.deps.push_back(s->cap_last);
        s->capture->push_back(std::move(c));
        s->cap_last = (int)s->capture->size() - 1;
    }
    return cudaSuccess;
}

inline cudaError_t cudaEventSynchronize(cudaEvent_t ev)
{
    if (ev && ev->node)
        emu_run(ev->node);
    return cudaSuccess;
}

inline cudaError_t cudaEventDestroy(cudaEvent_t ev)
{
    if (ev)
        emu_events.erase(std::find(emu_events.begin(), emu_events.end(), ev));
    delete ev;
    return cudaSuccess;
}

/*
 * The census of the last graph captured (tests/emu/census.h): each node's
 * name (template arguments left out) and whether it lies on the graph's
 * longest chain of work -- kernels and library calls; the nodes that only
 * wait add nothing to a chain, as on a GPU, where they are edges. Where the
 * step is bound by its launches' latency, as 26 2x32d's is, that chain and
 * not the number of kernels sets its time (bench/graph_census.c prints it).
 */
struct EmuCensusNode {
    std::string name;           /* "": a node that only waits */
    bool critical;
};
inline std::vector<EmuCensusNode> emu_census_nodes;
inline unsigned long emu_census_taken;

inline void emu_census_take(const EmuOps &ops)
{
    const size_t n = ops.size();
    emu_census_taken++;
    std::vector<int> len(n), from(n, -1);
    int end = -1;
    emu_census_nodes.assign(n, EmuCensusNode{"", false});
    for (size_t i = 0; i < n; i++) {
        if (ops[i].name) {
            const char *lt = strchr(ops[i].name, '<');
            emu_census_nodes[i].name.assign(ops[i].name, lt ? (size_t)(lt - ops[i].name)
                                                            : strlen(ops[i].name));
        }
        int best = 0;
        for (int d : ops[i].deps)
            if (len[d] > best) {
                best = len[d];
                from[i] = d;
            }
        len[i] = best + (ops[i].name ? 1 : 0);
        if (end < 0 || len[i] > len[end])
            end = (int)i;
    }
    for (int i = end; i >= 0; i = from[i])
        emu_census_nodes[i].critical = true;
}

inline cudaError_t cudaStreamBeginCapture(cudaStream_t s, cudaStreamCaptureMode)
{
    if (!s || s->capture)
        return emu_error(cudaErrorInvalidValue);
    s->capture = new EmuOps;
    s->capture_id = ++emu_captures;
    s->cap_last = -1;
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
        j->cap_last = -1;
    }
    s->joined.clear();
    EmuOps *ops = s->capture;
    s->capture = NULL;
    s->cap_last = -1;
    if (unjoined) {
        delete ops;
        return emu_error(cudaErrorStreamCaptureUnjoined);
    }
    emu_census_take(*ops);
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

/* the graph's nodes queued with their dependencies, those without any
 * after the stream's work so far; the stream's next work after them all */
inline cudaError_t cudaGraphLaunch(cudaGraphExec_t g, cudaStream_t s)
{
    if (!s || s->capture)
        return emu_error(cudaErrorInvalidValue);
    std::vector<EmuNode *> made;
    for (const EmuCapNode &c : g->ops) {
        EmuNode *n = emu_node(c.op, {c.deps.empty() ? s->last : NULL});
        for (int d : c.deps)
            if (!made[d]->done) {
                n->deps.push_back(made[d]);
                made[d]->next.push_back(n);
                n->missing++;
            }
        made.push_back(n);
    }
    EmuNode *end = emu_node(nullptr, {s->last});
    for (EmuNode *n : made) {
        end->deps.push_back(n);
        n->next.push_back(end);
        end->missing++;
    }
    s->last = end;
    return cudaSuccess;
}

#endif
