/*
 * The cuda backend: against `ref` on small networks of both block types
 * (backend_compare.h): in float32 along two trajectories and from common
 * inputs at every step, in bf16 from common inputs, over every forward and
 * backward mode at both levels; its device-side draws (shake coefficients,
 * augmented batches) bit-identical to the host's; checkpoints that move
 * between cuda and the cpu backend mid-run; a clear error for a device that
 * is not there.
 *
 * Skipped (exit 77, CTest's SKIP_RETURN_CODE) when the binary has no cuda
 * backend or no GPU is visible, with a line that says which.
 */
#include "testutil.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "backend_compare.h"
#include "checkpoint.h"
#include "config.h"
#include "data.h"
#include "model.h"
#include "optim.h"
#include "philox.h"
#include "shake.h"
#include "train.h"

#ifdef SHAKE_CUDA_EMU
#include "emu/census.h"
#endif

static const BackendOps *cuda;

/* ---- cuda against ref ---- */

/*
 * Every forward mode (even, shake), backward mode (even, shake, keep) and
 * level appears; so do both shifts, odd image sizes, channel counts that are
 * not multiples of 8 (6 and 12, which vectorized or tensor-core paths must
 * pad or handle apart), a single input channel and grouped convolutions.
 * The last case is large enough (16384 rows in its first stage) that the
 * batch norms' sums run over 64 and 128 chunks, more than the 32 at a time
 * that the kernels adding them up take, as at full size (512); the smaller
 * cases have one or two.
 */
static const CompareCase cases[] = {
    {"resnet d8 w16 8x8 original shake/shake image",
     {ARCH_RESNET, 8, 16, 1, 10, 3, 8, 8, SHIFT_ORIGINAL}, 4, SHAKE_SHAKE, SHAKE_SHAKE,
     LEVEL_IMAGE},
    {"resnet d8 w16 8x8 reimpl shake/shake batch",
     {ARCH_RESNET, 8, 16, 1, 10, 3, 8, 8, SHIFT_REIMPL}, 4, SHAKE_SHAKE, SHAKE_SHAKE,
     LEVEL_BATCH},
    {"resnet d14 w32 9x9 original even/even image (odd sizes)",
     {ARCH_RESNET, 14, 32, 1, 10, 3, 9, 9, SHIFT_ORIGINAL}, 3, SHAKE_EVEN, SHAKE_EVEN,
     LEVEL_IMAGE},
    {"resnet d8 w6 1ch 7x7 reimpl shake/keep image (6, 12 channels)",
     {ARCH_RESNET, 8, 6, 1, 7, 1, 7, 7, SHIFT_REIMPL}, 5, SHAKE_SHAKE, SHAKE_KEEP,
     LEVEL_IMAGE},
    {"resnet d8 w12 11x11 original even/shake batch (12 channels)",
     {ARCH_RESNET, 8, 12, 1, 10, 3, 11, 11, SHIFT_ORIGINAL}, 6, SHAKE_EVEN, SHAKE_SHAKE,
     LEVEL_BATCH},
    {"resnet d8 w16 8x8 original shake/even image",
     {ARCH_RESNET, 8, 16, 1, 10, 3, 8, 8, SHIFT_ORIGINAL}, 4, SHAKE_SHAKE, SHAKE_EVEN,
     LEVEL_IMAGE},
    {"resnext d11 g2 w16 8x8 shake/shake image",
     {ARCH_RESNEXT, 11, 16, 2, 10, 3, 8, 8, SHIFT_ORIGINAL}, 4, SHAKE_SHAKE, SHAKE_SHAKE,
     LEVEL_IMAGE},
    {"resnext d11 g4 w8 9x9 shake/keep batch",
     {ARCH_RESNEXT, 11, 8, 4, 10, 3, 9, 9, SHIFT_ORIGINAL}, 3, SHAKE_SHAKE, SHAKE_KEEP,
     LEVEL_BATCH},
    {"resnet d8 w16 32x32 original shake/shake image, batch 16 (many chunks)",
     {ARCH_RESNET, 8, 16, 1, 10, 3, 32, 32, SHIFT_ORIGINAL}, 16, SHAKE_SHAKE, SHAKE_SHAKE,
     LEVEL_IMAGE},
};
/* the ResNeXt that SHAKE_CUDA_FIND is tried on in bf16 */
enum { CASE_RESNEXT = 6 };
enum { NCASES = sizeof cases / sizeof cases[0] };

/* Each case three ways: float32 along two trajectories, float32 and bf16
 * from common inputs at every step (backend_compare.h). */
typedef enum { FP32_TRAJECTORY, FP32_SYNCED, BF16_SYNCED, NMODES } ParityMode;
static const char *const mode_names[NMODES] = {"fp32", "fp32 synced", "bf16 synced"};

typedef struct {
    const CompareCase *c;
    ParityMode mode;
    char name[200];
} Parity;

static Parity parity[NMODES * NCASES];

/*
 * float32: the bounds test_backends.c justifies for cpu against ref (1e-4
 * for one computation, 1e-3 once SGD steps with batch statistics of a few
 * images have amplified the differences). An SGD step is the same float32
 * formula on the same numbers in both, a few ulps apart: 1e-5.
 */
static const CompareTol tol_fp32 = {1e-4, 1e-3};
static const CompareSyncTol tol_fp32_synced = {1e-4, 1e-4, 1e-4, 1e-5};

/*
 * bf16 keeps 8 significant bits: each rounding to bf16 is off by up to
 * 2^-8, about 4e-3 relative, and a layer rounds a few times (its input, its
 * weights, its output). Forward, the errors of the 8 to 14 layers of these
 * networks add up to about 1e-2 of the logits' scale; running statistics,
 * averages, stay under 4e-3. Backward, batch norm over a few images
 * subtracts nearly equal terms, and the gradients reaching the first layers
 * are small remainders of them: there the same roundings leave errors of
 * tens of percent. The bounds come from bf16 simulated on these cases
 * (PyTorch's bf16 autocast against float32 on the CPU, 8-10 draws each):
 * logits within 2.7e-2 (bound 5e-2), running statistics within 3.6e-3
 * (bound 2e-2), all gradients together within 0.23 of their norm (bound
 * 0.4; one small tensor alone reached 1.05, so tensors are not bounded one
 * by one). So bf16 is checked for computing the same function within its
 * rounding (a missing gradient is 1.0 off, a wrong conversion far more);
 * the formulas themselves are the float32 comparisons' to check. SGD steps
 * run on float32 master weights: the float32 bound.
 */
static const CompareSyncTol tol_bf16_synced = {5e-2, 2e-2, 0.4, 1e-5};

/* The fp32 synced comparisons run with four streams (SHAKE_CUDA_STREAMS=4:
 * the branches, the projection shortcuts and the branches' filter
 * gradients side by side) or three (the branches and the shortcuts, the
 * default), every other case, so each count sees ResNets and a ResNeXt at
 * the tight bound; the trajectories with three, the bf16 synced ones with
 * two (the branches only): a wait missing between streams fails some of
 * them (in the emulation, streams run in an order that their waits allow,
 * mostly the latest queued first). The blocks' first convolutions run
 * merged (the default) in the trajectories; apart (SHAKE_CUDA_MERGE=0) in
 * half the synced cases of each precision, chosen so that each setting
 * meets both stream counts and a ResNeXt in fp32, and channel counts that
 * are not multiples of 8 in both precisions. */
static void test_parity(void **ctx)
{
    const Parity *p = *ctx;
    BackendOptions o = {.max_batch = 0, .threads = 2, .device = 0,
                        .precision = p->mode == BF16_SYNCED ? PRECISION_BF16 : PRECISION_FP32};
    CompareCase c = *p->c;
    c.name = p->name;
    const int i = (int)(p->c - cases);
    if (p->mode == FP32_SYNCED) {
        setenv("SHAKE_CUDA_STREAMS", i % 2 == 0 ? "4" : "3", 1);
        setenv("SHAKE_CUDA_MERGE", (i / 2 + i) % 2 == 0 ? "1" : "0", 1);
    } else if (p->mode == BF16_SYNCED) {
        setenv("SHAKE_CUDA_STREAMS", "2", 1);
        setenv("SHAKE_CUDA_MERGE", i % 2 == 0 ? "1" : "0", 1);
    } else {
        unsetenv("SHAKE_CUDA_STREAMS");
        unsetenv("SHAKE_CUDA_MERGE");
    }
    if (p->mode == FP32_TRAJECTORY)
        compare_case(cuda, &o, &c, &tol_fp32);
    else
        compare_case_synced(cuda, &o, &c,
                            p->mode == BF16_SYNCED ? &tol_bf16_synced : &tol_fp32_synced);
    unsetenv("SHAKE_CUDA_STREAMS");
    unsetenv("SHAKE_CUDA_MERGE");
}

/*
 * SHAKE_CUDA_FIND=1 (cuDNN times the candidates and the fastest come
 * first) computes the same function: a ResNet in fp32 and a ResNeXt in
 * bf16 within the parity bounds. And SHAKE_CUDA_BN_CHUNKS outside 1..512,
 * SHAKE_CUDA_STREAMS other than 1 to 4, SHAKE_CUDA_MERGE other than 0 or
 * 1, are refused by name.
 */
