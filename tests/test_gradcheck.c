/*
 * Whole networks through backend_ref: the gradients of backward() against
 * finite differences of the training loss (mean softmax cross-entropy) for
 * every parameter tensor, in Keep mode (beta = alpha, drawn per image), where
 * the backward pass is the true gradient. Then the properties the contract
 * promises: evaluation uses the running statistics and 0.5 for both
 * branches, results do not depend on the backend instance or thread count,
 * and load/store/update move exactly what they say.
 *
 * The finite differences re-run the training forward, which uses batch
 * statistics: the running statistics it updates on the way are never read by
 * it, so the checks need not restore them.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"
#include "backend.h"
#include "optim.h"
#include "philox.h"

typedef struct {
    Model m;
    Backend *be;
    int n;
    float *params, *state, *x, *alpha, *logits, *dlogits, *grads;
    int *labels;
} Net;

static float *alloc_f(size_t n)
{
    float *p = calloc(n ? n : 1, sizeof(float));
    assert_non_null(p);
    return p;
}

/*
 * The paper's init for the convolutions, then random batch-norm affine
 * parameters and classifier (the init's gamma = 1, beta = 0, bias = 0 would
 * leave some gradient terms untested) and random running statistics.
 */
static void net_setup(Net *t, ModelSpec spec, int n, uint64_t seed)
{
    Err e;
    memset(t, 0, sizeof *t);
    tu_model(&t->m, &spec);
    const Model *m = &t->m;
    t->n = n;
    t->params = alloc_f(m->nparams);
    t->state = alloc_f(m->nstate);
    t->grads = alloc_f(m->nparams);
    model_init(m, seed, t->params, t->state);
    for (int ti = 0; ti < m->ntensors; ti++) {
        const TensorInfo *T = &m->tensors[ti];
        float *p = (T->arena == T_PARAM ? t->params : t->state) + T->offset;
        const uint64_t s = seed * 1000 + (uint64_t)ti;
        if (T->arena == T_STATE && strstr(T->name, "running_var"))
            tu_fill_uniform(p, T->count, s, 0.5f, 2.0f);
        else if (T->arena == T_STATE)
            tu_fill_uniform(p, T->count, s, -0.5f, 0.5f);
        else if (T->init == INIT_ONE)
            tu_fill_uniform(p, T->count, s, 0.5f, 1.5f);
        else if (T->init == INIT_ZERO)
            tu_fill_uniform(p, T->count, s, -0.5f, 0.5f);
    }
    const size_t nx = (size_t)n * spec.in_c * spec.in_h * spec.in_w;
    t->x = alloc_f(nx);
    tu_fill_uniform(t->x, nx, seed + 1, -2, 2);
    t->alpha = alloc_f((size_t)m->nblocks * n);
    tu_fill_uniform(t->alpha, (size_t)m->nblocks * n, seed + 2, 0, 1);
    t->logits = alloc_f((size_t)n * spec.classes);
    t->dlogits = alloc_f((size_t)n * spec.classes);
    t->labels = calloc((size_t)n, sizeof(int));
    for (int i = 0; i < n; i++)
        t->labels[i] = (int)(rng_u32(seed, RNG_TEST, 999, (uint32_t)i, 0) % spec.classes);
    BackendOptions o = {.max_batch = n, .threads = 0, .device = 0, .precision = PRECISION_FP32};
    t->be = backend_ref.create(m, &o, &e);
    assert_non_null(t->be);
    assert_int_equal(backend_ref.load(t->be, t->params, t->state, NULL, &e), 0);
}

static void net_free(Net *t)
{
    backend_ref.destroy(t->be);
    free(t->params); free(t->state); free(t->grads); free(t->x); free(t->alpha);
    free(t->logits); free(t->dlogits); free(t->labels);
    model_free(&t->m);
}

