/*
 * Every built backend against `ref` on small networks of both block types,
 * both shifts, odd image sizes and channel counts that are and are not
 * multiples of 16 (oneDNN pads blocked layouts): forward logits in training
 * and evaluation mode, the updated running statistics, every parameter
 * gradient, and the parameters after a few SGD steps.
 *
 * Tolerance: float32 with different summation orders (oneDNN's blocked
 * convolutions and batch-norm reductions vs ref's double accumulation)
 * differs by a few ulps per op; relative to each tensor's scale the
 * discrepancy stays well below 1e-4, the bound asked of every backend.
 * Parameters after several SGD steps pass through batch norm with batch
 * statistics of 4 images, which amplifies differences, so that comparison
 * uses 1e-3.
 */
#include "testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "model.h"
#include "shake.h"
#include "train.h"

typedef struct {
    const char *name;
    ModelSpec spec;
    int n;
    ShakeLevel level;
} Case;

static const Case cases[] = {
    {"resnet d8 w16 8x8 original", {ARCH_RESNET, 8, 16, 1, 10, 3, 8, 8, SHIFT_ORIGINAL}, 4,
     LEVEL_IMAGE},
    {"resnet d8 w16 8x8 reimpl batch-level", {ARCH_RESNET, 8, 16, 1, 10, 3, 8, 8, SHIFT_REIMPL},
     4, LEVEL_BATCH},
    {"resnet d14 w32 9x9 (odd sizes)", {ARCH_RESNET, 14, 32, 1, 10, 3, 9, 9, SHIFT_ORIGINAL}, 3,
     LEVEL_IMAGE},
    {"resnet d8 w6 1ch 7x7 (padded channels)", {ARCH_RESNET, 8, 6, 1, 7, 1, 7, 7, SHIFT_REIMPL},
     5, LEVEL_IMAGE},
    {"resnext d11 g2 w16 8x8", {ARCH_RESNEXT, 11, 16, 2, 10, 3, 8, 8, SHIFT_ORIGINAL}, 4,
     LEVEL_IMAGE},
};

typedef struct {
    const BackendOps *ops;
    Backend *be;
} Side;

static void make(Side *s, const BackendOps *ops, const Model *m, int n)
{
    Err e = {{0}};
    BackendOptions bo = {n, 2};
    s->ops = ops;
    s->be = ops->create(m, &bo, &e);
    if (!s->be)
        fail_msg("%s create: %s", ops->name, e.msg);
}