static void test_tuning_knobs(void **ctx)
{
    (void)ctx;
    setenv("SHAKE_CUDA_FIND", "1", 1);
    for (int k = 0; k < 2; k++) {
        const int i = k == 0 ? 0 : CASE_RESNEXT;
        BackendOptions o = {.max_batch = 0, .threads = 2, .device = 0,
                            .precision = k == 0 ? PRECISION_FP32 : PRECISION_BF16};
        CompareCase c = cases[i];
        char name[200];
        snprintf(name, sizeof name, "SHAKE_CUDA_FIND=1, %s: %s",
                 k == 0 ? "fp32 synced" : "bf16 synced", cases[i].name);
        c.name = name;
        compare_case_synced(cuda, &o, &c, k == 0 ? &tol_fp32_synced : &tol_bf16_synced);
    }
    unsetenv("SHAKE_CUDA_FIND");

    const ModelSpec spec = {ARCH_RESNET, 8, 16, 1, 10, 3, 8, 8, SHIFT_ORIGINAL};
    Model m;
    Err e = {{0}};
    tu_model(&m, &spec);
    const struct {
        const char *knob, *value;
    } bad[] = {{"SHAKE_CUDA_BN_CHUNKS", "0"},    {"SHAKE_CUDA_BN_CHUNKS", "513"},
               {"SHAKE_CUDA_BN_CHUNKS", "many"}, {"SHAKE_CUDA_BN_CHUNKS", "12x"},
               {"SHAKE_CUDA_STREAMS", "0"},      {"SHAKE_CUDA_STREAMS", "5"},
               {"SHAKE_CUDA_STREAMS", "two"},    {"SHAKE_CUDA_STREAMS", ""},
               {"SHAKE_CUDA_STREAMS", "8"},      {"SHAKE_CUDA_STREAMS", "21"},
               {"SHAKE_CUDA_MERGE", "2"},        {"SHAKE_CUDA_MERGE", "yes"},
               {"SHAKE_CUDA_MERGE", ""},         {"SHAKE_CUDA_MERGE", "10"}};
    for (size_t j = 0; j < sizeof bad / sizeof bad[0]; j++) {
        setenv(bad[j].knob, bad[j].value, 1);
        BackendOptions o = {.max_batch = 4, .threads = 2, .device = 0, .precision = PRECISION_FP32};
        e = (Err){{0}};
        Backend *be = cuda->create(&m, &o, &e);
        unsetenv(bad[j].knob);
        if (be) {
            cuda->destroy(be);
            fail_msg("%s=%s was accepted", bad[j].knob, bad[j].value);
        }
        if (!strstr(e.msg, bad[j].knob))
            fail_msg("%s=%s: the error does not name it: %s", bad[j].knob, bad[j].value, e.msg);
    }
    model_free(&m);
}

/* ---- device-side draws: bit-identical to the host's ---- */

static void test_shake_draw_same(void **ctx)
{
    (void)ctx;
    static const uint64_t seeds[] = {1, 0x9e3779b97f4a7c15ull};
    /* large steps: past 2^31 (a signed 32-bit step would go negative) and
     * past 2^32 (the counter keeps the step's low 32 bits) */
    static const int64_t steps[] = {0, 1, 389, 701999, 3000000000ll, (1ll << 32) + 5};
    static const int sizes[][2] = {{12, 128}, {27, 33}, {1, 1}, {9, 200}, {12, 127}};
    static const int modes[][2] = {{SHAKE_EVEN, SHAKE_EVEN},  {SHAKE_EVEN, SHAKE_SHAKE},
                                   {SHAKE_EVEN, SHAKE_KEEP},  {SHAKE_SHAKE, SHAKE_EVEN},
                                   {SHAKE_SHAKE, SHAKE_SHAKE}, {SHAKE_SHAKE, SHAKE_KEEP}};
    size_t most = 27 * 200;
    float *ah = malloc(most * sizeof(float)), *bh = malloc(most * sizeof(float));
    float *ad = malloc(most * sizeof(float)), *bd = malloc(most * sizeof(float));
    int calls = 0;
    for (size_t si = 0; si < sizeof seeds / sizeof seeds[0]; si++)
    for (size_t ti = 0; ti < sizeof steps / sizeof steps[0]; ti++)
    for (size_t zi = 0; zi < sizeof sizes / sizeof sizes[0]; zi++)
    for (size_t mi = 0; mi < sizeof modes / sizeof modes[0]; mi++)
    for (int level = LEVEL_BATCH; level <= LEVEL_IMAGE; level++) {
        int nb = sizes[zi][0], n = sizes[zi][1];
        size_t count = (size_t)nb * n;
        shake_draw(ah, bh, nb, n, seeds[si], steps[ti], (ShakeMode)modes[mi][0],
                   (ShakeMode)modes[mi][1], (ShakeLevel)level);
        /* poison: every element must be written */
        memset(ad, 0xff, count * sizeof(float));
        memset(bd, 0xff, count * sizeof(float));
        Err e = {{0}};
        if (backend_cuda_shake_draw(ad, bd, nb, n, seeds[si], steps[ti], modes[mi][0],
                                    modes[mi][1], level, 0, &e))
            fail_msg("backend_cuda_shake_draw: %s", e.msg);
        for (int which = 0; which < 2; which++) {
            const float *h = which ? bh : ah, *d = which ? bd : ad;
            if (memcmp(h, d, count * sizeof(float)) == 0)
                continue;
            size_t k = 0;
            while (memcmp(&h[k], &d[k], sizeof(float)) == 0)
                k++;
            fail_msg("%s differs at block %zu image %zu: host %a, cuda %a (seed %#llx step "
                     "%lld nblocks %d n %d forward %d backward %d level %d)",
                     which ? "beta" : "alpha", k / n, k % n, h[k], d[k],
                     (unsigned long long)seeds[si], (long long)steps[ti], nb, n,
                     modes[mi][0], modes[mi][1], level);
        }
        calls++;
    }
    printf("  %d draws bit-identical\n", calls);
    free(ah); free(bh); free(ad); free(bd);
}

/* Fails with the first differing element of two batches. */
static void same_batch(const char *what, const float *xh, const int *lh, const float *xd,
                       const int *ld, const Dataset *d, int count, int epoch, int augment)
{
    const size_t img = (size_t)d->c * d->h * d->w;
    for (int j = 0; j < count; j++)
        if (lh[j] != ld[j])
            fail_msg("%s: label %d differs: host %d, cuda %d (epoch %d augment %d)", what, j,
                     lh[j], ld[j], epoch, augment);
    if (memcmp(xh, xd, (size_t)count * img * sizeof(float)) == 0)
        return;
    size_t k = 0;
    while (memcmp(&xh[k], &xd[k], sizeof(float)) == 0)
        k++;
    size_t j = k / img, r = k % img, plane = (size_t)d->h * d->w;
    fail_msg("%s: image %zu channel %zu row %zu column %zu differs: host %a, cuda %a "
             "(epoch %d augment %d count %d)", what, j, r / plane, r % plane / d->w,
             r % d->w, xh[k], xd[k], epoch, augment, count);
}

/* Batches of images order[0..count) (a shuffled subset, so idx is no
 * identity) for several epochs and seeds, augmented and not. */
static void batches_same(const char *what, const Dataset *d)
{
    static const int counts[] = {128, 77, 1};
    static const int epochs[] = {0, 1, 7, 1799};
    static const uint64_t seeds[] = {1, 0x123456789abcull};
    const size_t img = (size_t)d->c * d->h * d->w;
    int *order = malloc((size_t)d->n * sizeof(int));
    float *xh = malloc(128 * img * sizeof(float)), *xd = malloc(128 * img * sizeof(float));
    int lh[128], ld[128];
    int batches = 0;
    for (size_t si = 0; si < sizeof seeds / sizeof seeds[0]; si++)
    for (size_t ei = 0; ei < sizeof epochs / sizeof epochs[0]; ei++)
    for (size_t ci = 0; ci < sizeof counts / sizeof counts[0]; ci++)
    for (int augment = 0; augment <= 1; augment++) {
        int count = counts[ci], epoch = epochs[ei];
        data_epoch_order(order, d->n, seeds[si], epoch, 1);
        data_batch(xh, lh, d, order, count, seeds[si], epoch, augment);
        memset(xd, 0xff, (size_t)count * img * sizeof(float));
        memset(ld, 0xff, sizeof ld);
        Err e = {{0}};
        if (backend_cuda_data_batch(xd, ld, d, order, count, seeds[si], epoch, augment, 0, &e))
            fail_msg("%s: backend_cuda_data_batch: %s", what, e.msg);
        same_batch(what, xh, lh, xd, ld, d, count, epoch, augment);
        batches++;
    }
    printf("  %s: %d batches bit-identical\n", what, batches);
    free(order); free(xh); free(xd);
}

static void test_data_batch_same(void **ctx)
{
    (void)ctx;
    Dataset train, test;
    Err e = {{0}};
    if (dataset_load(&train, &test, DS_SYNTHETIC, NULL, 3, &e))
        fail_msg("%s", e.msg);
    batches_same("synthetic 3x32x32", &train);
    dataset_free(&train);
    dataset_free(&test);

    /* One channel, 28x28, flips on (as Fashion-MNIST) and off (as MNIST):
     * the channel count, image size and flip switch must be the data set's,
     * not CIFAR's. */
    Dataset g = {0};
    g.kind = DS_FASHION_MNIST;
    g.n = 500;
    g.c = 1;
    g.h = g.w = 28;
    g.classes = 10;
    g.mean[0] = 72.94f;
    g.std[0] = 90.02f;
    g.mean[1] = g.mean[2] = 0;
    g.std[1] = g.std[2] = 1;
    g.pixels = malloc((size_t)g.n * 28 * 28);
    g.labels = malloc((size_t)g.n);
    for (size_t i = 0; i < (size_t)g.n * 28 * 28; i++)
        g.pixels[i] = (uint8_t)rng_u32(41, RNG_TEST, (uint32_t)i, 0, 0);
    for (int i = 0; i < g.n; i++)
        g.labels[i] = (uint8_t)(rng_u32(41, RNG_TEST, (uint32_t)i, 1, 0) % 10);
    g.flip = 1;
    batches_same("1x28x28 with flips", &g);
    g.flip = 0;
    g.kind = DS_MNIST;
    batches_same("1x28x28 without flips", &g);
    free(g.pixels);
    free(g.labels);
}

