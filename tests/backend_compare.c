/* One backend against ref; see backend_compare.h. */
#include "backend_compare.h"

#include "testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "optim.h"
#include "train.h"

/* The SGD settings of every step. */
#define SGD_LR 0.05f
#define SGD_MOMENTUM 0.9f
#define SGD_WD 5e-4f

Backend *compare_create(const BackendOps *ops, const Model *m, const BackendOptions *o, int n)
{
    Err e = {{0}};
    BackendOptions bo = *o;
    bo.max_batch = n;
    Backend *be = ops->create(m, &bo, &e);
    if (!be)
        fail_msg("%s create: %s", ops->name, e.msg);
    return be;
}

double compare_check(const char *what, const char *cname, const float *got, const float *want,
                     size_t count, double tol)
{
    double err = tu_rel_err(got, want, count);
    if (!(err <= tol))
        fail_msg("%s: %s differs from ref: relative error %.3g > %.1g", cname, what, err, tol);
    return err;
}

void compare_grads(const Model *m, const char *cname, const float *got, const float *want,
                   double tol)
{
    for (int t = 0; t < m->ntensors; t++) {
        const TensorInfo *ti = &m->tensors[t];
        if (ti->arena != T_PARAM)
            continue;
        char what[200];
        snprintf(what, sizeof what, "gradient of %s", ti->name);
        compare_check(what, cname, got + ti->offset, want + ti->offset, ti->count, tol);
    }
}

/* ||a - b|| / ||b|| over n floats (NaN: infinite). */
static double norm_err(const float *a, const float *b, size_t n)
{
    double d = 0, s = 0;
    for (size_t i = 0; i < n; i++) {
        if (isnan(a[i]) || isnan(b[i]))
            return INFINITY;
        d += ((double)a[i] - b[i]) * ((double)a[i] - b[i]);
        s += (double)b[i] * b[i];
    }
    return sqrt(d) / (s > 0 ? sqrt(s) : 1e-30);
}

/* A case's network, starting point and buffers, and both backends. */
typedef struct {
    Model m;
    int n, K;
    float *params, *state, *x, *alpha, *beta;
    float *lr, *lt, *dl;        /* logits of ref and tested, dlogits: (n, K) */
    float *gr, *gt, *sr, *st, *pr, *pt, *mr, *mt, *pw, *mw;
    int *labels;
    Backend *ref, *tst;
} Fixture;

static void fixture_setup(Fixture *f, const BackendOps *ops, const BackendOptions *o,
                          const CompareCase *c)
{
    memset(f, 0, sizeof *f);
    tu_model(&f->m, &c->spec);
    const Model *m = &f->m;
    int n = f->n = c->n, K = f->K = c->spec.classes;
    size_t img = (size_t)c->spec.in_c * c->spec.in_h * c->spec.in_w;
    size_t P = m->nparams * sizeof(float), S = m->nstate * sizeof(float);
    f->params = malloc(P);
    f->state = malloc(S);
    f->x = malloc(n * img * sizeof(float));
    f->alpha = malloc((size_t)m->nblocks * n * sizeof(float));
    f->beta = malloc((size_t)m->nblocks * n * sizeof(float));
    f->lr = malloc((size_t)n * K * sizeof(float));
    f->lt = malloc((size_t)n * K * sizeof(float));
    f->dl = malloc((size_t)n * K * sizeof(float));
    f->gr = malloc(P), f->gt = malloc(P), f->pr = malloc(P), f->pt = malloc(P);
    f->mr = malloc(P), f->mt = malloc(P), f->pw = malloc(P), f->mw = malloc(P);
    f->sr = malloc(S), f->st = malloc(S);
    f->labels = malloc(n * sizeof(int));
    model_init(m, 11, f->params, f->state);
    /* non-trivial BN affine parameters and running statistics */
    for (int t = 0; t < m->ntensors; t++) {
        const TensorInfo *ti = &m->tensors[t];
        float *p = (ti->arena == T_PARAM ? f->params : f->state) + ti->offset;
        if (ti->init == INIT_ONE)
            tu_fill_uniform(p, ti->count, 100 + t, 0.5f, 1.5f);
        else if (ti->init == INIT_ZERO)
            tu_fill_uniform(p, ti->count, 100 + t, -0.2f, 0.2f);
    }
    tu_fill_uniform(f->x, n * img, 5, -2.0f, 2.0f);
    for (int i = 0; i < n; i++)
        f->labels[i] = i % K;

    const BackendOptions ref_opts = {.max_batch = n, .threads = 2, .device = 0,
                                     .precision = PRECISION_FP32};
    f->ref = compare_create(&backend_ref, m, &ref_opts, n);
    f->tst = compare_create(ops, m, o, n);
    COMPARE_OK(backend_ref.load(f->ref, f->params, f->state, NULL, ep));
    COMPARE_OK(ops->load(f->tst, f->params, f->state, NULL, ep));
}

