/*
 * The reference backend: the network of model.h computed with the plain
 * layers of ref_layers.c, on the host, in the canonical arenas themselves.
 * It is the ground truth the other backends are tested against, so every
 * step is a literal transcription of model.h's block definitions, every
 * intermediate tensor has its own buffer (and a gradient buffer of the same
 * shape), and nothing is fused or reused.
 *
 * Invariants: every buffer is sized for max_batch at create(); backward()
 * needs the activations of the last forward, which must have been a training
 * forward with the same n; gradients are overwritten by each backward.
 */
#include "backend.h"

#include <omp.h>
#include <stdio.h>
#include <string.h>

#include "../core/optim.h"
#include "ref_layers.h"

/* The activations of one block (or, in a second copy, their gradients). */
typedef struct {
    float *r;                   /* resnet: relu(x), (n, cin, ih, iw) */
    float *conv[2][3];          /* conv[k][j] output, (n, conv.cout, conv.oh, conv.ow) */
    float *bn[2][3];            /* bn[k][j] output, same shape; the last is branch k */
    float *act[2][2];           /* relu(bn[k][j]), the input of conv[k][j+1] */
    float *pool1, *shift, *pool2; /* resnet shortcut: pool_s(r), shift(r), pool_s(shift(r)) */
    float *sc_conv[2];          /* shortcut conv outputs, (n, sc.cout, oh, ow) */
    float *cat;                 /* resnet: concat(sc_conv[0], sc_conv[1]), (n, cout, oh, ow) */
    float *sc_bn;               /* the projection shortcut, (n, cout, oh, ow) */
    float *sum;                 /* shortcut + shake, (n, cout, oh, ow) */
    float *out;                 /* the block's output: sum (resnet), relu(sum) (resnext) */
} BlockActs;

typedef struct {
    float *x;                   /* the input images, (n, in_c, in_h, in_w) */
    float *stem_conv, *stem_bn; /* (n, 16 or 64, in_h, in_w) */
    float *stem_out;            /* relu(stem_bn) for resnext; stem_bn itself for resnet */
    BlockActs *blocks;          /* (nblocks) */
    float *head_relu;           /* resnet: relu of the last block's output */
    float *pooled;              /* (n, fc_in) */
} Acts;

/* What a training-mode batch norm keeps for its backward pass. */
typedef struct {
    float *mean, *var, *rstd;   /* (c) each */
} BnStats;

typedef struct {
    BnStats bn[2][3], sc;
} BlockStats;

struct Backend {
    const Model *m;             /* borrowed: outlives the backend */
    int max_batch, threads;
    float *params, *grads, *momentum; /* (nparams) each */
    float *state;               /* (nstate) */
    float *act_arena, *dact_arena, *stats_arena;
    size_t act_floats;
    Acts a;                     /* activations */
    Acts d;                     /* their gradients, same shapes */
    BnStats stem_stats;
    BlockStats *stats;          /* (nblocks) */
    float *half;                /* (max_batch) 0.5: the evaluation coefficients */
    int train_n;                /* n of the last training forward, 0 if none */
};

/*
 * Hands out consecutive pieces of one allocation. Run once with base NULL to
 * count, then again over the allocated block to place the pointers.
 */
typedef struct {
    float *base;
    size_t used;
} Carver;

static float *carve(Carver *cv, size_t count)
{
    float *p = cv->base ? cv->base + cv->used : NULL;
    cv->used += (count + 15) / 16 * 16;     /* keep each piece 64-byte aligned */
    return p;
}

static size_t conv_out_size(const ConvDesc *c, int n)
{
    return (size_t)n * c->cout * c->oh * c->ow;
}

