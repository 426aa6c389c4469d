/*
 * The subcommands of `sweep` beyond train and eval. Each takes the
 * arguments after its name and returns the process exit status: 0 success,
 * 1 a failure (a run failed, data is missing...), 2 bad usage or input,
 * 130 interrupted.
 */
#ifndef SHAKE_COMMANDS_H
#define SHAKE_COMMANDS_H

enum { EXIT_OK = 0, EXIT_FAIL = 1, EXIT_USAGE = 2, EXIT_INTERRUPTED = 130 };

#define DEFAULT_DB "results/sweep.db"

int cmd_run(int argc, char **argv);      /* sweep run FILE.lua ... */
int cmd_rerun(int argc, char **argv);    /* sweep rerun ... */
int cmd_exec_run(int argc, char **argv); /* internal: one run, in its own process */
int cmd_status(int argc, char **argv);
int cmd_report(int argc, char **argv);
int cmd_show(int argc, char **argv);
int cmd_data(int argc, char **argv);     /* sweep data fetch ... */

#endif
