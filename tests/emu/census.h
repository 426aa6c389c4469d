/*
 * The shape of the last CUDA graph the emulation captured (a training
 * step's, an evaluation's), for tests of what a GPU's time depends on but
 * the emulation cannot time: how many kernels and library calls a step
 * launches, and how many of them lie one after another on its longest
 * chain (the nodes that only wait for another stream count for nothing).
 * Built into test_cuda_emu only (tests/emu/cuda_emu.cc).
 */
#ifndef SHAKE_EMU_CENSUS_H
#define SHAKE_EMU_CENSUS_H

#ifdef __cplusplus
extern "C" {
#endif

/* Nodes of the last captured graph that run `name` -- a kernel's name
 * without its template arguments ("bn_apply_kernel"), or conv_fwd,
 * conv_bwd_data, conv_bwd_filter, gemm, memcpy; NULL: all of them -- and in
 * *critical, how many of those lie on the longest chain. */
int emu_census(const char *name, int *critical);

/* How many graphs have been captured so far (their census taken). */
unsigned long emu_census_graphs(void);

/* The i-th distinct name among the last captured graph's nodes, in the
 * order of their first launch; NULL past the last. */
const char *emu_census_name(int i);

#ifdef __cplusplus
}
#endif

#endif