static void layout_acts(Acts *A, Carver *cv, const Model *m, int N)
{
    const ModelSpec *s = &m->spec;
    A->x = carve(cv, (size_t)N * s->in_c * s->in_h * s->in_w);
    A->stem_conv = carve(cv, conv_out_size(&m->stem_conv, N));
    A->stem_bn = carve(cv, conv_out_size(&m->stem_conv, N));
    A->stem_out = m->stem_relu ? carve(cv, conv_out_size(&m->stem_conv, N)) : A->stem_bn;
    for (int b = 0; b < m->nblocks; b++) {
        const BlockDesc *B = &m->blocks[b];
        BlockActs *K = &A->blocks[b];
        const size_t in_size = (size_t)N * B->cin * B->ih * B->iw;
        const size_t out_size = (size_t)N * B->cout * B->oh * B->ow;
        memset(K, 0, sizeof *K);
        if (s->arch == ARCH_RESNET)
            K->r = carve(cv, in_size);
        for (int k = 0; k < 2; k++)
            for (int j = 0; j < B->nconv; j++) {
                K->conv[k][j] = carve(cv, conv_out_size(&B->conv[k][j], N));
                K->bn[k][j] = carve(cv, conv_out_size(&B->conv[k][j], N));
                if (j < B->nconv - 1)
                    K->act[k][j] = carve(cv, conv_out_size(&B->conv[k][j], N));
            }
        if (B->proj) {
            if (s->arch == ARCH_RESNET) {
                K->pool1 = carve(cv, (size_t)N * B->cin * B->oh * B->ow);
                K->shift = carve(cv, in_size);
                K->pool2 = carve(cv, (size_t)N * B->cin * B->oh * B->ow);
                K->cat = carve(cv, out_size);
            }
            for (int p = 0; p < B->nsc; p++)
                K->sc_conv[p] = carve(cv, conv_out_size(&B->sc[p], N));
            K->sc_bn = carve(cv, out_size);
        }
        K->sum = carve(cv, out_size);
        K->out = s->arch == ARCH_RESNEXT ? carve(cv, out_size) : K->sum;
    }
    const size_t feat = (size_t)N * m->fc_in * m->feat_h * m->feat_w;
    A->head_relu = s->arch == ARCH_RESNET ? carve(cv, feat) : NULL;
    A->pooled = carve(cv, (size_t)N * m->fc_in);
}

static void layout_bn_stats(BnStats *st, Carver *cv, const BnDesc *bd)
{
    st->mean = carve(cv, (size_t)bd->c);
    st->var = carve(cv, (size_t)bd->c);
    st->rstd = carve(cv, (size_t)bd->c);
}

static void layout_stats(Backend *be, Carver *cv)
{
    const Model *m = be->m;
    layout_bn_stats(&be->stem_stats, cv, &m->stem_bn);
    for (int b = 0; b < m->nblocks; b++) {
        const BlockDesc *B = &m->blocks[b];
        for (int k = 0; k < 2; k++)
            for (int j = 0; j < B->nconv; j++)
                layout_bn_stats(&be->stats[b].bn[k][j], cv, &B->bn[k][j]);
        if (B->proj)
            layout_bn_stats(&be->stats[b].sc, cv, &B->sc_bn);
    }
}

static void ref_destroy(Backend *be)
{
    if (!be)
        return;
    mem_free(be->params);
    mem_free(be->grads);
    mem_free(be->momentum);
    mem_free(be->state);
    mem_free(be->act_arena);
    mem_free(be->dact_arena);
    mem_free(be->stats_arena);
    mem_free(be->a.blocks);
    mem_free(be->d.blocks);
    mem_free(be->stats);
    mem_free(be->half);
    mem_free(be);
}

