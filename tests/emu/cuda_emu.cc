/*
 * The cuda backend, kernels/cuda.cu itself, built as C++ against the CPU
 * emulation of the CUDA runtime, cuDNN and cuBLAS in this folder, for the
 * test program test_cuda_emu: the backend's own code runs in CI, where
 * there is no GPU.
 */
#include "../../kernels/cuda.cu"
