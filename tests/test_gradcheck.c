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

/* Mean cross-entropy over the batch in double; dlogits (may be NULL) gets
 * its gradient, (softmax - onehot) / n. */
static double xent(float *dlogits, const float *logits, const int *labels, int n, int classes)
{
    double total = 0.0;
    for (int i = 0; i < n; i++) {
        const float *z = logits + (size_t)i * classes;
        double zmax = z[0], sum = 0.0;
        for (int c = 1; c < classes; c++)
            zmax = z[c] > zmax ? z[c] : zmax;
        for (int c = 0; c < classes; c++)
            sum += exp(z[c] - zmax);
        const double lse = zmax + log(sum);
        total += lse - z[labels[i]];
        for (int c = 0; dlogits && c < classes; c++)
            dlogits[(size_t)i * classes + c] =
                (float)((exp(z[c] - lse) - (c == labels[i])) / n);
    }
    return total / n;
}

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
    assert_int_equal(model_build(&t->m, &spec, &e), 0);
    const Model *m = &t->m;
    t->n = n;
    t->params = alloc_f(m->nparams);
    t->state = alloc_f(m->nstate);
    t->grads = alloc_f(m->nparams);
    model_init(m, seed, t->params, t->state);
    for (int ti = 0; ti < m->ntensors; ti++) {
        const TensorInfo *ti_ = &m->tensors[ti];
        float *p = (ti_->arena == T_PARAM ? t->params : t->state) + ti_->offset;
        uint64_t s = seed * 1000 + (uint64_t)ti;
        if (ti_->arena == T_STATE)
            tu_fill_uniform(p, ti_->count, s, strstr(ti_->name, "var") ? 0.5f : -0.5f,
                            strstr(ti_->name, "var") ? 2.0f : 0.5f);
        else if (ti_->init == INIT_ONE)
            tu_fill_uniform(p, ti_->count, s, 0.5f, 1.5f);
        else if (ti_->init == INIT_ZERO)
            tu_fill_uniform(p, ti_->count, s, -0.5f, 0.5f);
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
    BackendOptions o = {n, 0};
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
    return xent(NULL, t->logits, t->labels, t->n, t->m.spec.classes);
}

/* Forward and backward at the host's params in Keep mode; grads to t->grads. */
static double net_grads(Net *t)
{
    Err e;
    net_loss(t);
    const double loss = xent(t->dlogits, t->logits, t->labels, t->n, t->m.spec.classes);
    assert_int_equal(backend_ref.backward(t->be, t->dlogits, t->alpha, t->n, &e), 0);
    assert_int_equal(backend_ref.store(t->be, NULL, NULL, NULL, t->grads, &e), 0);
    return loss;
}

/* (L(p + h v) - L(p - h v)) / 2h for a direction v over a tensor's slice. */
static double fd_dir(Net *t, float *p, const float *v, size_t count, double h)
{
    float *save = alloc_f(count);
    memcpy(save, p, count * sizeof(float));
    for (size_t i = 0; i < count; i++)
        p[i] = (float)(save[i] + h * v[i]);
    const double lp = net_loss(t);
    for (size_t i = 0; i < count; i++)
        p[i] = (float)(save[i] - h * v[i]);
    const double lm = net_loss(t);
    memcpy(p, save, count * sizeof(float));
    free(save);
    return (lp - lm) / (2 * h);
}

/*
 * Tolerances. The forward runs in float32, so the loss differences carry
 * rounding noise of roughly 1e-7 of the loss, and the relu kinks crossed by
 * a step add an error proportional to the step; steps of about 1e-2 of a
 * tensor's RMS balance the two. What remains, measured over these networks,
 * is a few 1e-4 of the gradient's scale at worst, so:
 *  - along a random +-1 direction over the whole tensor, |fd - g.v| must be
 *    within DIR_TOL of |g|_2 (the typical size of g.v);
 *  - at single coordinates (the largest and a few random ones), |fd - g_i|
 *    within COORD_TOL of the tensor's largest |g|.
 * A missing term or a wrong index anywhere in a tensor's gradient is an
 * O(1) error on both measures.
 */
#define DIR_TOL 1e-2
#define COORD_TOL 1e-2
#define NCOORD 3

static void gradcheck_net(ModelSpec spec, const char *label, uint64_t seed)
{
    Net t;
    net_setup(&t, spec, 4, seed);
    const Model *m = &t.m;
    printf("%s: %zu params, loss %.4f\n", label, m->nparams, net_grads(&t));
    float *g = alloc_f(m->nparams);
    memcpy(g, t.grads, m->nparams * sizeof(float));
    double worst_dir = 0, worst_coord = 0;
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
        const double h = 1e-2 * rms;

        const double fdv = fd_dir(&t, p, v, T->count, h);
        const double rel_dir = fabs(fdv - gv) / sqrt(g2);

        double coord_err = 0;
        for (int k = 0; k < NCOORD + 1; k++) {
            size_t i = k == 0 ? imax : rng_u32(seed, RNG_TEST, 8, (uint32_t)ti, (uint32_t)k) % T->count;
            float one = 1.0f;
            const double fd = fd_dir(&t, p + i, &one, 1, h);
            if (fabs(fd - gt[i]) > coord_err)
                coord_err = fabs(fd - gt[i]);
        }
        const double rel_coord = coord_err / gmax;
        printf("  %-36s dir %.1e  coord %.1e  |g| %.1e\n", T->name, rel_dir, rel_coord, sqrt(g2));
        worst_dir = rel_dir > worst_dir ? rel_dir : worst_dir;
        worst_coord = rel_coord > worst_coord ? rel_coord : worst_coord;
        assert_true(rel_dir < DIR_TOL);
        assert_true(rel_coord < COORD_TOL);
        checked++;
        free(v);
    }
    printf("%s: %d tensors, worst dir %.1e, worst coord %.1e\n", label, checked, worst_dir,
           worst_coord);
    free(g);
    net_free(&t);
}

static ModelSpec resnet_spec(ShiftMode shift)
{
    ModelSpec s = {ARCH_RESNET, 8, 4, 1, 10, 3, 8, 8, shift};
    return s;
}

static ModelSpec resnext_spec(void)
{
    ModelSpec s = {ARCH_RESNEXT, 11, 4, 2, 10, 3, 8, 8, SHIFT_ORIGINAL};
    return s;
}

static void test_gradcheck_resnet_original(void **state)
{
    (void)state;
    gradcheck_net(resnet_spec(SHIFT_ORIGINAL), "resnet 8 2x4d, original shift", 11);
}

static void test_gradcheck_resnet_reimpl(void **state)
{
    (void)state;
    gradcheck_net(resnet_spec(SHIFT_REIMPL), "resnet 8 2x4d, reimpl shift", 12);
}

static void test_gradcheck_resnext(void **state)
{
    (void)state;
    gradcheck_net(resnext_spec(), "resnext 11 2x2x4d", 13);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_gradcheck_resnet_original),
        cmocka_unit_test(test_gradcheck_resnet_reimpl),
        cmocka_unit_test(test_gradcheck_resnext),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
