/*
 * The cuda backend, kernels/cuda.cu itself, built as C++ against the CPU
 * emulation of the CUDA runtime, cuDNN and cuBLAS in this folder, for the
 * test program test_cuda_emu: the backend's own code runs in CI, where
 * there is no GPU.
 */
#include "../../kernels/cuda.cu"

#include "census.h"

#if EMU_FIBER_ASM
/* fiber.h's switch: push the System V callee-saved registers, swap stacks,
 * pop them from the other stack, return where it left off */
asm(R"(
    .text
    .globl emu_fiber_switch
    .type emu_fiber_switch, @function
emu_fiber_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size emu_fiber_switch, .-emu_fiber_switch
)");
#endif

extern "C" int emu_census(const char *name, int *critical)
{
    int n = 0, c = 0;
    for (const EmuCensusNode &node : emu_census_nodes)
        if (!node.name.empty() && (!name || node.name == name)) {
            n++;
            c += node.critical;
        }
    *critical = c;
    return n;
}

extern "C" const char *emu_census_name(int i)
{
    static std::vector<std::string> names;
    names.clear();
    for (const EmuCensusNode &node : emu_census_nodes)
        if (!node.name.empty() && std::find(names.begin(), names.end(), node.name) == names.end())
            names.push_back(node.name);
    return i >= 0 && i < (int)names.size() ? names[i].c_str() : NULL;
}

extern "C" unsigned long emu_census_graphs(void)
{
    return emu_census_taken;
}