/* The training loss at the host's params (loaded into the backend first). */
static double net_loss(Net *t)
{
    Err e;
    assert_int_equal(backend_ref.load(t->be, t->params, t->state, NULL, &e), 0);
    assert_int_equal(backend_ref.forward(t->be, t->logits, t->x, t->alpha, t->n, 1, &e), 0);
    return tu_xent(NULL, t->logits, t->labels, t->n, t->m.spec.classes);
}

/* Forward and backward at the host's params in Keep mode; grads to t->grads. */
static double net_grads(Net *t)
{
    Err e;
    net_loss(t);
    const double loss = tu_xent(t->dlogits, t->logits, t->labels, t->n, t->m.spec.classes);
    assert_int_equal(backend_ref.backward(t->be, t->dlogits, t->alpha, t->n, &e), 0);
    assert_int_equal(backend_ref.store(t->be, NULL, NULL, NULL, t->grads, &e), 0);
    return loss;
}

/* L(p + h v) and L(p - h v) for a direction v over a tensor's slice. */
static void loss_pm(Net *t, float *p, const float *v, size_t count, double h, double *lp,
                    double *lm)
{
    float *save = alloc_f(count);
    memcpy(save, p, count * sizeof(float));
    for (size_t i = 0; i < count; i++)
        p[i] = (float)(save[i] + h * v[i]);
    *lp = net_loss(t);
    for (size_t i = 0; i < count; i++)
        p[i] = (float)(save[i] - h * v[i]);
    *lm = net_loss(t);
    memcpy(p, save, count * sizeof(float));
    free(save);
}

/*
 * Tolerances. The forward runs in float32, so a loss difference carries the
 * rounding of the logits, about 1e-7 absolute, which the quotient divides by
 * the step; and every relu whose input crosses zero within the step adds an
 * error that grows with the step (a ResNeXt on 8x8 images has ~10^5 relu
 * inputs per batch, some within 1e-4 of zero). The step that balances the two
 * differs between tensors, so each check tries STEP * RMS(tensor) * {1/4,
 * 1/16, 1, 1/64} in turn and keeps the best. And where a relu input sits at
 * the current point itself, the loss has a corner there: backward() returns
 * one of the one-sided derivatives, and the central difference their mean,
 * whatever the step. So the error at a step is the smallest of the central,
 * forward and backward differences' errors; an error in backward() is off
 * from all three.
 * Measured best errors (with -O2, and with -O3 -march=native, which rounds
 * differently): at most 4e-3 on the ResNets; on the ResNeXt 6e-3 at
 * coordinates and 1.6e-2 along directions (tensors such as stem.bn.weight
 * whose every element moves every unit downstream). Hence TOL = 3e-2 on:
 *  - the derivative along a random +-1 direction over the whole tensor (step
 *    divided by sqrt(count) so that the whole move has the size of one
 *    coordinate step): |fd - g.v| / |g|_2, |g|_2 being the typical size of
 *    g.v for such a direction;
 *  - single coordinates (the largest and NCOORD random ones): |fd - g_i|
 *    over the tensor's largest |g|.
 * This test shows that backward() differentiates what forward() computes;
 * the errors it is for (a branch given the wrong coefficient, a gradient
 * sent down the wrong path, a missing term) are O(1). The tight numerical
 * comparison is test_ref_torch's, against float64 PyTorch to 1e-4.
 */
#define TOL 3e-2
#define STEP 1e-2
#define NCOORD 3

/* The best error over the steps; l0 is the loss at the unperturbed point. */
static double best_fd_err(Net *t, float *p, const float *v, size_t count, double h0, double l0,
                          double want, double scale)
{
    static const double steps[] = {0.25, 1.0 / 16, 1.0, 1.0 / 64};
    double best = INFINITY;
    for (size_t s = 0; s < sizeof steps / sizeof steps[0] && best >= TOL; s++) {
        const double h = h0 * steps[s];
        double lp, lm;
        loss_pm(t, p, v, count, h, &lp, &lm);
        const double fd[3] = {(lp - lm) / (2 * h), (lp - l0) / h, (l0 - lm) / h};
        for (int k = 0; k < 3; k++) {
            const double err = fabs(fd[k] - want) / scale;
            best = err < best ? err : best;
        }
    }
    return best;
}