/* ---- checkpoints between backends ---- */

static char *data_dir;

static int group_setup(void **s)
{
    (void)s;
    data_dir = tu_tempdir("cuda-data");
    tu_write_cifar10(data_dir, 120, 40, 17, 0);
    return 0;
}

static int group_teardown(void **s)
{
    (void)s;
    tu_rmtree(data_dir);
    free(data_dir);
    return 0;
}

/* The cpu backend where it is built, ref otherwise. */
static const char *host_backend(void)
{
    return backend_find("cpu") ? "cpu" : "ref";
}

/* 120 images in batches of 32: 4 steps an epoch. Six epochs are planned
 * and the runs stop after 2 and 3 of them (steps 8 and 12 of 24), where the
 * cosine schedule's learning rate is still over half its peak, so the steps
 * after a resume move the weights (by about 1e-2 of their scale). The peak
 * of 0.02 keeps the run out of the regime where float32 summation-order
 * differences grow fast: at 0.1 the momentum of two backends differed by
 * 1e-2 after 4 steps, at 0.02 by 2e-3. */
static void base_config(TrainConfig *c, const char *backend, const char *out)
{
    Err e = {{0}};
    config_defaults(c);
    const char *kv[] = {"dataset=cifar10", "depth=8", "width=16", "epochs=6", "batch=32",
                        "lr=0.02", "seed=5", "threads=2", "precision=fp32", "device=0"};
    for (size_t i = 0; i < sizeof kv / sizeof kv[0]; i++)
        if (config_set(c, kv[i], &e))
            fail_msg("%s", e.msg);
    snprintf(c->data_dir, sizeof c->data_dir, "%s", data_dir);
    snprintf(c->backend, sizeof c->backend, "%s", backend);
    snprintf(c->out, sizeof c->out, "%s", out);
}

static void ckpt_path(char *buf, size_t len, const char *dir)
{
    snprintf(buf, len, "%s/checkpoint.safetensors", dir);
}

/* The checkpoint's header holds exactly the model's tensors and their
 * momentum buffers, float32, with the model's names and shapes (what
 * PyTorch or another backend reading it relies on). */
static void check_header(const char *dir, const Model *m)
{
    char path[4096];
    ckpt_path(path, sizeof path, dir);
    size_t len;
    unsigned char *bytes = tu_read_file(path, &len);
    if (!bytes || len < 8)
        fail_msg("%s: missing or shorter than a safetensors header", path);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--)
        hlen = hlen << 8 | bytes[i];
    if (hlen > len - 8)
        fail_msg("%s: header length %llu past the end of the file", path,
                 (unsigned long long)hlen);
    json_error_t je;
    json_t *h = json_loadb((const char *)bytes + 8, (size_t)hlen, 0, &je);
    if (!h)
        fail_msg("%s: header is not JSON: %s", path, je.text);
    size_t want = 0;
    for (int t = 0; t < m->ntensors; t++) {
        const TensorInfo *ti = &m->tensors[t];
        for (int mom = 0; mom <= (ti->arena == T_PARAM); mom++) {
            char name[160];
            snprintf(name, sizeof name, "%s%s", mom ? "momentum." : "", ti->name);
            json_t *o = json_object_get(h, name);
            if (!o)
                fail_msg("%s: no tensor %s", path, name);
            const char *dtype = json_string_value(json_object_get(o, "dtype"));
            if (!dtype || strcmp(dtype, "F32") != 0)
                fail_msg("%s: %s has dtype %s, not F32", path, name, dtype ? dtype : "(none)");
            json_t *shape = json_object_get(o, "shape");
            int ok = json_is_array(shape) && (int)json_array_size(shape) == ti->ndim;
            for (int k = 0; ok && k < ti->ndim; k++)
                ok = json_integer_value(json_array_get(shape, k)) == ti->shape[k];
            if (!ok)
                fail_msg("%s: %s has the wrong shape (%d dimensions wanted)", path, name,
                         ti->ndim);
            want++;
        }
    }
    size_t have = json_object_size(h) - (json_object_get(h, "__metadata__") != NULL);
    if (have != want)
        fail_msg("%s: %zu tensors, the model and its momentum have %zu", path, have, want);
    json_decref(h);
    free(bytes);
}

/*
 * Relative errors (tu_rel_err, against the arena's scale) allowed between a
 * run on one backend and the same run moved to another for its last 4 of 12
 * steps. Both compute in float32 and differ in summation order, a few ulps
 * per op, which the 4 steps amplify; cpu against ref on this run measured
 * 1e-5 for the weights, 1.4e-6 for the running statistics and 3.3e-3 for the
 * momentum (a running sum of gradients, which differ more than the weights
 * they move). The bounds leave a factor 15-50 over that. A resume that lost
 * the momentum, the running statistics or the step (so the learning rate or
 * the coefficients) would be off by a good part of what the 4 steps did;
 * the test checks that this is more than 10 times the weights' bound, or
 * it could not tell.
 */
#define RESUME_TOL 5e-4
#define RESUME_TOL_MOMENTUM 5e-2

static void cross_resume(const char *first, const char *second)
{
    char *root = tu_tempdir("cuda-resume");
    char straight[400], part[400], cont[400], ck[500];
    snprintf(straight, sizeof straight, "%s/straight", root);
    snprintf(part, sizeof part, "%s/part", root);
    snprintf(cont, sizeof cont, "%s/cont", root);
    TrainConfig c;
    base_config(&c, first, straight);
    c.steps = 12;
    tu_train(&c, TRAIN_STOPPED);

    base_config(&c, first, part);
    c.steps = 8;
    tu_train(&c, TRAIN_STOPPED);

    ckpt_path(ck, sizeof ck, part);
    Err e = {{0}};
    char outkv[500], bkv[64];
    snprintf(outkv, sizeof outkv, "out=%s", cont);
    snprintf(bkv, sizeof bkv, "backend=%s", second);
    char *assign[] = {outkv, bkv, "precision=fp32"};
    if (train_resume_config(&c, ck, assign, 3, &e))
        fail_msg("resume %s's checkpoint on %s: %s", first, second, e.msg);
    assert_string_equal(c.backend, second);
    c.steps = 12;
    tu_train(&c, TRAIN_STOPPED);

    TuCheckpoint s, r, p;
    tu_checkpoint_load(&s, straight, &c);
    tu_checkpoint_load(&r, cont, &c);
    tu_checkpoint_load(&p, part, &c);
    check_header(part, &p.m);
    check_header(cont, &r.m);
    assert_int_equal(p.meta.step, 8);
    assert_int_equal(s.meta.step, 12);
    assert_int_equal(r.meta.step, 12);
    assert_int_equal(r.meta.epoch, s.meta.epoch);
    /* the first backend's checkpoint carries its optimizer state */
    assert_true(tu_max_abs(p.mom, p.m.nparams) > 0);
    double ep = tu_rel_err(r.params, s.params, s.m.nparams);
    double es = tu_rel_err(r.state, s.state, s.m.nstate);
    double em = tu_rel_err(r.mom, s.mom, s.m.nparams);
    double moved = tu_rel_err(p.params, s.params, s.m.nparams);
    printf("  %s 8 steps + %s 4 against %s 12: relative error %.2g (weights), %.2g "
           "(running statistics), %.2g (momentum); the 4 steps moved the weights by %.2g\n",
           first, second, first, ep, es, em, moved);
    if (!(moved > 10 * RESUME_TOL))
        fail_msg("the last 4 steps moved the weights by only %.2g: this comparison could "
                 "not tell a broken resume", moved);
    if (!(ep <= RESUME_TOL && es <= RESUME_TOL))
        fail_msg("%s resumed on %s differs from %s alone: weights %.3g, running statistics "
                 "%.3g > %.0e", first, second, first, ep, es, RESUME_TOL);
    if (!(em <= RESUME_TOL_MOMENTUM))
        fail_msg("%s resumed on %s differs from %s alone: momentum %.3g > %.0e", first,
                 second, first, em, RESUME_TOL_MOMENTUM);
    tu_checkpoint_free(&s);
    tu_checkpoint_free(&r);
    tu_checkpoint_free(&p);
    tu_rmtree(root);
    free(root);
}

static void test_resume_cuda_on_host(void **ctx)
{
    (void)ctx;
    cross_resume("cuda", host_backend());
}

static void test_resume_host_on_cuda(void **ctx)
{
    (void)ctx;
    cross_resume(host_backend(), "cuda");
}

/* ---- a device that is not there ---- */

/* An error, not a crash, that names the ordinal asked for. */
static void expect_device_error(const char *what, int rc, const Err *e, int device)
{
    char num[16];
    snprintf(num, sizeof num, "%d", device);
    if (rc == 0)
        fail_msg("%s with device %d succeeded", what, device);
    if (!e->msg[0] || !strstr(e->msg, num))
        fail_msg("%s with device %d: the message does not name the device: \"%s\"", what,
                 device, e->msg);
    printf("  %s, device %d: %s\n", what, device, e->msg);
}