static void fixture_free(Fixture *f, const BackendOps *ops)
{
    backend_ref.destroy(f->ref);
    ops->destroy(f->tst);
    free(f->params); free(f->state); free(f->x); free(f->alpha); free(f->beta);
    free(f->lr); free(f->lt); free(f->dl); free(f->gr); free(f->gt); free(f->sr);
    free(f->st); free(f->pr); free(f->pt); free(f->mr); free(f->mt); free(f->pw);
    free(f->mw); free(f->labels);
    model_free(&f->m);
}

void compare_case(const BackendOps *ops, const BackendOptions *o, const CompareCase *c,
                  const CompareTol *tol)
{
    Fixture fx, *f = &fx;
    fixture_setup(f, ops, o, c);
    const Model *m = &f->m;
    const int n = f->n, K = f->K;
    for (int step = 0; step < 3; step++) {
        shake_draw(f->alpha, f->beta, m->nblocks, n, 3, step, c->fwd, c->bwd, c->level);
        COMPARE_OK(backend_ref.forward(f->ref, f->lr, f->x, f->alpha, n, 1, ep));
        COMPARE_OK(ops->forward(f->tst, f->lt, f->x, f->alpha, n, 1, ep));
        compare_check("training logits", c->name, f->lt, f->lr, (size_t)n * K, tol->first);
        softmax_xent(f->dl, NULL, f->lr, f->labels, n, K);
        COMPARE_OK(backend_ref.backward(f->ref, f->dl, f->beta, n, ep));
        COMPARE_OK(ops->backward(f->tst, f->dl, f->beta, n, ep));
        COMPARE_OK(backend_ref.store(f->ref, f->pr, f->sr, NULL, f->gr, ep));
        COMPARE_OK(ops->store(f->tst, f->pt, f->st, NULL, f->gt, ep));
        compare_check("running statistics", c->name, f->st, f->sr, m->nstate, tol->first);
        if (step == 0) {
            compare_grads(m, c->name, f->gt, f->gr, tol->first);
            compare_check("parameters after load", c->name, f->pt, f->pr, m->nparams, 0);
        }
        COMPARE_OK(backend_ref.update(f->ref, SGD_LR, SGD_MOMENTUM, SGD_WD, ep));
        COMPARE_OK(ops->update(f->tst, SGD_LR, SGD_MOMENTUM, SGD_WD, ep));
        /* a smaller batch through the same backend object */
        COMPARE_OK(backend_ref.forward(f->ref, f->lr, f->x, NULL, n - 1, 0, ep));
        COMPARE_OK(ops->forward(f->tst, f->lt, f->x, NULL, n - 1, 0, ep));
        compare_check("evaluation logits", c->name, f->lt, f->lr, (size_t)(n - 1) * K,
                      step == 0 ? tol->first : tol->steps);
    }
    COMPARE_OK(backend_ref.store(f->ref, f->pr, f->sr, NULL, NULL, ep));
    COMPARE_OK(ops->store(f->tst, f->pt, f->st, NULL, NULL, ep));
    compare_check("parameters after 3 SGD steps", c->name, f->pt, f->pr, m->nparams,
                  tol->steps);
    fixture_free(f, ops);
}

/* The gradient tensor that differs most (by its own norm), for messages. */
static void worst_tensor(const Model *m, const float *got, const float *want, char *buf,
                         size_t len)
{
    double worst = -1;
    for (int t = 0; t < m->ntensors; t++) {
        const TensorInfo *ti = &m->tensors[t];
        if (ti->arena != T_PARAM)
            continue;
        double err = norm_err(got + ti->offset, want + ti->offset, ti->count);
        if (err > worst) {
            worst = err;
            snprintf(buf, len, "%s, %.3g", ti->name, err);
        }
    }
}