static Backend *ref_create(const Model *m, const BackendOptions *o, Err *e)
{
    if (o->max_batch < 1) {
        err_set(e, "ref backend: max_batch must be at least 1, got %d", o->max_batch);
        return NULL;
    }
    Backend *be = mem_alloc(sizeof *be, "ref backend", e);
    if (!be)
        return NULL;
    be->m = m;
    be->max_batch = o->max_batch;
    be->threads = o->threads;
    const size_t nb = (size_t)m->nblocks;
    if (!(be->params = mem_alloc(m->nparams * sizeof(float), "ref params", e)) ||
        !(be->grads = mem_alloc(m->nparams * sizeof(float), "ref gradients", e)) ||
        !(be->momentum = mem_alloc(m->nparams * sizeof(float), "ref momentum", e)) ||
        !(be->state = mem_alloc(m->nstate * sizeof(float), "ref running statistics", e)) ||
        !(be->a.blocks = mem_alloc(nb * sizeof(BlockActs), "ref block activations", e)) ||
        !(be->d.blocks = mem_alloc(nb * sizeof(BlockActs), "ref block gradients", e)) ||
        !(be->stats = mem_alloc(nb * sizeof(BlockStats), "ref batch statistics", e)) ||
        !(be->half = mem_alloc((size_t)o->max_batch * sizeof(float), "ref coefficients", e)))
        goto fail;
    for (int i = 0; i < o->max_batch; i++)
        be->half[i] = 0.5f;

    Carver cv = {NULL, 0};
    layout_acts(&be->a, &cv, m, o->max_batch);
    be->act_floats = cv.used;
    if (!(be->act_arena = mem_alloc(cv.used * sizeof(float), "ref activations", e)) ||
        !(be->dact_arena = mem_alloc(cv.used * sizeof(float), "ref activation gradients", e)))
        goto fail;
    cv = (Carver){be->act_arena, 0};
    layout_acts(&be->a, &cv, m, o->max_batch);
    cv = (Carver){be->dact_arena, 0};
    layout_acts(&be->d, &cv, m, o->max_batch);

    cv = (Carver){NULL, 0};
    layout_stats(be, &cv);
    if (!(be->stats_arena = mem_alloc(cv.used * sizeof(float), "ref batch statistics", e)))
        goto fail;
    cv = (Carver){be->stats_arena, 0};
    layout_stats(be, &cv);
    return be;

fail:
    err_wrap(e, "creating the ref backend");
    ref_destroy(be);
    return NULL;
}

static int ref_load(Backend *be, const float *params, const float *state,
                    const float *momentum, Err *e)
{
    (void)e;                    /* host memory: nothing can fail */
    const Model *m = be->m;
    memcpy(be->params, params, m->nparams * sizeof(float));
    memcpy(be->state, state, m->nstate * sizeof(float));
    if (momentum)
        memcpy(be->momentum, momentum, m->nparams * sizeof(float));
    else
        memset(be->momentum, 0, m->nparams * sizeof(float));
    return 0;
}

static int ref_store(Backend *be, float *params, float *state, float *momentum,
                     float *grads, Err *e)
{
    (void)e;
    const Model *m = be->m;
    if (params)
        memcpy(params, be->params, m->nparams * sizeof(float));
    if (state)
        memcpy(state, be->state, m->nstate * sizeof(float));
    if (momentum)
        memcpy(momentum, be->momentum, m->nparams * sizeof(float));
    if (grads)
        memcpy(grads, be->grads, m->nparams * sizeof(float));
    return 0;
}

/* OpenMP's thread count is process-wide; set it on entry, as another
 * backend in the same process may have changed it. */
static void use_threads(const Backend *be)
{
    if (be->threads > 0)
        omp_set_num_threads(be->threads);
}

static void conv_fwd(Backend *be, float *out, const float *in, const ConvDesc *c, int n)
{
    conv2d_forward(out, in, be->params + c->w, n, c);
}

static void conv_bwd(Backend *be, float *din, const float *dout, const float *in,
                     const ConvDesc *c, int n)
{
    conv2d_backward(din, be->grads + c->w, dout, in, be->params + c->w, n, c);
}

/* Training: batch statistics, kept in st, and the running update.
 * Evaluation: the running statistics. */
static void bn_fwd(Backend *be, float *out, BnStats *st, const float *in, const BnDesc *bd,
                   int n, int hw, int train)
{
    const float *P = be->params;
    float *S = be->state;
    if (train) {
        batchnorm_forward(out, st->mean, st->var, st->rstd, in, P + bd->gamma, P + bd->beta,
                          n, bd->c, hw);
        batchnorm_running_update(S + bd->mean, S + bd->var, st->mean, st->var, bd->c,
                                 (long)n * hw);
    } else {
        batchnorm_eval_forward(out, in, P + bd->gamma, P + bd->beta, S + bd->mean, S + bd->var,
                               n, bd->c, hw);
    }
}

