/*
 * Training throughput and peak memory of one backend on synthetic batches:
 * forward, backward and SGD update of a full network, the work of a training
 * step without data loading (the PyTorch peers, bench/torch_bench.py on the
 * CPU and bench/torch_gpu_bench.py on a GPU, time the same thing).
 *
 *   bench_train [backend=cpu] [depth=26] [width=32] [batch=128] [steps=5]
 *               [warmup=2] [threads=2] [arch=resnet] [groups=4] [classes=10]
 *               [size=32] [channels=3] [precision=fp32|bf16] [device=0]
 *               [epoch=0|1] [train_images=50000] [test_images=10000]
 *
 * Prints one line of key=value figures: img/s and ms per training step,
 * evaluation ms per batch, epoch_s_est (an epoch of train_images training
 * images and test_images evaluated, estimated from those per-batch times
 * with every batch counted full), with epoch=1 also epoch_s (such an epoch
 * run and timed, last batches partial as in training), and the peak RSS.
 * GPU memory is not reported: a backend has no call for it, and
 * scripts/gpu-check.sh samples nvidia-smi around the run instead.
 *
 * Timing holds for asynchronous backends too: forward returns its logits on
 * the host, so it returns only once the device has finished it and all work
 * queued before it (the previous step's backward and update). The timed
 * interval runs from the end of one forward to the end of the forward
 * `steps` steps later: exactly `steps` whole steps. fwd_ms and bwd_ms split
 * it by where the host waited, which on such a backend puts the device time
 * of backward and update partly into fwd_ms.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "bench_args.h"
#include "model.h"
#include "philox.h"
#include "shake.h"
#include "train.h"

static const char *const KEYS[] = {
    "backend", "depth", "width", "batch", "steps", "warmup", "threads", "arch", "groups",
    "classes", "size", "channels", "precision", "device", "epoch", "train_images",
    "test_images"};

typedef struct {
    const BackendOps *ops;
    Backend *be;
    const Model *m;
    float *x, *logits, *dlogits, *alpha, *beta;
    int *labels;
    int classes;
} Bench;

/* One training step on the first n images; the forward's own duration
 * goes to *fwd_s, backward and update's to *bwd_s. */
static int train_step(Bench *b, int n, int64_t step, double *fwd_s, double *bwd_s, Err *e)
{
    shake_draw(b->alpha, b->beta, b->m->nblocks, n, 1, step, SHAKE_SHAKE, SHAKE_SHAKE,
               LEVEL_IMAGE);
    double t0 = time_now();
    if (b->ops->forward(b->be, b->logits, b->x, b->alpha, n, 1, e))
        return -1;
    double t1 = time_now();
    softmax_xent(b->dlogits, NULL, b->logits, b->labels, n, b->classes);
    if (b->ops->backward(b->be, b->dlogits, b->beta, n, e) ||
        b->ops->update(b->be, 0.01f, 0.9f, 1e-4f, e))
        return -1;
    *fwd_s += t1 - t0;
    *bwd_s += time_now() - t1;
    return 0;
}

