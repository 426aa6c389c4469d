/* The life of a run in the results store. */
#ifndef SHAKE_RUNSTATE_H
#define SHAKE_RUNSTATE_H

typedef enum {
    RUN_PENDING = 0,            /* planned, never started */
    RUN_RUNNING = 1,            /* a process is on it (checked by pid and heartbeat) */
    RUN_DONE = 2,               /* every epoch ran; its result counts */
    RUN_FAILED = 3,             /* crashed, diverged, out of memory...: see its reason */
    RUN_INTERRUPTED = 4         /* stopped (Ctrl-C, kill, reboot); resumes from its checkpoint */
} RunState;

#define RUN_NSTATES 5

const char *run_state_name(RunState s);
/* -1 if the name is not a state. */
int run_state_parse(const char *name);

#endif