/*
 * Resume is exact on the GPU too: 3 epochs of 4 steps (three of 32 images,
 * one of 24) straight, against stopped mid-epoch (step 6) or at an epoch's
 * end (step 8) and resumed. The straight run replays a captured graph where
 * the resumed one warms up eagerly, so this also holds the graph to the
 * eager step's bits (deterministic algorithms are picked first).
 */
static void cuda_resume(const char *precision, int64_t stop_step)
{
    char *root = tu_tempdir("cuda-resume");
    TrainConfig c;
    Err e = {{0}};
    base_config(&c, "cuda", root);
    c.epochs = 3;
    char kv[64];
    snprintf(kv, sizeof kv, "precision=%s", precision);
    if (config_set(&c, kv, &e))
        fail_msg("%s", e.msg);
    tu_resume_case(&c, root, stop_step);
    tu_rmtree(root);
    free(root);
}

static void test_resume_exact_fp32(void **ctx)
{
    (void)ctx;
    cuda_resume("fp32", 6);
    cuda_resume("fp32", 8);
}

static void test_resume_exact_bf16(void **ctx)
{
    (void)ctx;
    cuda_resume("bf16", 6);
}

#ifdef SHAKE_CUDA_EMU
/*
 * A GPU the build has no code for, and bf16 on one older than compute
 * capability 8.0: create says which GPU and what to do (the emulation's
 * SHAKE_EMU_SM is the GPU's, SHAKE_EMU_BUILD_SM the oldest the build has
 * code for); where both fit, create succeeds.
 */
static void test_unsupported_gpu(void **ctx)
{
    (void)ctx;
    const ModelSpec spec = {ARCH_RESNET, 8, 16, 1, 10, 3, 8, 8, SHIFT_ORIGINAL};
    Model m;
    tu_model(&m, &spec);
    static const struct {
        const char *sm, *build_sm;
        Precision prec;
        const char *says[3];    /* all in the error; none: create succeeds */
    } gpus[] = {
        {"75", NULL, PRECISION_FP32,
         {"compute capability 7.5", "architectures 80,90", "-DCMAKE_CUDA_ARCHITECTURES=75"}},
        {"70", NULL, PRECISION_BF16, {"compute capability 7.0", "no kernel image", NULL}},
        {"75", "75", PRECISION_BF16, {"precision=bf16 needs", "is 7.5", "precision=fp32"}},
        {"75", "75", PRECISION_FP32, {NULL}},
        {"86", NULL, PRECISION_BF16, {NULL}},
    };
    for (size_t i = 0; i < sizeof gpus / sizeof gpus[0]; i++) {
        setenv("SHAKE_EMU_SM", gpus[i].sm, 1);
        if (gpus[i].build_sm)
            setenv("SHAKE_EMU_BUILD_SM", gpus[i].build_sm, 1);
        BackendOptions o = {.max_batch = 4, .threads = 2, .device = 0,
                            .precision = gpus[i].prec};
        Err e = {{0}};
        Backend *be = cuda->create(&m, &o, &e);
        unsetenv("SHAKE_EMU_SM");
        unsetenv("SHAKE_EMU_BUILD_SM");
        if (!gpus[i].says[0]) {
            if (!be)
                fail_msg("case %zu: sm %s: %s", i, gpus[i].sm, e.msg);
            cuda->destroy(be);
            continue;
        }
        if (be)
            fail_msg("case %zu: sm %s: created where it should not be", i, gpus[i].sm);
        for (int k = 0; k < 3 && gpus[i].says[k]; k++)
            if (!strstr(e.msg, gpus[i].says[k]))
                fail_msg("case %zu: error without \"%s\": %s", i, gpus[i].says[k], e.msg);
    }
    model_free(&m);
}
#endif

/*
 * Out of GPU memory is an error that says so and names the configuration,
 * and leaves the device usable: 26 2x96d in float32 at batch 8192 asks for
 * about 190 GB of activations (23 MB an image; every tensor still within
 * the kernels' 32-bit indices), more than an H200's 141 GB.
 */
static void test_out_of_memory(void **ctx)
{
    (void)ctx;
    const ModelSpec spec = {ARCH_RESNET, 26, 96, 1, 10, 3, 32, 32, SHIFT_ORIGINAL};
    Model m;
    Err e = {{0}};
    tu_model(&m, &spec);
    BackendOptions o = {.max_batch = 8192, .threads = 2, .device = 0, .precision = PRECISION_FP32};
    Backend *be = cuda->create(&m, &o, &e);
    if (be)
        fail_msg("26 2x96d at batch 8192 fitted in GPU memory");
    if (!strstr(e.msg, "out of GPU memory") || !strstr(e.msg, "batch 8192") ||
        !strstr(e.msg, "26 2x96d"))
        fail_msg("unclear out-of-memory error: %s", e.msg);
    BackendOptions small = {.max_batch = 4, .threads = 2, .device = 0, .precision = PRECISION_FP32};
    const ModelSpec tiny = {ARCH_RESNET, 8, 16, 1, 10, 3, 8, 8, SHIFT_ORIGINAL};
    Model t;
    tu_model(&t, &tiny);
    cuda->destroy(compare_create(cuda, &t, &small, 4));
    model_free(&t);
    model_free(&m);
}

static void test_bad_device(void **ctx)
{
    (void)ctx;
    const ModelSpec spec = {ARCH_RESNET, 8, 16, 1, 10, 3, 8, 8, SHIFT_ORIGINAL};
    Model m;
    Err e = {{0}};
    tu_model(&m, &spec);
    /* 99, and the first ordinal past the last GPU (an off-by-one) */
    const int bad[] = {99, backend_cuda_devices()};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        const int dev = bad[i];
        for (int prec = PRECISION_FP32; prec <= PRECISION_BF16; prec++) {
            BackendOptions o = {.max_batch = 4, .threads = 2, .device = dev,
                                .precision = (Precision)prec};
            e = (Err){{0}};
            Backend *be = cuda->create(&m, &o, &e);
            expect_device_error(prec == PRECISION_BF16 ? "create (bf16)" : "create", be ? 0 : -1,
                                &e, dev);
        }
        float a[4], b[4];
        e = (Err){{0}};
        expect_device_error("backend_cuda_shake_draw",
                            backend_cuda_shake_draw(a, b, 1, 4, 1, 0, SHAKE_SHAKE, SHAKE_SHAKE,
                                                    LEVEL_IMAGE, dev, &e), &e, dev);
        Dataset d = {0};
        uint8_t px[3 * 8 * 8] = {0}, lab[1] = {0};
        d.kind = DS_SYNTHETIC;
        d.n = 1;
        d.c = 3;
        d.h = d.w = 8;
        d.classes = 10;
        d.pixels = px;
        d.labels = lab;
        d.mean[0] = d.mean[1] = d.mean[2] = 0;
        d.std[0] = d.std[1] = d.std[2] = 1;
        int idx[1] = {0}, labels[1];
        float x[3 * 8 * 8];
        e = (Err){{0}};
        expect_device_error("backend_cuda_data_batch",
                            backend_cuda_data_batch(x, labels, &d, idx, 1, 1, 0, 1, dev, &e),
                            &e, dev);
    }
    /* a training run reports it as its failure */
    char *root = tu_tempdir("cuda-baddev");
    TrainConfig c;
    base_config(&c, "cuda", root);
    c.device = 99;
    c.epochs = 1;
    e = (Err){{0}};
    expect_device_error("train_run", train_run(&c, NULL, &e) == TRAIN_FAILED ? -1 : 0, &e, 99);
    tu_rmtree(root);
    free(root);
    /* and the errors left nothing behind: device 0 still works */
    BackendOptions o = {.max_batch = 4, .threads = 2, .device = 0, .precision = PRECISION_FP32};
    Backend *be = compare_create(cuda, &m, &o, 4);
    cuda->destroy(be);
    model_free(&m);
}

/* ---- the record of the algorithms picked ---- */

enum { REC_CONVS = 64 };

/* A forward and backward of 26 2x32d's little sister at batch n (inputs,
 * coefficients and loss gradient all made up: only the algorithms count). */
static void rec_steps(Backend *be, const Model *m, int n)
{
    const ModelSpec *s = &m->spec;
    const size_t xc = (size_t)n * s->in_c * s->in_h * s->in_w;
    float *x = calloc(xc, sizeof *x), *logits = calloc((size_t)n * s->classes, sizeof *logits);
    float *dl = calloc((size_t)n * s->classes, sizeof *dl);
    float *coef = calloc((size_t)m->nblocks * n, sizeof *coef);
    assert_non_null(x && logits && dl && coef);
    for (size_t i = 0; i < xc; i++)
        x[i] = (float)((i * 37) % 11) / 11.0f - 0.5f;
    for (int i = 0; i < m->nblocks * n; i++)
        coef[i] = 0.5f;
    for (int i = 0; i < n; i++)
        dl[(size_t)i * s->classes] = 1.0f;
    Err e = {{0}};
    if (cuda->forward(be, logits, x, coef, n, 1, &e) || cuda->backward(be, dl, coef, n, &e))
        fail_msg("batch %d: %s", n, e.msg);
    free(x);
    free(logits);
    free(dl);
    free(coef);
}

static json_t *rec_load(const char *path)
{
    json_error_t je;
    json_t *root = json_load_file(path, 0, &je);
    if (!root)
        fail_msg("%s: %s (line %d)", path, je.text, je.line);
    if (!json_is_array(json_object_get(root, "entries")))
        fail_msg("%s: no entries", path);
    return root;
}