static void bn_bwd(Backend *be, float *din, const float *dout, const float *in,
                   const BnStats *st, const BnDesc *bd, int n, int hw)
{
    batchnorm_backward(din, be->grads + bd->gamma, be->grads + bd->beta, dout, in,
                       st->mean, st->rstd, be->params + bd->gamma, n, bd->c, hw);
}

static void add_into(float *y, const float *x, size_t size)
{
    for (size_t i = 0; i < size; i++)
        y[i] += x[i];
}

/* model.h's block definitions, forward. x: (n, cin, ih, iw); coef: (n). */
static void block_forward(Backend *be, int b, const float *x, const float *coef, int n, int train)
{
    const Model *m = be->m;
    const BlockDesc *B = &m->blocks[b];
    BlockActs *A = &be->a.blocks[b];
    BlockStats *S = &be->stats[b];
    const int resnet = m->spec.arch == ARCH_RESNET;
    const size_t in_size = (size_t)n * B->cin * B->ih * B->iw;
    const size_t out_size = (size_t)n * B->cout * B->oh * B->ow;

    /* the resnet block is pre-activation: branches and projection see relu(x) */
    const float *bin = x;
    if (resnet) {
        relu_forward(A->r, x, in_size);
        bin = A->r;
    }

    /* each branch: (conv -> bn -> relu) x (nconv-1), then conv -> bn */
    for (int k = 0; k < 2; k++) {
        const float *h = bin;
        for (int j = 0; j < B->nconv; j++) {
            const ConvDesc *c = &B->conv[k][j];
            conv_fwd(be, A->conv[k][j], h, c, n);
            bn_fwd(be, A->bn[k][j], &S->bn[k][j], A->conv[k][j], &B->bn[k][j], n,
                   c->oh * c->ow, train);
            if (j < B->nconv - 1) {
                relu_forward(A->act[k][j], A->bn[k][j], conv_out_size(c, n));
                h = A->act[k][j];
            }
        }
    }

    const int ohw = B->oh * B->ow;
    if (!B->proj) {
        memcpy(A->sum, x, out_size * sizeof(float));
    } else if (resnet) {
        /* path 1: avgpool(1, s) -> conv1x1; path 2: shift -> avgpool(1, s)
         * -> conv1x1; concat (path 1 first) -> bn */
        const int nc = n * B->cin;
        avgpool1_forward(A->pool1, A->r, nc, B->ih, B->iw, B->stride, B->oh, B->ow);
        shift_forward(A->shift, A->r, nc, B->ih, B->iw, m->spec.shift);
        avgpool1_forward(A->pool2, A->shift, nc, B->ih, B->iw, B->stride, B->oh, B->ow);
        conv_fwd(be, A->sc_conv[0], A->pool1, &B->sc[0], n);
        conv_fwd(be, A->sc_conv[1], A->pool2, &B->sc[1], n);
        concat_forward(A->cat, A->sc_conv[0], A->sc_conv[1], n, B->sc[0].cout, B->sc[1].cout,
                       ohw);
        bn_fwd(be, A->sc_bn, &S->sc, A->cat, &B->sc_bn, n, ohw, train);
        memcpy(A->sum, A->sc_bn, out_size * sizeof(float));
    } else {
        conv_fwd(be, A->sc_conv[0], x, &B->sc[0], n);
        bn_fwd(be, A->sc_bn, &S->sc, A->sc_conv[0], &B->sc_bn, n, ohw, train);
        memcpy(A->sum, A->sc_bn, out_size * sizeof(float));
    }

    const int last = B->nconv - 1;
    shake_forward(A->sum, A->bn[0][last], A->bn[1][last], coef, n, (size_t)B->cout * ohw);
    if (!resnet)
        relu_forward(A->out, A->sum, out_size);
}

/* The gradient of block_forward: D->out holds d(out) on entry; dx: (n, cin,
 * ih, iw) += the gradient of the block's input. */
