/* Run states by name. */
#include "runstate.h"

#include <string.h>

static const char *const names[RUN_NSTATES] = {"pending", "running", "done", "failed",
                                                "interrupted"};

const char *run_state_name(RunState s)
{
    return (unsigned)s < RUN_NSTATES ? names[s] : "unknown";
}

int run_state_parse(const char *name)
{
    for (int i = 0; i < RUN_NSTATES; i++)
        if (strcmp(names[i], name) == 0)
            return i;
    return -1;
}
