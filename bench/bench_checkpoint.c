/*
 * What a training run's checkpoints cost it: the time the training loop
 * stands still at the end of each epoch while the checkpoint is written
 * (written, fsynced, renamed, folder fsynced), written there (sync, as
 * SHAKE_SYNC_CHECKPOINTS=1 does) against written in the background while
 * the next epoch trains (checkpoint_save_start, the default).
 *
 *   bench_checkpoint [widths=32,96] [epoch_s=2.05,5.45] [rounds=4] [dir=/tmp]
 *
 * A 26 2xWd network's parameters, batch-norm statistics and momentum, as
 * train.c writes them after every epoch. An "epoch" here is a sleep of
 * epoch_s seconds (by default the H200's 26 2x32d and 26 2x96d epochs): on
 * a GPU the host mostly waits while the device trains. Prints one line of
 * key=value figures per network and way, medians over the rounds; the
 * backend's copy of its state to the host (a device-to-host copy on a GPU)
 * comes on top of both and is not timed here.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "checkpoint.h"
#include "model.h"

enum { MAX_LIST = 8, MAX_ROUNDS = 64 };

static int parse_list(const char *s, double *out)
{
    int n = 0;
    char *end;
    while (*s && n < MAX_LIST) {
        out[n++] = strtod(s, &end);
        if (end == s)
            return -1;
        s = *end == ',' ? end + 1 : end;
        if (*end && *end != ',')
            return -1;
    }
    return n;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

int main(int argc, char **argv)
{
    double widths[MAX_LIST] = {32, 96}, epochs[MAX_LIST] = {2.05, 5.45};
    int nw = 2, ne = 2, rounds = 4;
    const char *dir = "/tmp";
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strncmp(a, "widths=", 7) == 0)
            nw = parse_list(a + 7, widths);
        else if (strncmp(a, "epoch_s=", 8) == 0)
            ne = parse_list(a + 8, epochs);
        else if (strncmp(a, "rounds=", 7) == 0)
            rounds = atoi(a + 7);
        else if (strncmp(a, "dir=", 4) == 0)
            dir = a + 4;
        else {
            fprintf(stderr, "bench_checkpoint: unknown argument '%s' (keys: widths, epoch_s, "
                    "rounds, dir)\n", a);
            return 2;
        }
    }
    if (nw < 1 || ne < 1 || rounds < 1 || rounds > MAX_ROUNDS) {
        fprintf(stderr, "bench_checkpoint: widths and epoch_s want comma-separated numbers, "
                "rounds 1..%d\n", MAX_ROUNDS);
        return 2;
    }
    char path[4200];
    snprintf(path, sizeof path, "%s/bench_checkpoint.%ld.safetensors", dir, (long)getpid());
    int rc = 0;
    for (int k = 0; k < nw && rc == 0; k++) {
        const double epoch_s = epochs[k < ne ? k : ne - 1];
        ModelSpec spec = {ARCH_RESNET, 26, (int)widths[k], 1, 10, 3, 32, 32, SHIFT_ORIGINAL};
        Model m;
        Err e = {{0}};
        if (model_build(&m, &spec, &e)) {
            fprintf(stderr, "bench_checkpoint: %s\n", e.msg);
            return 1;
        }
        float *params = calloc(m.nparams, sizeof(float));
        float *state = calloc(m.nstate + 1, sizeof(float));
        float *momentum = calloc(m.nparams, sizeof(float));
        if (!params || !state || !momentum) {
            fprintf(stderr, "bench_checkpoint: out of memory\n");
            return 1;
        }
        model_init(&m, 1, params, state);
        for (size_t i = 0; i < m.nparams; i++)
            momentum[i] = 1e-3f * params[i];
        char desc[128];
        model_describe(&m, desc, sizeof desc);
        const double mb = (double)(2 * m.nparams + m.nstate) * sizeof(float) / 1e6;
        for (int background = 0; background <= 1 && rc == 0; background++) {
            double blocked[MAX_ROUNDS], write[MAX_ROUNDS];
            CheckpointWriter w;
            memset(&w, 0, sizeof w);
            for (int r = 0; r < rounds; r++) {
                sleep_s(epoch_s);
                CheckpointMeta meta = {r + 1, r + 1, 1, NULL};
                const double t0 = time_now();
                if (background) {
                    /* as train.c: the previous write finished first */
                    if (w.running) {
                        rc = checkpoint_save_wait(&w, &e);
                        write[r - 1] = w.seconds;
                    }
                    if (rc == 0)
                        rc = checkpoint_save_start(&w, path, &m, params, state, momentum,
                                                   &meta, &e);
                } else {
                    rc = checkpoint_save(path, &m, params, state, momentum, &meta, &e);
                    write[r] = time_now() - t0;
                }
                blocked[r] = time_now() - t0;
                if (rc)
                    break;
            }
            if (rc == 0 && background) {
                rc = checkpoint_save_wait(&w, &e);
                write[rounds - 1] = w.seconds;
            }
            if (rc) {
                fprintf(stderr, "bench_checkpoint: %s\n", e.msg);
                break;
            }
            const double bl = median(blocked, rounds), wr = median(write, rounds);
            printf("model=\"%s\" way=%s file_mb=%.1f epoch_s=%.2f rounds=%d "
                   "blocked_ms=%.1f write_ms=%.1f epoch_overhead_pct=%.2f\n", desc,
                   background ? "background" : "sync", mb, epoch_s, rounds, 1e3 * bl, 1e3 * wr,
                   100 * bl / epoch_s);
            fflush(stdout);
        }
        remove(path);
        free(params);
        free(state);
        free(momentum);
        model_free(&m);
    }
    return rc ? 1 : 0;
}
