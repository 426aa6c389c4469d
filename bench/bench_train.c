/*
 * Training throughput and peak memory of one backend on synthetic batches:
 * forward, backward and SGD update of a full network, the work of a training
 * step without data loading (the PyTorch peer in bench/torch_bench.py times
 * the same thing).
 *
 *   bench_train [backend=cpu] [depth=26] [width=32] [batch=128] [steps=5]
 *               [warmup=2] [threads=2] [arch=resnet] [groups=4] [classes=10]
 *               [size=32] [channels=3]
 *
 * Prints one line: key=value figures (img/s, ms/step, peak RSS MB).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "model.h"
#include "philox.h"
#include "shake.h"
#include "train.h"

static const char *arg(int argc, char **argv, const char *key, const char *dflt)
{
    size_t k = strlen(key);
    for (int i = 1; i < argc; i++)
        if (strncmp(argv[i], key, k) == 0 && argv[i][k] == '=')
            return argv[i] + k + 1;
    return dflt;
}

int main(int argc, char **argv)
{
    const char *bname = arg(argc, argv, "backend", "cpu");
    int depth = atoi(arg(argc, argv, "depth", "26"));
    int width = atoi(arg(argc, argv, "width", "32"));
    int batch = atoi(arg(argc, argv, "batch", "128"));
    int steps = atoi(arg(argc, argv, "steps", "5"));
    int warmup = atoi(arg(argc, argv, "warmup", "2"));
    int threads = atoi(arg(argc, argv, "threads", "2"));
    int groups = atoi(arg(argc, argv, "groups", "4"));
    int classes = atoi(arg(argc, argv, "classes", "10"));
    int size = atoi(arg(argc, argv, "size", "32"));
    int channels = atoi(arg(argc, argv, "channels", "3"));
    Arch arch = strcmp(arg(argc, argv, "arch", "resnet"), "resnext") == 0 ? ARCH_RESNEXT
                                                                          : ARCH_RESNET;
    Err e = {{0}};
    ModelSpec spec = {arch, depth, width, arch == ARCH_RESNET ? 1 : groups, classes,
                      channels, size, size, SHIFT_ORIGINAL};
    Model m;
    if (model_build(&m, &spec, &e)) {
        fprintf(stderr, "bench_train: %s\n", e.msg);
        return 2;
    }
    const BackendOps *ops = backend_find(bname);
    if (!ops) {
        fprintf(stderr, "bench_train: no backend '%s' (have %s)\n", bname, backend_names());
        return 2;
    }
    BackendOptions bo = {batch, threads};
    Backend *be = ops->create(&m, &bo, &e);
    if (!be) {
        fprintf(stderr, "bench_train: %s\n", e.msg);
        return 1;
    }
    float *params = calloc(m.nparams, sizeof(float)), *state = calloc(m.nstate, sizeof(float));
    size_t img = (size_t)channels * size * size;
    float *x = malloc((size_t)batch * img * sizeof(float));
    float *logits = malloc((size_t)batch * classes * sizeof(float));
    float *dlogits = malloc((size_t)batch * classes * sizeof(float));
    float *alpha = malloc((size_t)m.nblocks * batch * sizeof(float));
    float *beta = malloc((size_t)m.nblocks * batch * sizeof(float));
    int *labels = malloc((size_t)batch * sizeof(int));
    model_init(&m, 1, params, state);
    for (size_t i = 0; i < (size_t)batch * img; i++)
        x[i] = 2.0f * rng_uniform(7, RNG_TEST, (uint32_t)i, 0, 0) - 1.0f;
    for (int i = 0; i < batch; i++)
        labels[i] = (int)(rng_u32(7, RNG_TEST, (uint32_t)i, 1, 0) % (uint32_t)classes);
    if (ops->load(be, params, state, NULL, &e))
        goto fail;
    double t0 = 0, fwd = 0, bwd = 0;
    for (int s = 0; s < warmup + steps; s++) {
        if (s == warmup)
            t0 = time_now();
        shake_draw(alpha, beta, m.nblocks, batch, 1, s, SHAKE_SHAKE, SHAKE_SHAKE, LEVEL_IMAGE);
        double a = time_now();
        if (ops->forward(be, logits, x, alpha, batch, 1, &e))
            goto fail;
        double b = time_now();
        softmax_xent(dlogits, NULL, logits, labels, batch, classes);
        if (ops->backward(be, dlogits, beta, batch, &e) ||
            ops->update(be, 0.01f, 0.9f, 1e-4f, &e))
            goto fail;
        if (s >= warmup) {
            fwd += b - a;
            bwd += time_now() - b;
        }
    }
    double dt = time_now() - t0;
    char desc[128];
    model_describe(&m, desc, sizeof desc);
    printf("impl=shakeshake-%s model=\"%s\" batch=%d threads=%d img_per_s=%.1f ms_per_step=%.1f "
           "fwd_ms=%.1f bwd_ms=%.1f peak_rss_mb=%.0f\n", bname, desc, batch, threads,
           steps * batch / dt, 1e3 * dt / steps, 1e3 * fwd / steps, 1e3 * bwd / steps,
           peak_rss_bytes() / 1048576.0);
    ops->destroy(be);
    model_free(&m);
    return 0;
fail:
    fprintf(stderr, "bench_train: %s\n", e.msg);
    return 1;
}