static void block_backward(Backend *be, int b, float *dx, const float *x, const float *beta, int n)
{
    const Model *m = be->m;
    const BlockDesc *B = &m->blocks[b];
    const BlockActs *A = &be->a.blocks[b];
    BlockActs *D = &be->d.blocks[b];
    const BlockStats *S = &be->stats[b];
    const int resnet = m->spec.arch == ARCH_RESNET;
    const size_t in_size = (size_t)n * B->cin * B->ih * B->iw;
    const size_t out_size = (size_t)n * B->cout * B->oh * B->ow;
    const int ohw = B->oh * B->ow;

    if (!resnet)
        relu_backward(D->sum, D->out, A->sum, out_size);
    const float *g = D->sum;

    const int last = B->nconv - 1;
    shake_backward(D->bn[0][last], D->bn[1][last], g, beta, n, (size_t)B->cout * ohw);

    /* the branches' input is relu(x) for resnet, x for resnext */
    float *dbin = resnet ? D->r : dx;
    const float *bin = resnet ? A->r : x;
    for (int k = 0; k < 2; k++) {
        for (int j = last; j >= 0; j--) {
            const ConvDesc *c = &B->conv[k][j];
            if (j < last)
                relu_backward(D->bn[k][j], D->act[k][j], A->bn[k][j], conv_out_size(c, n));
            bn_bwd(be, D->conv[k][j], D->bn[k][j], A->conv[k][j], &S->bn[k][j], &B->bn[k][j],
                   n, c->oh * c->ow);
            conv_bwd(be, j > 0 ? D->act[k][j - 1] : dbin, D->conv[k][j],
                     j > 0 ? A->act[k][j - 1] : bin, c, n);
        }
    }

    /* the shortcut's output gradient is g itself: sum = shortcut + shake */
    if (!B->proj) {
        add_into(dx, g, out_size);
    } else if (resnet) {
        const int nc = n * B->cin;
        bn_bwd(be, D->cat, g, A->cat, &S->sc, &B->sc_bn, n, ohw);
        concat_backward(D->sc_conv[0], D->sc_conv[1], D->cat, n, B->sc[0].cout, B->sc[1].cout,
                        ohw);
        conv_bwd(be, D->pool1, D->sc_conv[0], A->pool1, &B->sc[0], n);
        conv_bwd(be, D->pool2, D->sc_conv[1], A->pool2, &B->sc[1], n);
        avgpool1_backward(D->shift, D->pool2, nc, B->ih, B->iw, B->stride, B->oh, B->ow);
        shift_backward(D->r, D->shift, nc, B->ih, B->iw, m->spec.shift);
        avgpool1_backward(D->r, D->pool1, nc, B->ih, B->iw, B->stride, B->oh, B->ow);
    } else {
        bn_bwd(be, D->sc_conv[0], g, A->sc_conv[0], &S->sc, &B->sc_bn, n, ohw);
        conv_bwd(be, dx, D->sc_conv[0], x, &B->sc[0], n);
    }

    /* after every consumer of relu(x) has added its share */
    if (resnet)
        relu_backward(dx, D->r, x, in_size);
}

static int ref_forward(Backend *be, float *logits, const float *x, const float *alpha,
                       int n, int train, Err *e)
{
    const Model *m = be->m;
    const ModelSpec *s = &m->spec;
    if (n < 1 || n > be->max_batch)
        return err_set(e, "ref forward: batch %d outside 1..%d", n, be->max_batch);
    if (train && !alpha)
        return err_set(e, "ref forward: training needs alpha");
    use_threads(be);
    be->train_n = 0;            /* the activations are about to change */
    Acts *A = &be->a;

    memcpy(A->x, x, (size_t)n * s->in_c * s->in_h * s->in_w * sizeof(float));
    const ConvDesc *sc = &m->stem_conv;
    conv_fwd(be, A->stem_conv, A->x, sc, n);
    bn_fwd(be, A->stem_bn, &be->stem_stats, A->stem_conv, &m->stem_bn, n, sc->oh * sc->ow, train);
    if (m->stem_relu)
        relu_forward(A->stem_out, A->stem_bn, conv_out_size(sc, n));

    const float *h = A->stem_out;
    for (int b = 0; b < m->nblocks; b++) {
        block_forward(be, b, h, train ? alpha + (size_t)b * n : be->half, n, train);
        h = A->blocks[b].out;
    }

    /* head: resnet blocks end without an activation, so relu first */
    const int fhw = m->feat_h * m->feat_w;
    if (s->arch == ARCH_RESNET) {
        relu_forward(A->head_relu, h, (size_t)n * m->fc_in * fhw);
        h = A->head_relu;
    }
    global_avgpool_forward(A->pooled, h, n, m->fc_in, fhw);
    fc_forward(logits, A->pooled, be->params + m->fc_w, be->params + m->fc_b, n, m->fc_in,
               s->classes);
    if (train)
        be->train_n = n;
    return 0;
}

