/* The registry of backends compiled into this binary. */
#include "backend.h"

#include <string.h>

static const BackendOps *const all[] = {
    &backend_ref,
#ifdef SHAKE_WITH_DNNL
    &backend_cpu,
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
#ifdef SHAKE_WITH_DNNL
    return "ref, cpu";
#else
    return "ref";
#endif
}
