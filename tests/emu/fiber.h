/*
 * The threads of an emulated thread block as fibers, so that __syncthreads
 * is a barrier: each thread runs on a stack of its own until it reaches
 * __syncthreads or returns, then the next; once every thread still running
 * waits at the barrier, they go on, round after round. Within a round the
 * threads run in ascending order at one launch and descending at the next,
 * so a kernel that reads its block's shared memory without the barrier that
 * orders it after the write gets, in one of the two, what the block wrote
 * before (or another block did): a wrong result, as the race would give on
 * a GPU.
 *
 * A kernel runs on fibers at its first launch; one that never reached
 * __syncthreads there runs thread after thread on the host's stack from
 * then on (most kernels: fibers cost a switch or two a thread), and should
 * it reach __syncthreads later after all, the emulation stops and says so.
 *
 * Included by cuda_runtime.h, after dim3 and threadIdx.
 *
 * The switch is a few instructions of x86-64 assembly (callee-saved
 * registers and the stack pointer, as the System V ABI has them); other
 * machines (or -DEMU_UCONTEXT) use ucontext.
 */
#ifndef SHAKE_EMU_FIBER_H
#define SHAKE_EMU_FIBER_H

#include <cstdio>
#include <cstdlib>
#include <functional>
#include <vector>

#include <sys/mman.h>
#include <unistd.h>

/* the assembly switch, or ucontext (elsewhere, or with EMU_UCONTEXT) */
#if defined(__x86_64__) && !defined(EMU_UCONTEXT)
#define EMU_FIBER_ASM 1
#else
#define EMU_FIBER_ASM 0
#include <ucontext.h>
#endif

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/common_interface_defs.h>
#endif

/* the largest block the kernels launch, and each thread's stack */
enum { EMU_FIBERS = 1024, EMU_FIBER_STACK = 64 << 10 };

#if EMU_FIBER_ASM
/* saves the callee-saved registers on the current stack and its pointer in
 * *from, then continues on the stack at to (tests/emu/cuda_emu.cc) */
extern "C" void emu_fiber_switch(void **from, void *to);
struct EmuContext {
    void *sp;
};
#else
struct EmuContext {
    ucontext_t uc;
};
#endif

struct EmuFiber {
    EmuContext ctx;
    bool done;
};

struct EmuBlock {
    std::vector<EmuFiber> fibers;
    EmuContext host;                  /* the scheduler's */
    char *stacks;                     /* EMU_FIBERS stacks, each above a guard page */
    const std::function<void()> *thread; /* runs the kernel for threadIdx */
    unsigned current;
    bool barrier;                     /* a thread reached __syncthreads */
#if defined(__SANITIZE_ADDRESS__)
    void *fake;                       /* the scheduler's fake stack while a fiber runs */
    const void *host_bottom;          /* the scheduler's stack */
    size_t host_size;
#endif
};

/* the block running on fibers (NULL: none, a kernel thread after thread) */
inline thread_local EmuBlock *emu_block;
/* __syncthreads reached with no block on fibers */
inline thread_local bool emu_barrier_unexpected;

/* the index of a block's i-th thread, x fastest */
inline dim3 emu_thread_idx(unsigned i)
{
    return dim3(i % blockDim.x, i / blockDim.x % blockDim.y, i / (blockDim.x * blockDim.y));
}

inline char *emu_fiber_stack(EmuBlock *b, unsigned i)
{
    return b->stacks + (size_t)i * (EMU_FIBER_STACK + 4096) + 4096;
}

/* saves the running context in from and continues at to */
inline void emu_swap(EmuContext *from, EmuContext *to)
{
#if EMU_FIBER_ASM
    emu_fiber_switch(&from->sp, to->sp);
#else
    swapcontext(&from->uc, &to->uc);
#endif
}

/* from the scheduler to fiber i, until it yields */
inline void emu_fiber_enter(EmuBlock *b, unsigned i)
{
#if defined(__SANITIZE_ADDRESS__)
    __sanitizer_start_switch_fiber(&b->fake, emu_fiber_stack(b, i), EMU_FIBER_STACK);
#endif
    emu_swap(&b->host, &b->fibers[i].ctx);
#if defined(__SANITIZE_ADDRESS__)
    __sanitizer_finish_switch_fiber(b->fake, NULL, NULL);
#endif
}