static void gradcheck_net(ModelSpec spec, const char *label, uint64_t seed)
{
    Net t;
    net_setup(&t, spec, 4, seed);
    const Model *m = &t.m;
    const double l0 = net_grads(&t);
    printf("%s: %zu params, loss %.4f\n", label, m->nparams, l0);
    float *g = alloc_f(m->nparams);
    memcpy(g, t.grads, m->nparams * sizeof(float));
    double worst_dir = 0, worst_coord = 0;
    const char *worst_dir_name = "", *worst_coord_name = "";
    int checked = 0;
    for (int ti = 0; ti < m->ntensors; ti++) {
        const TensorInfo *T = &m->tensors[ti];
        if (T->arena != T_PARAM)
            continue;
        float *p = t.params + T->offset;
        const float *gt = g + T->offset;
        double rms = 0, g2 = 0, gmax = 0, gv = 0;
        size_t imax = 0;
        float *v = alloc_f(T->count);
        for (size_t i = 0; i < T->count; i++) {
            rms += (double)p[i] * p[i];
            g2 += (double)gt[i] * gt[i];
            if (fabs(gt[i]) > gmax) {
                gmax = fabs(gt[i]);
                imax = i;
            }
            v[i] = (rng_u32(seed, RNG_TEST, 7, (uint32_t)ti, (uint32_t)i) & 1) ? 1.0f : -1.0f;
            gv += (double)gt[i] * v[i];
        }
        rms = sqrt(rms / T->count);
        assert_true(gmax > 0);    /* a zero gradient would make the check vacuous */
        const double h0 = STEP * rms;

        const double rel_dir = best_fd_err(&t, p, v, T->count, h0 / sqrt((double)T->count), l0, gv,
                                           sqrt(g2));
        double rel_coord = 0;
        for (int k = 0; k <= NCOORD; k++) {
            const size_t i = k == 0 ? imax
                                    : rng_u32(seed, RNG_TEST, 8, (uint32_t)ti, (uint32_t)k) % T->count;
            const float one = 1.0f;
            const double err = best_fd_err(&t, p + i, &one, 1, h0, l0, gt[i], gmax);
            rel_coord = err > rel_coord ? err : rel_coord;
        }
        if (rel_dir >= TOL || rel_coord >= TOL)
            fail_msg("%s: direction err %.2e, coordinate err %.2e", T->name, rel_dir, rel_coord);
        if (rel_dir > worst_dir) {
            worst_dir = rel_dir;
            worst_dir_name = T->name;
        }
        if (rel_coord > worst_coord) {
            worst_coord = rel_coord;
            worst_coord_name = T->name;
        }
        checked++;
        free(v);
    }
    printf("  %d tensors within %.0e; largest first-passing errors: direction %.1e (%s), "
           "coordinate %.1e (%s)\n", checked, TOL,
           worst_dir, worst_dir_name, worst_coord, worst_coord_name);
    free(g);
    net_free(&t);
}

static ModelSpec resnet_spec(int depth, ShiftMode shift)
{
    ModelSpec s = {ARCH_RESNET, depth, 4, 1, 10, 3, 8, 8, shift};
    return s;
}

static ModelSpec resnext_spec(int depth)
{
    ModelSpec s = {ARCH_RESNEXT, depth, 4, 2, 10, 3, 8, 8, SHIFT_ORIGINAL};
    return s;
}

static void test_gradcheck_resnet_original(void **state)
{
    (void)state;
    gradcheck_net(resnet_spec(8, SHIFT_ORIGINAL), "resnet 8 2x4d, original shift", 11);
}