/* The algorithms in use, conv by conv (-1: none), after steps at batch 4
 * and then 3, by a backend recording into path (NULL: none). */
static void rec_run(const Model *m, const char *path, int algos[REC_CONVS][3])
{
    BackendOptions o = {.max_batch = 4, .threads = 2, .device = 0,
                        .precision = PRECISION_FP32, .algo_record = path};
    Backend *be = compare_create(cuda, m, &o, 4);
    /* what it computes on, for the run's records */
    char hw[600] = "";
    cuda->describe(be, hw, sizeof hw);
    if (!strstr(hw, " (sm_") || !strstr(hw, " SMs, ") || !strstr(hw, ", with CUDA driver ") ||
        !strstr(hw, ", cuDNN ") || !strstr(hw, ", cuBLAS ") || !strstr(hw, ", in fp32"))
        fail_msg("describe: \"%s\" lacks the GPU, its libraries or the precision", hw);
    float *params = calloc(m->nparams, sizeof *params), *state = calloc(m->nstate, sizeof *state);
    assert_non_null(params && state);
    model_init(m, 3, params, state);
    Err e = {{0}};
    if (cuda->load(be, params, state, NULL, &e))
        fail_msg("%s", e.msg);
    rec_steps(be, m, 4);
    rec_steps(be, m, 3);
    /* a search's scratch (512 MB of workspace on a GPU) is not kept */
    assert_int_equal(backend_cuda_search_buffers(be), 0);
    /* written as soon as a new batch size ran, not only at the end (a
     * run may be killed) */
    if (path) {
        json_t *root = rec_load(path);
        size_t k;
        json_t *en;
        int seen = 0;
        json_array_foreach(json_object_get(root, "entries"), k, en) seen |=
            json_integer_value(json_object_get(en, "batch")) == 3;
        json_decref(root);
        if (!seen)
            fail_msg("%s: no entry for batch 3 after it ran", path);
    }
    int i, rc;
    for (i = 0; i < REC_CONVS && (rc = backend_cuda_conv_algos(be, i, algos[i])) >= 0; i++)
        if (rc == 0)
            algos[i][0] = algos[i][1] = algos[i][2] = -1;
    if (i == REC_CONVS)
        fail_msg("more than %d convolutions", REC_CONVS);
    for (; i < REC_CONVS; i++)
        algos[i][0] = algos[i][1] = algos[i][2] = -2;
    cuda->destroy(be);
    free(params);
    free(state);
}

/* After cuDNN was asked again: in the emulation, where Find repeats
 * itself, what it picks without a record (base); on a GPU, where its
 * timings may order the candidates otherwise, algorithms that exist for
 * the convolutions that have them in the first run. */
static void rec_asked_again(const int first[REC_CONVS][3], const int base[REC_CONVS][3],
                            const int other[REC_CONVS][3])
{
#ifdef SHAKE_CUDA_EMU
    (void)first;
    assert_memory_equal(base, other, sizeof(int) * REC_CONVS * 3);
#else
    (void)base;
    for (int i = 0; i < REC_CONVS; i++)
        for (int d = 0; d < 3; d++)
            if ((first[i][d] >= 0) != (other[i][d] >= 0) || other[i][d] == 99)
                fail_msg("conv %d, direction %d: algorithm %d, the first run had %d", i, d,
                         other[i][d], first[i][d]);
#endif
}

/*
 * A backend given a record (core/algo_record.h) writes the lists it picked
 * for every batch size it ran, and a backend given that record uses them
 * even where cuDNN's Find would now pick otherwise: in the emulation
 * SHAKE_EMU_FIND_FLIP=1 makes it, and the same backend without the record
 * then uses another forward algorithm, so the check can tell (on a GPU,
 * where Find's timings decide, only the first half holds to be checked). An
 * entry naming an algorithm that does not exist is not used: cuDNN is asked
 * again and the entry replaced. A record that is not JSON is replaced. A
 * training run keeps its record in its folder, and resumed into another
 * folder starts from the first one's.
 */
static void test_algo_record(void **ctx)
{
    (void)ctx;
    const ModelSpec spec = {ARCH_RESNET, 8, 16, 1, 10, 3, 8, 8, SHIFT_ORIGINAL};
    Model m;
    Err e = {{0}};
    tu_model(&m, &spec);
    char *root = tu_tempdir("algo-record");
    char path[600];
    snprintf(path, sizeof path, "%s/rec.json", root);
    static int first[REC_CONVS][3], again[REC_CONVS][3], other[REC_CONVS][3],
        base[REC_CONVS][3];

    setenv("SHAKE_CUDA_FIND", "1", 1);
    /* in the emulation, Find's order changes from one call to the next:
     * convolutions of one shape may not each keep their own pick (the
     * record has one entry a shape and batch size) */
    setenv("SHAKE_EMU_FIND_FLIP", "2", 1);
    rec_run(&m, path, first);
    json_t *rec = rec_load(path);
    size_t i;
    json_t *en;
    int batches = 0;
    json_array_foreach(json_object_get(rec, "entries"), i, en)
    {
        const int b = (int)json_integer_value(json_object_get(en, "batch"));
        assert_string_equal(json_string_value(json_object_get(en, "search")), "find");
        assert_string_equal(json_string_value(json_object_get(en, "precision")), "fp32");
        if (b != 3 && b != 4)
            fail_msg("an entry for batch %d; the backend ran 4 and 3", b);
        batches |= 1 << (b - 3);
    }
    assert_int_equal(batches, 3);
    json_decref(rec);
    size_t len0, len1;
    char *before = tu_read_file(path, &len0);

    /* Find now orders otherwise; the record still decides */
    setenv("SHAKE_EMU_FIND_FLIP", "1", 1);
    rec_run(&m, path, again);
    assert_memory_equal(first, again, sizeof first);
    char *after = tu_read_file(path, &len1);
    assert_true(len0 == len1 && memcmp(before, after, len0) == 0);
    free(before);
    free(after);
#ifdef SHAKE_CUDA_EMU
    rec_run(&m, NULL, other);
    if (memcmp(first, other, sizeof first) == 0)
        fail_msg("the flipped Find picked what the record holds: the check could not tell");
#endif

    /* entries naming no algorithm: asked again, and replaced */
    unsetenv("SHAKE_EMU_FIND_FLIP");
    rec_run(&m, NULL, base);
    rec = rec_load(path);
    json_array_foreach(json_object_get(rec, "entries"), i, en)
        json_object_set_new(en, "forward", json_pack("[[ii]]", 99, 0));
    if (json_dump_file(rec, path, 0))
        fail_msg("cannot write %s", path);
    json_decref(rec);
    rec_run(&m, path, other);
    rec_asked_again(first, base, other);
    rec = rec_load(path);
    json_array_foreach(json_object_get(rec, "entries"), i, en)
    {
        const json_t *f0 = json_array_get(json_array_get(json_object_get(en, "forward"), 0), 0);
        if (json_integer_value(f0) == 99)
            fail_msg("the entry naming forward algorithm 99 is still there");
    }
    json_decref(rec);

    /* not JSON: replaced */
    tu_write_file(path, "{\"format\": ", 11);
    rec_run(&m, path, other);
    rec_asked_again(first, base, other);
    rec = rec_load(path);
    assert_true(json_array_size(json_object_get(rec, "entries")) > 0);
    json_decref(rec);
    unsetenv("SHAKE_CUDA_FIND");

    /* a training run's folder, and a run resumed into another */
    char run1[700], run2[700], ck[800], r1[800], r2[800], outkv[800];
    snprintf(run1, sizeof run1, "%s/run1", root);
    snprintf(run2, sizeof run2, "%s/run2", root);
    TrainConfig c;
    base_config(&c, "cuda", run1);
    c.steps = 2;
    tu_train(&c, TRAIN_STOPPED);
    snprintf(r1, sizeof r1, "%s/cuda-algorithms.json", run1);
    snprintf(r2, sizeof r2, "%s/cuda-algorithms.json", run2);
    json_t *rec1 = rec_load(r1);
    assert_true(json_array_size(json_object_get(rec1, "entries")) > 0);
    /* an entry that no convolution of this run asks for: a resumed run that
     * asked cuDNN afresh instead of starting from this record would not
     * have it */
    json_t *marker = json_deep_copy(json_array_get(json_object_get(rec1, "entries"), 0));
    json_object_set_new(marker, "conv", json_string("a convolution of another network"));
    json_array_append_new(json_object_get(rec1, "entries"), marker);
    if (json_dump_file(rec1, r1, 0))
        fail_msg("cannot write %s", r1);
    ckpt_path(ck, sizeof ck, run1);
    snprintf(outkv, sizeof outkv, "out=%s", run2);
    char *assign[] = {outkv};
    if (train_resume_config(&c, ck, assign, 1, &e))
        fail_msg("%s", e.msg);
    c.steps = 3;
    tu_train(&c, TRAIN_STOPPED);
    json_t *rec2 = rec_load(r2);
    json_array_foreach(json_object_get(rec1, "entries"), i, en)
    {
        size_t j;
        json_t *en2;
        int found = 0;
        json_array_foreach(json_object_get(rec2, "entries"), j, en2) found |= json_equal(en, en2);
        if (!found)
            fail_msg("%s: entry %zu of the first run's record is missing", r2, i);
    }
    json_decref(rec1);
    json_decref(rec2);
    tu_rmtree(root);
    free(root);
    model_free(&m);
}

/* ---- the whole step on the device ---- */