static int ref_backward(Backend *be, const float *dlogits, const float *beta, int n, Err *e)
{
    const Model *m = be->m;
    const ModelSpec *s = &m->spec;
    if (be->train_n == 0)
        return err_set(e, "ref backward: no training forward to differentiate");
    if (n != be->train_n)
        return err_set(e, "ref backward: batch %d, but the forward had %d", n, be->train_n);
    use_threads(be);
    const Acts *A = &be->a;
    Acts *D = &be->d;
    /* every gradient below accumulates, so start from zero */
    memset(be->grads, 0, m->nparams * sizeof(float));
    memset(be->dact_arena, 0, be->act_floats * sizeof(float));

    const int fhw = m->feat_h * m->feat_w;
    const BlockActs *lastA = &A->blocks[m->nblocks - 1];
    BlockActs *lastD = &D->blocks[m->nblocks - 1];
    fc_backward(D->pooled, be->grads + m->fc_w, be->grads + m->fc_b, dlogits, A->pooled,
                be->params + m->fc_w, n, m->fc_in, s->classes);
    if (s->arch == ARCH_RESNET) {
        global_avgpool_backward(D->head_relu, D->pooled, n, m->fc_in, fhw);
        relu_backward(lastD->out, D->head_relu, lastA->out, (size_t)n * m->fc_in * fhw);
    } else {
        global_avgpool_backward(lastD->out, D->pooled, n, m->fc_in, fhw);
    }

    for (int b = m->nblocks - 1; b >= 0; b--) {
        float *dx = b > 0 ? D->blocks[b - 1].out : D->stem_out;
        const float *x = b > 0 ? A->blocks[b - 1].out : A->stem_out;
        block_backward(be, b, dx, x, beta + (size_t)b * n, n);
    }

    const ConvDesc *sc = &m->stem_conv;
    if (m->stem_relu)
        relu_backward(D->stem_bn, D->stem_out, A->stem_bn, conv_out_size(sc, n));
    bn_bwd(be, D->stem_conv, D->stem_bn, A->stem_conv, &be->stem_stats, &m->stem_bn, n,
           sc->oh * sc->ow);
    /* nothing upstream of the images needs their gradient */
    conv_bwd(be, NULL, D->stem_conv, A->x, sc, n);
    return 0;
}

static int ref_update(Backend *be, float lr, float momentum, float wd, Err *e)
{
    (void)e;
    use_threads(be);
    sgd_nesterov(be->params, be->momentum, be->grads, be->m->nparams, lr, momentum, wd);
    return 0;
}

static void ref_describe(const Backend *be, char *buf, size_t len)
{
    char cpu[300];
    host_cpu(cpu, sizeof cpu);
    const int t = be->threads > 0 ? be->threads : omp_get_max_threads();
    snprintf(buf, len, "%s, with plain C, %d thread%s", cpu, t, t == 1 ? "" : "s");
}

const BackendOps backend_ref = {
    "ref",
    ref_create,
    ref_destroy,
    ref_load,
    ref_store,
    ref_forward,
    ref_backward,
    ref_update,
    NULL,
    NULL,
    NULL,
    NULL,
    ref_describe,
};