int main(int argc, char **argv)
{
    if (check_args(argc, argv, "bench_train", KEYS, sizeof KEYS / sizeof KEYS[0]))
        return 2;
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
    int device = atoi(arg(argc, argv, "device", "0"));
    int epoch = atoi(arg(argc, argv, "epoch", "0"));
    int train_images = atoi(arg(argc, argv, "train_images", "50000"));
    int test_images = atoi(arg(argc, argv, "test_images", "10000"));
    const char *prec = arg(argc, argv, "precision", "fp32");
    Arch arch = strcmp(arg(argc, argv, "arch", "resnet"), "resnext") == 0 ? ARCH_RESNEXT
                                                                          : ARCH_RESNET;
    if (batch < 2 || steps < 1 || warmup < 0 || train_images < 1 || test_images < 1) {
        fprintf(stderr, "bench_train: batch must be at least 2, steps, train_images and "
                "test_images at least 1, warmup at least 0\n");
        return 2;
    }
    Precision precision;
    if (strcmp(prec, "fp32") == 0) {
        precision = PRECISION_FP32;
    } else if (strcmp(prec, "bf16") == 0) {
        precision = PRECISION_BF16;
    } else {
        fprintf(stderr, "bench_train: precision=%s: fp32 or bf16\n", prec);
        return 2;
    }
    int is_cuda = strcmp(bname, "cuda") == 0;
    if (precision == PRECISION_BF16 && !is_cuda) {
        fprintf(stderr, "bench_train: precision=bf16: only backend=cuda computes in bf16 "
                "(backend=%s is float32)\n", bname);
        return 2;
    }
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
    BackendOptions bo = {.max_batch = batch, .threads = threads, .device = device,
                         .precision = precision};
    Backend *be = ops->create(&m, &bo, &e);
    if (!be) {
        fprintf(stderr, "bench_train: %s\n", e.msg);
        return 1;
    }
    float *params = calloc(m.nparams, sizeof(float)), *state = calloc(m.nstate, sizeof(float));
    size_t img = (size_t)channels * size * size;
    Bench b = {ops, be, &m, malloc((size_t)batch * img * sizeof(float)),
               malloc((size_t)batch * classes * sizeof(float)),
               malloc((size_t)batch * classes * sizeof(float)),
               malloc((size_t)m.nblocks * batch * sizeof(float)),
               malloc((size_t)m.nblocks * batch * sizeof(float)),
               malloc((size_t)batch * sizeof(int)), classes};
    model_init(&m, 1, params, state);
    for (size_t i = 0; i < (size_t)batch * img; i++)
        b.x[i] = 2.0f * rng_uniform(7, RNG_TEST, (uint32_t)i, 0, 0) - 1.0f;
    for (int i = 0; i < batch; i++)
        b.labels[i] = (int)(rng_u32(7, RNG_TEST, (uint32_t)i, 1, 0) % (uint32_t)classes);
    int rc = 1;
    if (ops->load(be, params, state, NULL, &e))
        goto out;

    /* training steps: warmup, then `steps` timed ones closed by a forward */
    double fwd = 0, bwd = 0, unused = 0;
    int64_t step = 0;
    for (; step < warmup; step++)
        if (train_step(&b, batch, step, &unused, &unused, &e))
            goto out;
    shake_draw(b.alpha, b.beta, m.nblocks, batch, 1, step, SHAKE_SHAKE, SHAKE_SHAKE,
               LEVEL_IMAGE);
    if (ops->forward(be, b.logits, b.x, b.alpha, batch, 1, &e))
        goto out;
    double t0 = time_now();
    softmax_xent(b.dlogits, NULL, b.logits, b.labels, batch, classes);
    if (ops->backward(be, b.dlogits, b.beta, batch, &e) ||
        ops->update(be, 0.01f, 0.9f, 1e-4f, &e))
        goto out;
    bwd += time_now() - t0;
    for (int s = 1; s < steps; s++)
        if (train_step(&b, batch, ++step, &fwd, &bwd, &e))
            goto out;
    shake_draw(b.alpha, b.beta, m.nblocks, batch, 1, ++step, SHAKE_SHAKE, SHAKE_SHAKE,
               LEVEL_IMAGE);
    double a = time_now();
    if (ops->forward(be, b.logits, b.x, b.alpha, batch, 1, &e))
        goto out;
    double t1 = time_now();
    fwd += t1 - a;
    double step_s = (t1 - t0) / steps;

    /* evaluation batches: one to warm up, then `steps` timed ones; each
     * forward returns with its logits, so each is complete */
    if (ops->forward(be, b.logits, b.x, NULL, batch, 0, &e))
        goto out;
    a = time_now();
    for (int s = 0; s < steps; s++)
        if (ops->forward(be, b.logits, b.x, NULL, batch, 0, &e))
            goto out;
    double eval_s = (time_now() - a) / steps;
    int train_batches = (train_images + batch - 1) / batch;
    int test_batches = (test_images + batch - 1) / batch;
    double epoch_est = train_batches * step_s + test_batches * eval_s;

    /* epoch=1: such an epoch as training runs it, the last batches partial */
    double epoch_s = NAN;
    if (epoch) {
        a = time_now();
        for (int it = 0; it < train_batches; it++) {
            int n = train_images - it * batch < batch ? train_images - it * batch : batch;
            if (train_step(&b, n, ++step, &unused, &unused, &e))
                goto out;
        }
        for (int it = 0; it < test_batches; it++) {
            int n = test_images - it * batch < batch ? test_images - it * batch : batch;
            if (ops->forward(be, b.logits, b.x, NULL, n, 0, &e))
                goto out;
        }
        epoch_s = time_now() - a;
    }

    char desc[128], devkv[32] = "", epochkv[48] = "";
    model_describe(&m, desc, sizeof desc);
    if (is_cuda)
        snprintf(devkv, sizeof devkv, " device=%d", device);
    if (epoch)
        snprintf(epochkv, sizeof epochkv, " epoch_s=%.2f", epoch_s);
    printf("impl=shakeshake-%s model=\"%s\" batch=%d precision=%s%s threads=%d "
           "img_per_s=%.1f ms_per_step=%.2f fwd_ms=%.2f bwd_ms=%.2f eval_ms=%.2f "
           "epoch_s_est=%.2f%s peak_rss_mb=%.0f\n",
           bname, desc, batch, prec, devkv, threads, batch / step_s, 1e3 * step_s,
           1e3 * fwd / steps, 1e3 * bwd / steps, 1e3 * eval_s, epoch_est, epochkv,
           peak_rss_bytes() / 1048576.0);
    rc = 0;
out:
    if (rc)
        fprintf(stderr, "bench_train: %s\n", e.msg);
    ops->destroy(be);
    free(params); free(state); free(b.x); free(b.logits); free(b.dlogits);
    free(b.alpha); free(b.beta); free(b.labels);
    model_free(&m);
    return rc;
}