/*
 * train_step (data, draws, loss and update where the data is, captured as
 * a CUDA graph once warm) against the same steps through forward, backward
 * and update with the host's data_batch, shake_draw and softmax_xent. Three
 * epochs of 40 images in batches of 16 (16, 16, 8): full and partial
 * batches, a new epoch order each epoch; with graphs the third full step is
 * captured and the later full ones replayed, also after an order upload.
 */
enum { DS_N = 40, DS_B = 16, DS_EPOCHS = 3, DS_STEPS = 9 };
/* enough to move the weights by a few percent in nine steps */
#define DS_LR 0.1

/* evaluation after each epoch: two full batches and a partial one */
enum { DS_EVALS = 3, DS_EVAL_PARTIAL = 5 };

typedef struct {
    float *params, *state, *mom;
    float *eval;                /* (DS_EPOCHS, DS_EVALS, DS_B, 10) logits */
    double loss;
    int64_t wrong;
    long graph_launches, eval_launches;
    int merged;                 /* blocks whose first convolutions ran as one */
} StepRun;

static void step_run_alloc(StepRun *r, const Model *m)
{
    r->params = malloc(m->nparams * 4);
    r->state = malloc(m->nstate * 4);
    r->mom = malloc(m->nparams * 4);
    r->eval = calloc((size_t)DS_EPOCHS * DS_EVALS * DS_B * 10, 4);
    r->loss = 0;
    r->wrong = 0;
    r->graph_launches = 0;
    r->eval_launches = 0;
}

static void step_run_free(StepRun *r)
{
    free(r->params);
    free(r->state);
    free(r->mom);
    free(r->eval);
}

/* graphs, streams, merged first convolutions: SHAKE_CUDA_GRAPHS,
 * SHAKE_CUDA_STREAMS, SHAKE_CUDA_MERGE */
static void run_device_steps(const Model *m, const Dataset *d, const float *p0, const float *s0,
                             Precision prec, const char *graphs, const char *streams,
                             const char *merge, StepRun *r)
{
    setenv("SHAKE_CUDA_GRAPHS", graphs, 1);
    setenv("SHAKE_CUDA_STREAMS", streams, 1);
    setenv("SHAKE_CUDA_MERGE", merge, 1);
    BackendOptions o = {.max_batch = DS_B, .threads = 2, .device = 0, .precision = prec};
    Backend *be = compare_create(cuda, m, &o, DS_B);
    unsetenv("SHAKE_CUDA_GRAPHS");
    unsetenv("SHAKE_CUDA_STREAMS");
    unsetenv("SHAKE_CUDA_MERGE");
    r->merged = backend_cuda_merged_blocks(be);
    COMPARE_OK(cuda->load(be, p0, s0, NULL, ep));
    /* the training images double as the evaluation set */
    COMPARE_OK(cuda->set_data(be, d, d, ep));
    int order[DS_N];
    int64_t step = 0;
    for (int epoch = 0; epoch < DS_EPOCHS; epoch++) {
        data_epoch_order(order, d->n, 5, epoch, 1);
        for (int off = 0; off < d->n; off += DS_B) {
            int count = d->n - off < DS_B ? d->n - off : DS_B;
            TrainStep ts = {order, d->n, off, count, 5, epoch, step, 1,
                            SHAKE_SHAKE, SHAKE_SHAKE, LEVEL_IMAGE,
                            (float)cosine_lr(DS_LR, step + 1, DS_STEPS), 0.9f, 5e-4f};
            COMPARE_OK(cuda->train_step(be, &ts, ep));
            step++;
        }
        double sum;
        int64_t wrong, bad;
        COMPARE_OK(cuda->step_stats(be, &sum, &wrong, &bad, ep));
        assert_int_equal(bad, -1);
        r->loss += sum;
        r->wrong += wrong;
        /* evaluation as train.c runs it: batch() then forward(x = NULL);
         * with graphs the second full batch of the first epoch is
         * captured, and later ones replayed on the updated weights */
        const long before = backend_cuda_graph_launches(be);
        for (int k = 0; k < DS_EVALS; k++) {
            const int count = k < DS_EVALS - 1 ? DS_B : DS_EVAL_PARTIAL;
            int idx[DS_B];
            for (int j = 0; j < count; j++)
                idx[j] = (7 * j + 3 + 11 * k + epoch) % d->n;
            COMPARE_OK(cuda->batch(be, 1, idx, count, 0, 0, 0, ep));
            COMPARE_OK(cuda->forward(be, r->eval + ((size_t)epoch * DS_EVALS + k) * DS_B * 10,
                                     NULL, NULL, count, 0, ep));
        }
        r->eval_launches += backend_cuda_graph_launches(be) - before;
    }
    r->graph_launches = backend_cuda_graph_launches(be) - r->eval_launches;
    COMPARE_OK(cuda->store(be, r->params, r->state, r->mom, NULL, ep));
    cuda->destroy(be);
}

/* The same steps through the per-call ops, data and loss on the host; then
 * evaluation logits through batch() + forward(x = NULL) against forward(x)
 * on the host's batch. */
static void run_host_steps(const Model *m, const Dataset *d, const float *p0, const float *s0,
                           Precision prec, StepRun *r)
{
    BackendOptions o = {.max_batch = DS_B, .threads = 2, .device = 0, .precision = prec};
    Backend *be = compare_create(cuda, m, &o, DS_B);
    COMPARE_OK(cuda->load(be, p0, s0, NULL, ep));
    const size_t img = (size_t)d->c * d->h * d->w;
    float *x = malloc(DS_B * img * 4), *logits = malloc(DS_B * 10 * 4);
    float *dl = malloc(DS_B * 10 * 4), *lg2 = malloc(DS_B * 10 * 4);
    float *alpha = malloc((size_t)m->nblocks * DS_B * 4);
    float *beta = malloc((size_t)m->nblocks * DS_B * 4);
    int order[DS_N], labels[DS_B];
    int64_t step = 0;
    for (int epoch = 0; epoch < DS_EPOCHS; epoch++) {
        data_epoch_order(order, d->n, 5, epoch, 1);
        for (int off = 0; off < d->n; off += DS_B) {
            int count = d->n - off < DS_B ? d->n - off : DS_B, right;
            data_batch(x, labels, d, order + off, count, 5, epoch, 1);
            shake_draw(alpha, beta, m->nblocks, count, 5, step, SHAKE_SHAKE, SHAKE_SHAKE,
                       LEVEL_IMAGE);
            COMPARE_OK(cuda->forward(be, logits, x, alpha, count, 1, ep));
            r->loss += softmax_xent(dl, &right, logits, labels, count, 10) * count;
            r->wrong += count - right;
            COMPARE_OK(cuda->backward(be, dl, beta, count, ep));
            COMPARE_OK(cuda->update(be, (float)cosine_lr(DS_LR, step + 1, DS_STEPS), 0.9f,
                                    5e-4f, ep));
            step++;
        }
    }
    COMPARE_OK(cuda->store(be, r->params, r->state, r->mom, NULL, ep));
    /* evaluation input made on the device is the host's, bit for bit */
    COMPARE_OK(cuda->set_data(be, NULL, d, ep));
    int idx[DS_B];
    for (int j = 0; j < DS_B; j++)
        idx[j] = (7 * j + 3) % d->n;
    data_batch(x, labels, d, idx, DS_B, 0, 0, 0);
    COMPARE_OK(cuda->forward(be, logits, x, NULL, DS_B, 0, ep));
    COMPARE_OK(cuda->batch(be, 1, idx, DS_B, 0, 0, 0, ep));
    COMPARE_OK(cuda->forward(be, lg2, NULL, NULL, DS_B, 0, ep));
    compare_check("evaluation logits, device batch against host batch", "device step", lg2,
                  logits, DS_B * 10, 0);
    /* forward(x = NULL) without a fresh batch is refused, not served stale */
    Err e = {{0}};
    assert_int_not_equal(cuda->forward(be, lg2, NULL, NULL, DS_B, 0, &e), 0);
    cuda->destroy(be);
    free(x); free(logits); free(dl); free(lg2); free(alpha); free(beta);
}