static void test_gradcheck_resnet_reimpl(void **state)
{
    (void)state;
    gradcheck_net(resnet_spec(8, SHIFT_REIMPL), "resnet 8 2x4d, reimpl shift", 12);
}

/* depth 14: the second block of each stage has an identity shortcut */
static void test_gradcheck_resnet_identity(void **state)
{
    (void)state;
    gradcheck_net(resnet_spec(14, SHIFT_ORIGINAL), "resnet 14 2x4d, original shift", 14);
}

static void test_gradcheck_resnext(void **state)
{
    (void)state;
    gradcheck_net(resnext_spec(11), "resnext 11 2x2x4d", 13);
}

/* The momentum-weighted running update started from zero gives back the
 * batch statistics: mean = run_mean / m, biased var = run_var / m * (c-1)/c. */
static void state_from_batch_stats(float *out, const float *run, const BnDesc *bd, long count)
{
    for (int c = 0; c < bd->c; c++) {
        out[bd->mean + c] = (float)(run[bd->mean + c] / (double)BN_MOMENTUM);
        out[bd->var + c] =
            (float)(run[bd->var + c] / (double)BN_MOMENTUM * (double)(count - 1) / count);
    }
}

/*
 * Evaluation uses the running statistics and 0.5 for both branches: with
 * the running statistics set to exactly the batch statistics of a batch,
 * evaluating that batch must reproduce the training forward with alpha =
 * 0.5. Recovering them needs the running update to be the documented one
 * (momentum, unbiased variance), so that is checked on the way.
 */
static void check_eval_matches_train(ModelSpec spec, uint64_t seed)
{
    Net t;
    Err e;
    net_setup(&t, spec, 4, seed);
    const Model *m = &t.m;
    const int n = t.n;
    const size_t nl = (size_t)n * spec.classes;
    for (size_t i = 0; i < (size_t)m->nblocks * n; i++)
        t.alpha[i] = 0.5f;
    float *zero = alloc_f(m->nstate), *run = alloc_f(m->nstate), *batch = alloc_f(m->nstate);
    float *eval = alloc_f(nl);
    assert_int_equal(backend_ref.load(t.be, t.params, zero, NULL, &e), 0);
    assert_int_equal(backend_ref.forward(t.be, t.logits, t.x, t.alpha, n, 1, &e), 0);
    assert_int_equal(backend_ref.store(t.be, NULL, run, NULL, NULL, &e), 0);

    const ConvDesc *sc = &m->stem_conv;
    state_from_batch_stats(batch, run, &m->stem_bn, (long)n * sc->oh * sc->ow);
    for (int b = 0; b < m->nblocks; b++) {
        const BlockDesc *B = &m->blocks[b];
        for (int k = 0; k < 2; k++)
            for (int j = 0; j < B->nconv; j++)
                state_from_batch_stats(batch, run, &B->bn[k][j],
                                       (long)n * B->conv[k][j].oh * B->conv[k][j].ow);
        if (B->proj)
            state_from_batch_stats(batch, run, &B->sc_bn, (long)n * B->oh * B->ow);
    }
    assert_int_equal(backend_ref.load(t.be, t.params, batch, NULL, &e), 0);
    assert_int_equal(backend_ref.forward(t.be, eval, t.x, NULL, n, 0, &e), 0);
    /*
     * The recovered statistics carry two float32 roundings (the stored
     * update and the division), ~1e-7 relative; normalizing with them
     * instead of the double-precision batch values perturbs each layer by
     * that much. Measured: 7e-7 at the logits. The failures this is for (a
     * coefficient other than 0.5, batch statistics, a biased running
     * variance: 1/(c-1) >= 1/15 here) move logits by 1e-2 or more.
     */
    const double err = tu_rel_err(eval, t.logits, nl);
    printf("  eval with batch statistics vs train with alpha 0.5: rel err %.1e\n", err);
    assert_true(err < 1e-5);
    free(zero); free(run); free(batch); free(eval);
    net_free(&t);
}

