/*
 * `sweep`: the command researchers live in. This file dispatches the
 * subcommands; each returns an exit status and only main() exits.
 *   sweep train key=value ...      one training run (see `sweep train --help`)
 *   sweep eval checkpoint=PATH ... test error and loss of a checkpoint
 *   sweep run / rerun / status / report / show / data: the orchestrator
 *   (commands.h)
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "commands.h"
#include "config.h"
#include "provenance.h"
#include "train.h"



static void on_signal(int sig)
{
    /* First signal: finish the step, checkpoint, exit. Second: die now. */
    if (train_interrupt)
        signal(sig, SIG_DFL), raise(sig);
    train_interrupt = 1;
}

static void train_usage(FILE *f)
{
    fprintf(f, "usage: sweep train [key=value ...]\n\nkeys and their defaults:\n");
    TrainConfig c;
    config_defaults(&c);
    for (int i = 0; i < config_nkeys(); i++) {
        char v[600];
        config_key_value(&c, i, v, sizeof v);
        fprintf(f, "  %-13s %s\n", config_key_name(i), v);
    }
    fprintf(f, "\nbackends in this binary: %s\n", backend_names());
}

static int cmd_train(int argc, char **argv)
{
    for (int i = 0; i < argc; i++)
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            train_usage(stdout);
            return EXIT_OK;
        }
    TrainConfig cfg;
    Err e = {{0}};
    config_defaults(&cfg);
    /* resume= takes the checkpoint's config as the base */
    const char *resume = NULL;
    for (int i = 0; i < argc; i++)
        if (strncmp(argv[i], "resume=", 7) == 0)
            resume = argv[i] + 7;
    if (resume && resume[0]) {
        if (train_resume_config(&cfg, resume, argv, argc, &e)) {
            fprintf(stderr, "sweep train: %s\n", e.msg);
            return EXIT_USAGE;
        }
    } else {
        for (int i = 0; i < argc; i++)
            if (config_set(&cfg, argv[i], &e)) {
                fprintf(stderr, "sweep train: %s\n", e.msg);
                return EXIT_USAGE;
            }
    }
    if (config_validate(&cfg, &e)) {
        fprintf(stderr, "sweep train: %s\n", e.msg);
        return EXIT_USAGE;
    }
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    int st = train_run(&cfg, stdout, &e);
    if (st == TRAIN_FAILED) {
        fprintf(stderr, "sweep train: %s\n", e.msg);
        return EXIT_FAIL;
    }
    return st == TRAIN_INTERRUPTED ? EXIT_INTERRUPTED : EXIT_OK;
}

static int cmd_eval(int argc, char **argv)
{
    const char *ckpt = NULL, *data_dir = NULL, *backend = "";
    int threads = 0;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (strncmp(a, "checkpoint=", 11) == 0)
            ckpt = a + 11;
        else if (strncmp(a, "data_dir=", 9) == 0)
            data_dir = a + 9;
        else if (strncmp(a, "backend=", 8) == 0)
            backend = a + 8;
        else if (strncmp(a, "threads=", 8) == 0)
            threads = atoi(a + 8);
        else {
            fprintf(stderr, "sweep eval: unknown argument '%s' (keys: checkpoint, data_dir, "
                    "backend, threads)\n", a);
            return EXIT_USAGE;
        }
    }
    if (!ckpt) {
        fprintf(stderr, "usage: sweep eval checkpoint=PATH [data_dir=DIR] [backend=NAME] "
                "[threads=N]\n");
        return EXIT_USAGE;
    }
    EvalResult r;
    Err e = {{0}};
    if (eval_checkpoint(ckpt, data_dir, backend, threads, &r, &e)) {
        fprintf(stderr, "sweep eval: %s\n", e.msg);
        return EXIT_FAIL;
    }
    printf("test error %.2f%%  test loss %.4f  (%d images)\n", 100 * r.err, r.loss, r.n);
    return EXIT_OK;
}

static void usage(FILE *f)
{
    fprintf(f, "usage: sweep COMMAND [args]\n\n"
               "commands:\n"
               "  run FILE.lua          run or resume a sweep: [--db PATH] [--jobs N | --gpus 0,1]\n"
               "                        [--set key=value ...] [--dry-run]\n"
               "  status                runs by state, running runs, failures [--sweep NAME]\n"
               "  report                the sweep's table, mean +- sd over seeds beside the paper\n"
               "                        [--sweep NAME] [--format text|markdown|csv|json]\n"
               "                        [--commit SHA] [--curves DIR]\n"
               "  rerun                 rerun failed/interrupted runs [--failed] [--interrupted]\n"
               "                        [--done] [--cell key=value ...] [--sweep NAME] [--jobs N]\n"
               "  show RUN              one run's provenance, config and epochs\n"
               "  data fetch NAME       download cifar10 or cifar100 [--dir DIR]\n"
               "  train key=value ...   train one network (sweep train --help for keys)\n"
               "  eval checkpoint=PATH  test error and loss of a checkpoint\n"
               "  version               the commit this binary was built from\n"
               "\nThe results store is results/sweep.db unless --db names another.\n");
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return EXIT_USAGE;
    }
    const char *cmd = argv[1];
    if (strcmp(cmd, "train") == 0)
        return cmd_train(argc - 2, argv + 2);
    if (strcmp(cmd, "eval") == 0)
        return cmd_eval(argc - 2, argv + 2);
    static const struct {
        const char *name;
        int (*fn)(int, char **);
    } orch[] = {{"run", cmd_run},       {"rerun", cmd_rerun},   {"status", cmd_status},
                {"report", cmd_report}, {"show", cmd_show},     {"data", cmd_data},
                {"exec-run", cmd_exec_run}};
    for (size_t i = 0; i < sizeof orch / sizeof orch[0]; i++)
        if (strcmp(cmd, orch[i].name) == 0)
            return orch[i].fn(argc - 2, argv + 2);
    if (strcmp(cmd, "version") == 0) {
        printf("sweep (shakeshake) built from %s%s\n", shake_build_commit,
               shake_build_dirty ? " with uncommitted changes" : "");
        return EXIT_OK;
    }
    if (strcmp(cmd, "help") == 0 || strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0) {
        usage(stdout);
        return EXIT_OK;
    }
    fprintf(stderr, "sweep: unknown command '%s'\n", cmd);
    usage(stderr);
    return EXIT_USAGE;
}