static void device_step_case(Precision prec)
{
    const char *what = prec == PRECISION_BF16 ? "bf16" : "fp32";
    Err e = {{0}};
    Dataset tr, te;
    if (dataset_load(&tr, &te, DS_CIFAR10, data_dir, 0, &e))
        fail_msg("%s", e.msg);
    if (dataset_subset(&tr, DS_N, 3, &e))
        fail_msg("%s", e.msg);
    ModelSpec spec = {ARCH_RESNET, 8, 16, 1, 10, 3, 32, 32, SHIFT_ORIGINAL};
    Model m;
    tu_model(&m, &spec);
    float *p0 = malloc(m.nparams * 4), *s0 = malloc(m.nstate * 4);
    model_init(&m, 5, p0, s0);
    StepRun g, q, h, one, three, four, apart;
    step_run_alloc(&apart, &m);
    step_run_alloc(&g, &m);
    step_run_alloc(&q, &m);
    step_run_alloc(&h, &m);
    step_run_alloc(&one, &m);
    step_run_alloc(&three, &m);
    step_run_alloc(&four, &m);
    run_device_steps(&m, &tr, p0, s0, prec, "require", "2", "1", &g);
    run_device_steps(&m, &tr, p0, s0, prec, "0", "2", "1", &q);
    run_device_steps(&m, &tr, p0, s0, prec, "require", "1", "1", &one);
    run_device_steps(&m, &tr, p0, s0, prec, "require", "3", "1", &three);
    run_device_steps(&m, &tr, p0, s0, prec, "require", "4", "1", &four);
    run_device_steps(&m, &tr, p0, s0, prec, "require", "3", "0", &apart);
    /* every block of this ResNet merges its first convolutions, unless told not to */
    assert_int_equal(three.merged, m.nblocks);
    assert_int_equal(apart.merged, 0);
    /* 6 full steps: 2 eager to warm up, then captured and replayed */
    if (g.graph_launches < 3)
        fail_msg("%s: %ld steps ran as a CUDA graph, expected 4", what, g.graph_launches);
    assert_int_equal(q.graph_launches, 0);
    /* evaluation: 6 full batches, the first eager, the second captured */
    if (g.eval_launches != 5)
        fail_msg("%s: %ld evaluation batches ran as a CUDA graph, expected 5", what,
                 g.eval_launches);
    assert_int_equal(q.eval_launches, 0);
    /* Graph and eager replay the same kernels on the same inputs: the
     * weights agree to the last bit where cuDNN's algorithms are
     * deterministic (they are picked first) and to float rounding where
     * not; 1e-6 is far below what a stale variable or a skipped kernel in
     * the graph would do (1e-3 and more). */
    compare_check("parameters, graph against eager", what, g.params, q.params, m.nparams, 1e-6);
    compare_check("running statistics, graph against eager", what, g.state, q.state, m.nstate,
                  1e-6);
    compare_check("momentum, graph against eager", what, g.mom, q.mom, m.nparams, 1e-6);
    compare_check("evaluation logits, graph against eager", what, g.eval, q.eval,
                  (size_t)DS_EPOCHS * DS_EVALS * DS_B * 10, 1e-6);
    assert_int_equal(g.wrong, q.wrong);
    /* A block's branches on two streams, the projection shortcuts on a
     * third (the default), and the branches' filter gradients on a fourth
     * too, against one stream: the same kernels on the same inputs, each
     * lane with its own scratch, so the same bound; a lane overwriting
     * another's scratch, or a wait missing, would be far off. The graphs
     * with more lanes have parallel paths: captured and replayed as often. */
    const StepRun *lanes[] = {&g, &three, &four};
    for (int i = 0; i < 3; i++) {
        const StepRun *r = lanes[i];
        char w[64];
        snprintf(w, sizeof w, "%s, %d streams against one", what, i + 2);
        compare_check("parameters", w, r->params, one.params, m.nparams, 1e-6);
        compare_check("running statistics", w, r->state, one.state, m.nstate, 1e-6);
        compare_check("momentum", w, r->mom, one.mom, m.nparams, 1e-6);
        compare_check("evaluation logits", w, r->eval, one.eval,
                      (size_t)DS_EPOCHS * DS_EVALS * DS_B * 10, 1e-6);
        assert_int_equal(r->wrong, one.wrong);
        assert_int_equal(r->graph_launches, one.graph_launches);
        assert_int_equal(r->eval_launches, one.eval_launches);
    }

    run_host_steps(&m, &tr, p0, s0, prec, &h);
    /* Against the host path only the loss's exp and log run elsewhere
     * (the device's against the C library's), so dlogits may differ in the
     * last bit: 1e-5 in float32. In bf16 such a bit now and then moves an
     * activation across a rounding boundary, one element by one bf16 step
     * (4e-3 of it), which nine steps carry on but do not spread far: 2e-3
     * of the weights' scale. (Emulated on the CPU both sides agree to the
     * bit.) */
    const double tol = prec == PRECISION_BF16 ? 2e-3 : 1e-5;
    /*
     * The first convolutions each on their own against merged. fp32: the
     * same sums added in another order (cuDNN may pick other algorithms for
     * the merged shapes, and the branches' data gradients add inside one
     * convolution instead of after it), last-bit differences as the host
     * path's: its bounds. bf16: apart, branch 0's data gradient is rounded
     * to bf16 before branch 1's is added, and the sum again; merged, only
     * the sum. One more rounding (2^-8) of every block's input gradient
     * compounds down the network as the roundings do that bf16's parity
     * bounds allow against float32 (gradients within 0.4 of their norm):
     * momentum, a sum of gradients, within 0.4; the weights within a
     * quarter of how far the steps moved them (emulated: 0.12 and 0.08);
     * running statistics and logits within bf16's parity bounds. A branch
     * reading the other's half, or its filters, is off by about the whole
     * move (and fails every parity case).
     */
    {
        const double moved = tu_rel_err(three.params, p0, m.nparams);
        const int bf = prec == PRECISION_BF16;
        char w[64];
        snprintf(w, sizeof w, "%s, first convolutions apart against merged", what);
        printf("  %s: parameters %.3g, running statistics %.3g, momentum %.3g, evaluation "
               "logits %.3g; the steps moved the weights %.3g\n", w,
               tu_rel_err(apart.params, three.params, m.nparams),
               tu_rel_err(apart.state, three.state, m.nstate),
               tu_rel_err(apart.mom, three.mom, m.nparams),
               tu_rel_err(apart.eval, three.eval, (size_t)DS_EPOCHS * DS_EVALS * DS_B * 10),
               moved);
        compare_check("parameters", w, apart.params, three.params, m.nparams,
                      bf ? 0.25 * moved : tol);
        compare_check("running statistics", w, apart.state, three.state, m.nstate,
                      bf ? 2e-2 : tol);
        compare_check("momentum", w, apart.mom, three.mom, m.nparams, bf ? 0.4 : tol * 10);
        compare_check("evaluation logits", w, apart.eval, three.eval,
                      (size_t)DS_EPOCHS * DS_EVALS * DS_B * 10, bf ? 5e-2 : tol * 10);
        assert_int_equal(apart.graph_launches, three.graph_launches);
    }
    compare_check("parameters, device steps against host steps", what, q.params, h.params,
                  m.nparams, tol);
    compare_check("running statistics, device steps against host steps", what, q.state,
                  h.state, m.nstate, tol);
    compare_check("momentum, device steps against host steps", what, q.mom, h.mom, m.nparams,
                  tol * 10);
    if (!(fabs(q.loss - h.loss) <= tol * fabs(h.loss)))
        fail_msg("%s: training loss sum: device steps %.9g, host steps %.9g", what, q.loss,
                 h.loss);
    if (prec == PRECISION_FP32)
        assert_int_equal(q.wrong, h.wrong);
    /* and the steps did something: the weights moved well beyond those bounds */
    const double moved = tu_rel_err(h.params, p0, m.nparams);
    printf("  %s: weights moved %.3g; device against host steps %.3g, graph against eager "
           "%.3g\n", what, moved, tu_rel_err(q.params, h.params, m.nparams),
           tu_rel_err(g.params, q.params, m.nparams));
    if (!(moved > 10 * tol))
        fail_msg("%s: the steps moved the weights by %.3g, too little to tell a broken step "
                 "from float rounding (%.1g)", what, moved, tol);
    step_run_free(&g);
    step_run_free(&q);
    step_run_free(&h);
    step_run_free(&one);
    step_run_free(&three);
    step_run_free(&four);
    step_run_free(&apart);
    free(p0);
    free(s0);
    model_free(&m);
    dataset_free(&tr);
    dataset_free(&te);
}

#ifdef SHAKE_CUDA_EMU
/* ---- the shape of the captured step (emulation only) ---- */

/* The census (tests/emu/census.h) of the training step that train_step
 * captures (three full steps of 4, the third captured) and of an
 * evaluation batch (the second captured), with these knobs. */
typedef struct {
    int total, critical;        /* all launches; those on the longest chain */
    int fwd, fwd_on;            /* forward convolutions; on the chain */
    int data_on, filter_on;     /* data and filter gradient convolutions on the chain */
    int shortcut_on;            /* pool_shift and concat launches on the chain */
    int merged;                 /* blocks whose first convolutions ran as one */
    int eval_total, eval_critical, eval_bn; /* an evaluation batch's; its bn_eval_kernels */
} StepShape;

static void step_census(const Model *m, const Dataset *d, const char *streams,
                        const char *merge, StepShape *sh)
{
    setenv("SHAKE_CUDA_STREAMS", streams, 1);
    setenv("SHAKE_CUDA_MERGE", merge, 1);
    setenv("SHAKE_CUDA_GRAPHS", "require", 1);
    BackendOptions o = {.max_batch = 4, .threads = 2, .device = 0,
                        .precision = PRECISION_BF16};
    Backend *be = compare_create(cuda, m, &o, 4);
    unsetenv("SHAKE_CUDA_STREAMS");
    unsetenv("SHAKE_CUDA_MERGE");
    unsetenv("SHAKE_CUDA_GRAPHS");
    float *p0 = malloc(m->nparams * 4), *s0 = malloc(m->nstate * 4);
    model_init(m, 5, p0, s0);
    COMPARE_OK(cuda->load(be, p0, s0, NULL, ep));
    COMPARE_OK(cuda->set_data(be, d, d, ep));
    int order[12];
    data_epoch_order(order, 12, 5, 0, 1);
    for (int k = 0; k < 3; k++) {
        TrainStep ts = {order, 12, 4 * k, 4, 5, 0, k, 1, SHAKE_SHAKE, SHAKE_SHAKE,
                        LEVEL_IMAGE, 0.1f, 0.9f, 5e-4f};
        COMPARE_OK(cuda->train_step(be, &ts, ep));
    }
    assert_int_equal(backend_cuda_graph_launches(be), 1);
    int pool_on, cat_on;
    sh->total = emu_census(NULL, &sh->critical);
    sh->fwd = emu_census("conv_fwd", &sh->fwd_on);
    emu_census("conv_bwd_data", &sh->data_on);
    emu_census("conv_bwd_filter", &sh->filter_on);
    emu_census("pool_shift_kernel", &pool_on);
    emu_census("concat_kernel", &cat_on);
    sh->shortcut_on = pool_on + cat_on;
    sh->merged = backend_cuda_merged_blocks(be);
    float logits[4 * 10];
    for (int k = 0; k < 2; k++) {
        int idx[4] = {4 * k, 4 * k + 1, 4 * k + 2, 4 * k + 3};
        COMPARE_OK(cuda->batch(be, 1, idx, 4, 0, 0, 0, ep));
        COMPARE_OK(cuda->forward(be, logits, NULL, NULL, 4, 0, ep));
    }
    assert_int_equal(backend_cuda_graph_launches(be), 2);
    int bn_on;
    sh->eval_total = emu_census(NULL, &sh->eval_critical);
    sh->eval_bn = emu_census("bn_eval_kernel", &bn_on);
    printf("  streams %s, merge %s: %d launches a step, %d on its longest chain; forward "
           "convolutions %d (%d on the chain), data and filter gradients on it %d and %d; "
           "an evaluation batch %d launches, %d on its chain\n",
           streams, merge, sh->total, sh->critical, sh->fwd, sh->fwd_on, sh->data_on,
           sh->filter_on, sh->eval_total, sh->eval_critical);
    cuda->destroy(be);
    free(p0);
    free(s0);
}

