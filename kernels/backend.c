/* The registry of backends compiled into this binary. */
#include "backend.h"

#include <string.h>

static const BackendOps *const all[] = {
    &backend_ref,
#ifdef SHAKE_WITH_DNNL
    &backend_cpu,
#endif
#ifdef SHAKE_WITH_CUDA
    &backend_cuda,
#endif
};

const BackendOps *backend_find(const char *name)
{
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        if (strcmp(all[i]->name, name) == 0)
            return all[i];
    return NULL;
}

const char *backend_names(void)
{
    return "ref"
#ifdef SHAKE_WITH_DNNL
           ", cpu"
#endif
#ifdef SHAKE_WITH_CUDA
           ", cuda"
#endif
        ;
}

#ifndef SHAKE_WITH_CUDA
int backend_cuda_devices(void)
{
    return 0;
}

int backend_cuda_shake_draw(float *alpha, float *beta, int nblocks, int n, uint64_t seed,
                            int64_t step, int fwd, int bwd, int level, int device, Err *e)
{
    return err_set(e, "the cuda backend is not built into this binary");
}

long backend_cuda_graph_launches(const Backend *b)
{
    return 0;
}

int backend_cuda_merged_blocks(const Backend *b)
{
    return 0;
}

int backend_cuda_conv_algos(const Backend *b, int i, int algo[3])
{
    return -1;
}

int backend_cuda_search_buffers(const Backend *b)
{
    return 0;
}

int backend_cuda_data_batch(float *x, int *labels, const Dataset *d, const int *idx, int count,
                            uint64_t seed, int epoch, int augment, int device, Err *e)
{
    return err_set(e, "the cuda backend is not built into this binary");
}
#endif