static void test_eval_resnet(void **state)
{
    (void)state;
    check_eval_matches_train(resnet_spec(14, SHIFT_ORIGINAL), 21);
}

static void test_eval_resnext(void **state)
{
    (void)state;
    check_eval_matches_train(resnext_spec(11), 22);
}

/* Evaluation sees one image at a time: a batch gives, bit for bit, what its
 * images give alone; it ignores alpha and leaves the running statistics. */
static void test_eval_per_image(void **state)
{
    (void)state;
    Net t;
    Err e;
    net_setup(&t, resnet_spec(8, SHIFT_REIMPL), 4, 23);
    const Model *m = &t.m;
    const int n = t.n, classes = m->spec.classes;
    const size_t img = (size_t)m->spec.in_c * m->spec.in_h * m->spec.in_w;
    float *one = alloc_f((size_t)classes), *st = alloc_f(m->nstate);
    assert_int_equal(backend_ref.forward(t.be, t.logits, t.x, NULL, n, 0, &e), 0);
    for (int i = 0; i < n; i++) {
        assert_int_equal(backend_ref.forward(t.be, one, t.x + i * img, NULL, 1, 0, &e), 0);
        assert_memory_equal(one, t.logits + (size_t)i * classes, classes * sizeof(float));
    }
    assert_int_equal(backend_ref.forward(t.be, t.dlogits, t.x, t.alpha, n, 0, &e), 0);
    assert_memory_equal(t.dlogits, t.logits, (size_t)n * classes * sizeof(float));
    assert_int_equal(backend_ref.store(t.be, NULL, st, NULL, NULL, &e), 0);
    assert_memory_equal(st, t.state, m->nstate * sizeof(float));
    free(one); free(st);
    net_free(&t);
}

/* Same inputs, same bits: across instances, thread counts, and repeated
 * backward calls (gradients are overwritten, not accumulated). */
static void test_deterministic(void **state)
{
    (void)state;
    Net a, b;
    Err e;
    net_setup(&a, resnext_spec(11), 4, 24);
    net_setup(&b, resnext_spec(11), 4, 24);
    backend_ref.destroy(b.be);
    BackendOptions one_thread = {.max_batch = 4, .threads = 1, .device = 0,
                                 .precision = PRECISION_FP32};
    b.be = backend_ref.create(&b.m, &one_thread, &e);
    assert_non_null(b.be);
    assert_int_equal(backend_ref.load(b.be, b.params, b.state, NULL, &e), 0);
    const size_t nl = (size_t)a.n * a.m.spec.classes;
    net_grads(&a);
    net_grads(&b);
    assert_memory_equal(a.logits, b.logits, nl * sizeof(float));
    assert_memory_equal(a.grads, b.grads, a.m.nparams * sizeof(float));
    float *sa = alloc_f(a.m.nstate), *sb = alloc_f(a.m.nstate), *g2 = alloc_f(a.m.nparams);
    assert_int_equal(backend_ref.store(a.be, NULL, sa, NULL, NULL, &e), 0);
    assert_int_equal(backend_ref.store(b.be, NULL, sb, NULL, NULL, &e), 0);
    assert_memory_equal(sa, sb, a.m.nstate * sizeof(float));
    assert_int_equal(backend_ref.backward(a.be, a.dlogits, a.alpha, a.n, &e), 0);
    assert_int_equal(backend_ref.store(a.be, NULL, NULL, NULL, g2, &e), 0);
    assert_memory_equal(g2, a.grads, a.m.nparams * sizeof(float));
    free(sa); free(sb); free(g2);
    net_free(&a);
    net_free(&b);
}

