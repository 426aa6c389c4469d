/*
 * The shape of the cuda backend's captured graphs, counted on the CPU: the
 * backend's own code run against the emulation of CUDA, cuDNN and cuBLAS
 * (tests/emu), three training steps (the third captured as train_step
 * captures it) and an evaluation batch, then each graph's launches per
 * kernel or library call, and how many lie on its longest chain (what a
 * GPU cannot overlap; the nodes that only wait count for nothing). At
 * 26 2x32d a launch does too little to fill a GPU, so that chain, not the
 * number of launches, sets a step's time: a change meant to shorten it can
 * be checked here before it meets a GPU. Nothing is timed.
 *
 *   graph_census [depth=26] [width=32] [arch=resnet|resnext] [groups=4]
 *                [precision=bf16|fp32]
 *
 * The knobs the backend reads from the environment apply:
 * SHAKE_CUDA_STREAMS=1..4, SHAKE_CUDA_MERGE=0|1. Built with the tests
 * (it needs the emulation); the batch is 2 images, which the graph's shape
 * does not depend on.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../tests/emu/census.h"
#include "backend.h"
#include "bench_args.h"
#include "data.h"
#include "model.h"
#include "shake.h"

static int fail(const Err *e)
{
    fprintf(stderr, "graph_census: %s\n", e->msg);
    return 1;
}

static void print_census(const char *what)
{
    int crit, total = emu_census(NULL, &crit);
    printf("%s: %d launches, %d on the longest chain\n", what, total, crit);
    printf("  %-28s %7s %9s\n", "kernel or library call", "count", "on chain");
    const char *name;
    for (int i = 0; (name = emu_census_name(i)) != NULL; i++) {
        int c, n = emu_census(name, &c);
        printf("  %-28s %7d %9d\n", name, n, c);
    }
}

int main(int argc, char **argv)
{
    static const char *const keys[] = {"depth", "width", "arch", "groups", "precision"};
    if (check_args(argc, argv, "graph_census", keys, sizeof keys / sizeof keys[0]))
        return 2;
    const char *arch = arg(argc, argv, "arch", "resnet");
    const char *prec = arg(argc, argv, "precision", "bf16");
    if ((strcmp(arch, "resnet") && strcmp(arch, "resnext")) ||
        (strcmp(prec, "bf16") && strcmp(prec, "fp32"))) {
        fprintf(stderr, "graph_census: arch is resnet or resnext, precision bf16 or fp32\n");
        return 2;
    }
    const int resnext = strcmp(arch, "resnext") == 0;
    ModelSpec spec = {resnext ? ARCH_RESNEXT : ARCH_RESNET,
                      atoi(arg(argc, argv, "depth", resnext ? "29" : "26")),
                      atoi(arg(argc, argv, "width", resnext ? "64" : "32")),
                      resnext ? atoi(arg(argc, argv, "groups", "4")) : 1,
                      10, 3, 32, 32, SHIFT_ORIGINAL};
    Model m;
    Err e = {{0}};
    Dataset tr, te;
    if (model_build(&m, &spec, &e) || dataset_load(&tr, &te, DS_SYNTHETIC, NULL, 1, &e) ||
        dataset_subset(&tr, 10, 1, &e) || dataset_subset(&te, 10, 1, &e))
        return fail(&e);
    float *p = malloc(m.nparams * 4), *s = malloc(m.nstate * 4);
    model_init(&m, 1, p, s);
    BackendOptions o = {.max_batch = 2, .threads = 2, .device = 0,
                        .precision = strcmp(prec, "bf16") == 0 ? PRECISION_BF16
                                                                : PRECISION_FP32};
    setenv("SHAKE_CUDA_GRAPHS", "require", 1);
    Backend *be = backend_cuda.create(&m, &o, &e);
    if (!be || backend_cuda.load(be, p, s, NULL, &e) ||
        backend_cuda.set_data(be, &tr, &te, &e))
        return fail(&e);
    char name[64];
    model_describe(&m, name, sizeof name);
    const char *streams = getenv("SHAKE_CUDA_STREAMS"), *merge = getenv("SHAKE_CUDA_MERGE");
    printf("%s, %s, SHAKE_CUDA_STREAMS=%s, SHAKE_CUDA_MERGE=%s\n", name, prec,
           streams ? streams : "(default)", merge ? merge : "(default)");
    unsigned long graphs = emu_census_graphs();
    int order[6];
    data_epoch_order(order, 6, 1, 0, 1);
    for (int k = 0; k < 3; k++) {
        TrainStep ts = {order, 6, 2 * k, 2, 1, 0, k, 1, SHAKE_SHAKE, SHAKE_SHAKE,
                        LEVEL_IMAGE, 0.1f, 0.9f, 5e-4f};
        if (backend_cuda.train_step(be, &ts, &e))
            return fail(&e);
    }
    if (emu_census_graphs() != graphs + 1) {
        fprintf(stderr, "graph_census: the training step was not captured\n");
        return 1;
    }
    print_census("training step");
    /* evaluation captures its second full batch */
    float logits[20];
    for (int k = 0; k < 2; k++) {
        int idx[2] = {2 * k, 2 * k + 1};
        if (backend_cuda.batch(be, 1, idx, 2, 0, 0, 0, &e) ||
            backend_cuda.forward(be, logits, NULL, NULL, 2, 0, &e))
            return fail(&e);
    }
    if (emu_census_graphs() != graphs + 2) {
        fprintf(stderr, "graph_census: the evaluation batch was not captured\n");
        return 1;
    }
    print_census("evaluation batch");
    backend_cuda.destroy(be);
    free(p);
    free(s);
    model_free(&m);
    dataset_free(&tr);
    dataset_free(&te);
    return 0;
}