/* Runs a backend call that reports through `ep`; fails the test on error. */
#define OK(call)                                    \
    do {                                            \
        Err ok_err = {{0}};                         \
        Err *ep = &ok_err;                          \
        if ((call) != 0)                            \
            fail_msg("%s: %s", #call, ok_err.msg);  \
    } while (0)

static void check(const char *what, const char *cname, const float *got, const float *want,
                  size_t count, double tol)
{
    double err = tu_rel_err(got, want, count);
    if (!(err <= tol))
        fail_msg("%s: %s differs from ref: relative error %.3g > %.1g", cname, what, err, tol);
}

/* Per-tensor gradient comparison: each tensor against its own scale. */
static void check_tensors(const Model *m, const char *cname, const float *got,
                          const float *want, double tol)
{
    for (int t = 0; t < m->ntensors; t++) {
        const TensorInfo *ti = &m->tensors[t];
        if (ti->arena != T_PARAM)
            continue;
        char what[200];
        snprintf(what, sizeof what, "gradient of %s", ti->name);
        check(what, cname, got + ti->offset, want + ti->offset, ti->count, tol);
    }
}

static void run_case(const BackendOps *ops, const Case *c)
{
    Model m;
    Err e = {{0}};
    if (model_build(&m, &c->spec, &e))
        fail_msg("%s", e.msg);
    int n = c->n, K = c->spec.classes;
    size_t img = (size_t)c->spec.in_c * c->spec.in_h * c->spec.in_w;
    float *params = malloc(m.nparams * sizeof(float));
    float *state = malloc(m.nstate * sizeof(float));
    float *x = malloc(n * img * sizeof(float));
    float *alpha = malloc((size_t)m.nblocks * n * sizeof(float));
    float *beta = malloc((size_t)m.nblocks * n * sizeof(float));
    float *lr = malloc((size_t)n * K * sizeof(float)), *lt = malloc((size_t)n * K * sizeof(float));
    float *dl = malloc((size_t)n * K * sizeof(float));
    float *gr = malloc(m.nparams * sizeof(float)), *gt = malloc(m.nparams * sizeof(float));
    float *sr = malloc(m.nstate * sizeof(float)), *st = malloc(m.nstate * sizeof(float));
    float *pr = malloc(m.nparams * sizeof(float)), *pt = malloc(m.nparams * sizeof(float));
    int *labels = malloc(n * sizeof(int));
    model_init(&m, 11, params, state);
    /* non-trivial BN affine parameters and running statistics */
    for (int t = 0; t < m.ntensors; t++) {
        const TensorInfo *ti = &m.tensors[t];
        float *p = (ti->arena == T_PARAM ? params : state) + ti->offset;
        if (ti->init == INIT_ONE)
            tu_fill_uniform(p, ti->count, 100 + t, 0.5f, 1.5f);
        else if (ti->init == INIT_ZERO)
            tu_fill_uniform(p, ti->count, 100 + t, -0.2f, 0.2f);
    }
    tu_fill_uniform(x, n * img, 5, -2.0f, 2.0f);
    for (int i = 0; i < n; i++)
        labels[i] = i % K;

    Side ref, tst;
    make(&ref, &backend_ref, &m, n);
    make(&tst, ops, &m, n);
    OK(ref.ops->load(ref.be, params, state, NULL, ep));
    OK(tst.ops->load(tst.be, params, state, NULL, ep));

    for (int step = 0; step < 3; step++) {
        shake_draw(alpha, beta, m.nblocks, n, 3, step, SHAKE_SHAKE, SHAKE_SHAKE, c->level);
        OK(ref.ops->forward(ref.be, lr, x, alpha, n, 1, ep));
        OK(tst.ops->forward(tst.be, lt, x, alpha, n, 1, ep));
        check("training logits", c->name, lt, lr, (size_t)n * K, 1e-4);
        softmax_xent(dl, NULL, lr, labels, n, K);
        OK(ref.ops->backward(ref.be, dl, beta, n, ep));
        OK(tst.ops->backward(tst.be, dl, beta, n, ep));
        OK(ref.ops->store(ref.be, pr, sr, NULL, gr, ep));
        OK(tst.ops->store(tst.be, pt, st, NULL, gt, ep));
        check("running statistics", c->name, st, sr, m.nstate, 1e-4);
        if (step == 0) {
            check_tensors(&m, c->name, gt, gr, 1e-4);
            check("parameters after load", c->name, pt, pr, m.nparams, 0);
        }
        OK(ref.ops->update(ref.be, 0.05f, 0.9f, 5e-4f, ep));
        OK(tst.ops->update(tst.be, 0.05f, 0.9f, 5e-4f, ep));
        /* a smaller batch through the same backend object */
        OK(ref.ops->forward(ref.be, lr, x, NULL, n - 1, 0, ep));
        OK(tst.ops->forward(tst.be, lt, x, NULL, n - 1, 0, ep));
        check("evaluation logits", c->name, lt, lr, (size_t)(n - 1) * K, step == 0 ? 1e-4 : 1e-3);
    }
    OK(ref.ops->store(ref.be, pr, sr, NULL, NULL, ep));
    OK(tst.ops->store(tst.be, pt, st, NULL, NULL, ep));
    check("parameters after 3 SGD steps", c->name, pt, pr, m.nparams, 1e-3);

    ref.ops->destroy(ref.be);
    tst.ops->destroy(tst.be);
    free(params); free(state); free(x); free(alpha); free(beta); free(lr); free(lt);
    free(dl); free(gr); free(gt); free(sr); free(st); free(pr); free(pt); free(labels);
    model_free(&m);
}

static void test_backend(void **ctx)
{
    const char *name = *ctx;
    const BackendOps *ops = backend_find(name);
    if (!ops)
        skip();
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        run_case(ops, &cases[i]);
}

/* A mismatch must be caught: perturb one gradient value through a wrong
 * beta and see the comparison fail. */
static void test_detects_wrong_beta(void **ctx)
{
    (void)ctx;
    const BackendOps *ops = backend_find("cpu");
    if (!ops)
        skip();
    const Case *c = &cases[0];
    Model m;
    Err e = {{0}};
    assert_int_equal(model_build(&m, &c->spec, &e), 0);
    int n = c->n, K = c->spec.classes;
    size_t img = (size_t)c->spec.in_c * c->spec.in_h * c->spec.in_w;
    float *params = malloc(m.nparams * 4), *state = malloc(m.nstate * 4);
    float *x = malloc(n * img * 4), *alpha = malloc(m.nblocks * n * 4);
    float *beta = malloc(m.nblocks * n * 4), *beta2 = malloc(m.nblocks * n * 4);
    float *lg = malloc(n * K * 4), *dl = malloc(n * K * 4);
    float *g1 = malloc(m.nparams * 4), *g2 = malloc(m.nparams * 4);
    int labels[8] = {0, 1, 2, 3, 4, 5, 6, 7};
    model_init(&m, 1, params, state);
    tu_fill_uniform(x, n * img, 9, -1, 1);
    shake_draw(alpha, beta, m.nblocks, n, 3, 0, SHAKE_SHAKE, SHAKE_SHAKE, LEVEL_IMAGE);
    memcpy(beta2, beta, m.nblocks * n * 4);
    beta2[0] = 1.0f - beta2[0];
    Side s;
    make(&s, ops, &m, n);
    OK(s.ops->load(s.be, params, state, NULL, ep));
    OK(s.ops->forward(s.be, lg, x, alpha, n, 1, ep));
    softmax_xent(dl, NULL, lg, labels, n, K);
    OK(s.ops->backward(s.be, dl, beta, n, ep));
    OK(s.ops->store(s.be, NULL, NULL, NULL, g1, ep));
    OK(s.ops->backward(s.be, dl, beta2, n, ep));
    OK(s.ops->store(s.be, NULL, NULL, NULL, g2, ep));
    /* block 0's branch weights see a different beta for image 0 */
    assert_true(tu_rel_err(g1, g2, m.nparams) > 1e-3);
    s.ops->destroy(s.be);
    free(params); free(state); free(x); free(alpha); free(beta); free(beta2);
    free(lg); free(dl); free(g1); free(g2);
    model_free(&m);
}

int main(void)
{
    static const char cpu[] = "cpu";
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_prestate(test_backend, (void *)cpu),
        cmocka_unit_test(test_detects_wrong_beta),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