/* load/store move the arenas unchanged; update is optim.h's step. */
static void test_store_load_update(void **state)
{
    (void)state;
    Net t;
    Err e;
    net_setup(&t, resnet_spec(8, SHIFT_ORIGINAL), 4, 25);
    const Model *m = &t.m;
    const size_t np = m->nparams;
    float *mom = alloc_f(np), *p2 = alloc_f(np), *s2 = alloc_f(m->nstate), *m2 = alloc_f(np);
    tu_fill_uniform(mom, np, 26, -0.1f, 0.1f);

    assert_int_equal(backend_ref.load(t.be, t.params, t.state, NULL, &e), 0);
    assert_int_equal(backend_ref.store(t.be, p2, s2, m2, NULL, &e), 0);
    assert_memory_equal(p2, t.params, np * sizeof(float));
    assert_memory_equal(s2, t.state, m->nstate * sizeof(float));
    for (size_t i = 0; i < np; i++)
        assert_true(m2[i] == 0.0f);         /* NULL momentum loads zeros */

    assert_int_equal(backend_ref.load(t.be, t.params, t.state, mom, &e), 0);
    assert_int_equal(backend_ref.store(t.be, NULL, NULL, m2, NULL, &e), 0);
    assert_memory_equal(m2, mom, np * sizeof(float));

    /* a step from the loaded momentum (net_grads would reload it as zeros) */
    assert_int_equal(backend_ref.forward(t.be, t.logits, t.x, t.alpha, t.n, 1, &e), 0);
    tu_xent(t.dlogits, t.logits, t.labels, t.n, m->spec.classes);
    assert_int_equal(backend_ref.backward(t.be, t.dlogits, t.alpha, t.n, &e), 0);
    assert_int_equal(backend_ref.store(t.be, NULL, NULL, NULL, t.grads, &e), 0);
    assert_int_equal(backend_ref.update(t.be, 0.1f, 0.9f, 5e-4f, &e), 0);
    assert_int_equal(backend_ref.store(t.be, p2, NULL, m2, NULL, &e), 0);
    sgd_nesterov(t.params, mom, t.grads, np, 0.1f, 0.9f, 5e-4f);
    assert_memory_equal(p2, t.params, np * sizeof(float));
    assert_memory_equal(m2, mom, np * sizeof(float));
    free(mom); free(p2); free(s2); free(m2);
    net_free(&t);
}

/* Misuse is reported, not computed on stale buffers. */
static void test_errors(void **state)
{
    (void)state;
    Net t;
    Err e;
    net_setup(&t, resnet_spec(8, SHIFT_ORIGINAL), 2, 27);
    assert_int_equal(backend_ref.backward(t.be, t.dlogits, t.alpha, 2, &e), -1);
    assert_int_equal(backend_ref.forward(t.be, t.logits, t.x, t.alpha, 3, 1, &e), -1);
    assert_int_equal(backend_ref.forward(t.be, t.logits, t.x, NULL, 2, 1, &e), -1);
    assert_int_equal(backend_ref.forward(t.be, t.logits, t.x, t.alpha, 2, 1, &e), 0);
    assert_int_equal(backend_ref.backward(t.be, t.dlogits, t.alpha, 1, &e), -1);
    assert_int_equal(backend_ref.forward(t.be, t.logits, t.x, NULL, 2, 0, &e), 0);
    assert_int_equal(backend_ref.backward(t.be, t.dlogits, t.alpha, 2, &e), -1);
    printf("  last message: %s\n", e.msg);
    BackendOptions bad = {.max_batch = 0, .threads = 0, .device = 0, .precision = PRECISION_FP32};
    assert_null(backend_ref.create(&t.m, &bad, &e));
    net_free(&t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_gradcheck_resnet_original),
        cmocka_unit_test(test_gradcheck_resnet_reimpl),
        cmocka_unit_test(test_gradcheck_resnet_identity),
        cmocka_unit_test(test_gradcheck_resnext),
        cmocka_unit_test(test_eval_resnet),
        cmocka_unit_test(test_eval_resnext),
        cmocka_unit_test(test_eval_per_image),
        cmocka_unit_test(test_deterministic),
        cmocka_unit_test(test_store_load_update),
        cmocka_unit_test(test_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