/* back to the scheduler, from thread b->current (for good: done) */
inline void emu_fiber_yield(EmuBlock *b, bool done = false)
{
#if defined(__SANITIZE_ADDRESS__)
    void *fake = NULL;
    __sanitizer_start_switch_fiber(done ? NULL : &fake, b->host_bottom, b->host_size);
#else
    (void)done;
#endif
    emu_swap(&b->fibers[b->current].ctx, &b->host);
#if defined(__SANITIZE_ADDRESS__)
    __sanitizer_finish_switch_fiber(fake, NULL, NULL);
#endif
}

/* where every fiber starts: its thread of the kernel, then back for good */
inline void emu_fiber_main()
{
    EmuBlock *b = emu_block;
#if defined(__SANITIZE_ADDRESS__)
    __sanitizer_finish_switch_fiber(NULL, &b->host_bottom, &b->host_size);
#endif
    (*b->thread)();
    b->fibers[b->current].done = true;
    emu_fiber_yield(b, true);
    abort();                    /* a finished fiber is never resumed */
}

/* fiber i's context, at the start of emu_fiber_main */
inline void emu_fiber_reset(EmuBlock *b, unsigned i)
{
    char *base = emu_fiber_stack(b, i);
    b->fibers[i].done = false;
#if EMU_FIBER_ASM
    /* emu_fiber_switch pops six registers and returns: to emu_fiber_main,
     * with the stack as a call leaves it (8 past a 16-byte boundary) */
    void **sp = (void **)(base + EMU_FIBER_STACK) - 8;
    for (int k = 0; k < 6; k++)
        sp[k] = NULL;
    sp[6] = (void *)&emu_fiber_main;
    sp[7] = NULL;
    b->fibers[i].ctx.sp = sp;
#else
    ucontext_t *uc = &b->fibers[i].ctx.uc;
    getcontext(uc);
    uc->uc_stack.ss_sp = base;
    uc->uc_stack.ss_size = EMU_FIBER_STACK;
    uc->uc_link = NULL;
    makecontext(uc, emu_fiber_main, 0);
#endif
}

inline EmuBlock *emu_block_get()
{
    static thread_local EmuBlock *b;
    if (!b) {
        b = new EmuBlock();
        b->fibers.resize(EMU_FIBERS);
        const size_t each = EMU_FIBER_STACK + 4096;
        void *m = mmap(NULL, each * EMU_FIBERS, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (m == MAP_FAILED) {
            perror("emulation: fiber stacks");
            abort();
        }
        b->stacks = (char *)m;
        /* a thread that overflows its stack faults on the page below it */
        for (unsigned i = 0; i < EMU_FIBERS; i++)
            mprotect(emu_fiber_stack(b, i) - 4096, 4096, PROT_NONE);
    }
    return b;
}

/*
 * Runs threads 0..n-1 of one block of blockDim's shape (thread() runs the
 * kernel) as fibers to the end, barrier after barrier: ascending order
 * within each round if up, else descending; threadIdx is each one's while
 * it runs. Returns whether any of them reached __syncthreads.
 */
inline bool emu_block_run(unsigned n, const std::function<void()> &thread, bool up)
{
    if (n > EMU_FIBERS) {
        fprintf(stderr, "emulation: a block of %u threads (at most %d)\n", n, EMU_FIBERS);
        abort();
    }
    EmuBlock *b = emu_block_get();
    b->thread = &thread;
    b->barrier = false;
    for (unsigned i = 0; i < n; i++)
        emu_fiber_reset(b, i);
    emu_block = b;
    for (unsigned left = n; left > 0;) {
        for (unsigned k = 0; k < n; k++) {
            const unsigned i = up ? k : n - 1 - k;
            if (b->fibers[i].done)
                continue;
            b->current = i;
            threadIdx = emu_thread_idx(i);
            emu_fiber_enter(b, i);
            left -= b->fibers[i].done;
        }
    }
    emu_block = NULL;
    return b->barrier;
}

/* a thread of the block on fibers waits for the others; elsewhere this is
 * a kernel that did not reach it at its first launch */
inline void __syncthreads()
{
    EmuBlock *b = emu_block;
    if (!b) {
        emu_barrier_unexpected = true;
        return;
    }
    b->barrier = true;
    emu_fiber_yield(b);
}

#endif