/*
 * What the streams and the merged first convolutions are for, checked in
 * the graph's shape, since the emulation cannot time it: at 26 2x32d a
 * step is some 460 launches, each too small to fill the GPU, so its time
 * follows its longest chain of launches. Each stream added takes work off
 * that chain without adding any (2: a block's second branch beside the
 * first; 3: the projection shortcut and the merged convolution's filter
 * gradient beside both; 4: the branches' filter gradients beside the
 * rest), and a merged block launches one forward convolution
 * fewer; evaluation computes every batch norm's scale in one launch. A
 * wait too many between the streams (one that orders what could run side
 * by side) would leave the results right and every test passing, and only
 * make the GPU slower: this test catches it.
 */
static void test_step_graph_shape(void **ctx)
{
    (void)ctx;
    Err e = {{0}};
    Dataset tr, te;
    if (dataset_load(&tr, &te, DS_CIFAR10, data_dir, 0, &e))
        fail_msg("%s", e.msg);
    if (dataset_subset(&tr, 12, 3, &e))
        fail_msg("%s", e.msg);
    /* two blocks a stage: identity shortcuts, and projections in stages 2 and 3 */
    ModelSpec spec = {ARCH_RESNET, 14, 16, 1, 10, 3, 32, 32, SHIFT_ORIGINAL};
    Model m;
    tu_model(&m, &spec);
    /* a block's chain: its merged first convolution and one branch's second
     * (forward), one branch's two data gradients (backward); a projection's
     * two convolutions of each kind, where it is not beside the branches */
    const int nb = m.nblocks;
    int np = 0;
    for (int b = 0; b < nb; b++)
        np += m.blocks[b].proj != 0;
    StepShape sh[5];
    const char *names[] = {"", "1", "2", "3", "4"};
    for (int s = 1; s <= 4; s++)
        step_census(&m, &tr, names[s], "1", &sh[s]);
    if (sh[1].critical != sh[1].total)
        fail_msg("one stream: %d launches but a longest chain of %d; one stream is one chain",
                 sh[1].total, sh[1].critical);
    for (int s = 2; s <= 4; s++) {
        const StepShape *q = &sh[s];
        if (q->total != sh[1].total)
            fail_msg("%d streams launch %d kernels and library calls a step, one stream %d: "
                     "the streams should only reorder the work", s, q->total, sh[1].total);
        if (!(q->critical < sh[s - 1].critical))
            fail_msg("%d streams: a longest chain of %d launches, %d streams %d: the work "
                     "the extra stream takes should leave the chain", s, q->critical, s - 1,
                     sh[s - 1].critical);
        assert_int_equal(q->merged, nb);
        /* the running statistics' scales, all in one launch */
        if (q->eval_bn != 1)
            fail_msg("%d streams: an evaluation batch launches bn_eval_kernel %d times, "
                     "not once for all its batch norms", s, q->eval_bn);
        /* the stem, then per block one branch; the shortcut beside from 3 on */
        const int sc = s >= 3 ? 0 : 2 * np;
        if (q->fwd_on > 1 + 2 * nb + sc)
            fail_msg("%d streams: %d forward convolutions on the longest chain, at most %d "
                     "with a block's branches side by side", s, q->fwd_on, 1 + 2 * nb + sc);
        if (q->data_on > 2 * nb + sc)
            fail_msg("%d streams: %d data gradient convolutions on the longest chain, at "
                     "most %d with a block's branches side by side", s, q->data_on,
                     2 * nb + sc);
        /* evaluation has no filter gradients for a fourth stream to take */
        if (!(s == 4 ? q->eval_critical <= sh[3].eval_critical
                     : q->eval_critical < sh[s - 1].eval_critical))
            fail_msg("%d streams: an evaluation batch's longest chain is %d launches, with %d "
                     "streams %d", s, q->eval_critical, s - 1, sh[s - 1].eval_critical);
        /* the stem's, and at most one branch's a block: the merged filter
         * gradients run on a side stream */
        if (s >= 3 && q->filter_on > 1 + nb)
            fail_msg("%d streams: %d filter gradients on the longest chain, at most %d with "
                     "the merged ones beside the data gradients", s, q->filter_on, 1 + nb);
        if (s >= 3 && q->shortcut_on != 0)
            fail_msg("%d streams: %d of the projection shortcut's pool and concat launches "
                     "on the longest chain; its stream runs them beside the branches", s,
                     q->shortcut_on);
    }
    StepShape apart;
    step_census(&m, &tr, "3", "0", &apart);
    assert_int_equal(apart.merged, 0);
    if (apart.fwd - sh[3].fwd != nb)
        fail_msg("%d forward convolutions merged, %d not merged, for %d merged blocks",
                 sh[3].fwd, apart.fwd, nb);
    if (!(sh[3].critical < apart.critical))
        fail_msg("merged first convolutions: a longest chain of %d launches, not merged %d",
                 sh[3].critical, apart.critical);
    /* the shortcut does not wait for the merged convolution it does not read */
    if (sh[3].eval_critical > apart.eval_critical)
        fail_msg("merged first convolutions: an evaluation batch's longest chain is %d "
                 "launches, not merged %d", sh[3].eval_critical, apart.eval_critical);
    model_free(&m);
    dataset_free(&tr);
    dataset_free(&te);
}
#endif

static void test_device_step_fp32(void **ctx)
{
    (void)ctx;
    device_step_case(PRECISION_FP32);
}

static void test_device_step_bf16(void **ctx)
{
    (void)ctx;
    device_step_case(PRECISION_BF16);
}

int main(void)
{
    cuda = backend_find("cuda");
    if (!cuda || backend_cuda_devices() == 0) {
        printf("test_cuda: skipped: %s\n",
               cuda ? "no GPU visible to the cuda backend (CUDA_VISIBLE_DEVICES, driver?)"
                    : "no CUDA backend built into this binary");
        return 77;
    }
    printf("test_cuda: %d GPU(s) visible; ref, %s and cuda in this binary\n",
           backend_cuda_devices(), host_backend());
    /* SHAKE_TEST_FILTER: only the tests whose names match (cmocka's
     * pattern: * and ? wildcards), to rerun a few by hand */
    const char *only = getenv("SHAKE_TEST_FILTER");
    if (only && *only)
        cmocka_set_test_filter(only);
    struct CMUnitTest tests[NMODES * NCASES + 14];
    int nt = 0;
    for (int mode = 0; mode < NMODES; mode++)
        for (int i = 0; i < NCASES; i++) {
            Parity *q = &parity[mode * NCASES + i];
            q->c = &cases[i];
            q->mode = (ParityMode)mode;
            snprintf(q->name, sizeof q->name, "%s: %s", mode_names[mode], cases[i].name);
            tests[nt++] = (struct CMUnitTest){q->name, test_parity, NULL, NULL, q};
        }
    tests[nt++] = (struct CMUnitTest)cmocka_unit_test(test_tuning_knobs);
    tests[nt++] = (struct CMUnitTest)cmocka_unit_test(test_algo_record);
    tests[nt++] = (struct CMUnitTest)cmocka_unit_test(test_shake_draw_same);
    tests[nt++] = (struct CMUnitTest)cmocka_unit_test(test_data_batch_same);
    tests[nt++] = (struct CMUnitTest)cmocka_unit_test(test_resume_cuda_on_host);
    tests[nt++] = (struct CMUnitTest)cmocka_unit_test(test_resume_host_on_cuda);
    tests[nt++] = (struct CMUnitTest)cmocka_unit_test(test_bad_device);
    tests[nt++] = (struct CMUnitTest)cmocka_unit_test(test_out_of_memory);
    tests[nt++] = (struct CMUnitTest)cmocka_unit_test(test_resume_exact_fp32);
    tests[nt++] = (struct CMUnitTest)cmocka_unit_test(test_resume_exact_bf16);
    tests[nt++] = (struct CMUnitTest)cmocka_unit_test(test_device_step_fp32);
    tests[nt++] = (struct CMUnitTest)cmocka_unit_test(test_device_step_bf16);
#ifdef SHAKE_CUDA_EMU
    tests[nt++] = (struct CMUnitTest)cmocka_unit_test(test_step_graph_shape);
    tests[nt++] = (struct CMUnitTest)cmocka_unit_test(test_unsupported_gpu);
#endif
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