void compare_case_synced(const BackendOps *ops, const BackendOptions *o, const CompareCase *c,
                         const CompareSyncTol *tol)
{
    Fixture fx, *f = &fx;
    fixture_setup(f, ops, o, c);
    const Model *m = &f->m;
    const int n = f->n, K = f->K;
    char what[300];
    double worst_logits = 0, worst_state = 0, worst_grads = 0;
    for (int step = 0; step < 3; step++) {
        /* common inputs: ref's weights, statistics and momentum, and the
         * round trip through the tested backend is exact */
        COMPARE_OK(backend_ref.store(f->ref, f->pr, f->sr, f->mr, NULL, ep));
        COMPARE_OK(ops->load(f->tst, f->pr, f->sr, f->mr, ep));
        COMPARE_OK(ops->store(f->tst, f->pt, f->st, f->mt, NULL, ep));
        snprintf(what, sizeof what, "parameters after load (step %d)", step);
        compare_check(what, c->name, f->pt, f->pr, m->nparams, 0);
        snprintf(what, sizeof what, "running statistics after load (step %d)", step);
        compare_check(what, c->name, f->st, f->sr, m->nstate, 0);
        snprintf(what, sizeof what, "momentum after load (step %d)", step);
        compare_check(what, c->name, f->mt, f->mr, m->nparams, 0);

        COMPARE_OK(backend_ref.forward(f->ref, f->lr, f->x, NULL, n - 1, 0, ep));
        COMPARE_OK(ops->forward(f->tst, f->lt, f->x, NULL, n - 1, 0, ep));
        snprintf(what, sizeof what, "evaluation logits (step %d)", step);
        worst_logits = fmax(worst_logits, compare_check(what, c->name, f->lt, f->lr,
                                                        (size_t)(n - 1) * K, tol->logits));

        shake_draw(f->alpha, f->beta, m->nblocks, n, 3, step, c->fwd, c->bwd, c->level);
        COMPARE_OK(backend_ref.forward(f->ref, f->lr, f->x, f->alpha, n, 1, ep));
        COMPARE_OK(ops->forward(f->tst, f->lt, f->x, f->alpha, n, 1, ep));
        snprintf(what, sizeof what, "training logits (step %d)", step);
        worst_logits = fmax(worst_logits, compare_check(what, c->name, f->lt, f->lr,
                                                        (size_t)n * K, tol->logits));
        softmax_xent(f->dl, NULL, f->lr, f->labels, n, K);
        COMPARE_OK(backend_ref.backward(f->ref, f->dl, f->beta, n, ep));
        COMPARE_OK(ops->backward(f->tst, f->dl, f->beta, n, ep));
        COMPARE_OK(backend_ref.store(f->ref, NULL, f->sr, NULL, f->gr, ep));
        COMPARE_OK(ops->store(f->tst, NULL, f->st, NULL, f->gt, ep));
        snprintf(what, sizeof what, "running statistics (step %d)", step);
        worst_state = fmax(worst_state, compare_check(what, c->name, f->st, f->sr, m->nstate,
                                                      tol->state));
        double gerr = norm_err(f->gt, f->gr, m->nparams);
        worst_grads = fmax(worst_grads, gerr);
        if (!(gerr <= tol->grads)) {
            char worst[200] = "";
            worst_tensor(m, f->gt, f->gr, worst, sizeof worst);
            fail_msg("%s: gradients (step %d) differ from ref: ||a - b|| / ||b|| = %.3g > %.2g "
                     "(worst tensor: %s)", c->name, step, gerr, tol->grads, worst);
        }

        /* the step the tested backend takes from its own gradients */
        memcpy(f->pw, f->pr, m->nparams * sizeof(float));
        memcpy(f->mw, f->mr, m->nparams * sizeof(float));
        sgd_nesterov(f->pw, f->mw, f->gt, m->nparams, SGD_LR, SGD_MOMENTUM, SGD_WD);
        COMPARE_OK(backend_ref.update(f->ref, SGD_LR, SGD_MOMENTUM, SGD_WD, ep));
        COMPARE_OK(ops->update(f->tst, SGD_LR, SGD_MOMENTUM, SGD_WD, ep));
        COMPARE_OK(ops->store(f->tst, f->pt, NULL, f->mt, NULL, ep));
        snprintf(what, sizeof what, "parameters after SGD step %d (against sgd_nesterov on its "
                 "gradients)", step);
        compare_check(what, c->name, f->pt, f->pw, m->nparams, tol->update);
        snprintf(what, sizeof what, "momentum after SGD step %d (against sgd_nesterov on its "
                 "gradients)", step);
        compare_check(what, c->name, f->mt, f->mw, m->nparams, tol->update);
    }
    /* the margins, for the record (a GPU run's log shows them) */
    printf("  %s: largest relative errors: logits %.2g (bound %.2g), running statistics %.2g "
           "(%.2g), gradients %.2g (%.2g)\n", c->name, worst_logits, tol->logits, worst_state,
           tol->state, worst_grads, tol->grads);
    fixture_free(f, ops);
}
