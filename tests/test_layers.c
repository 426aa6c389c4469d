/*
 * The reference layers, one at a time: each forward against a direct
 * evaluation of its definition (in double, written independently here), each
 * backward against central finite differences of a random linear functional
 * L = sum(r * out) of the forward, computed in double. Backward outputs are
 * pre-filled with random values so that the += contract is checked too.
 *
 * Tolerances. The layers run in float32, so L carries the rounding of every
 * output that the perturbed element touches, about 2^-24 relative each.
 * For layers that are linear in the perturbed element (conv, fc, pooling,
 * shift, concat, shake) central differences have no truncation error, so
 * with a step of 1e-2 on O(1) data the difference quotient is off by about
 * sqrt(K) * 6e-8 / 2e-2 = 3e-6 * sqrt(K) for K touched outputs (K < 100 here),
 * i.e. a few 1e-5 of the gradient's scale: 1e-3 leaves a wide margin, while
 * a wrong index or a missing term is an O(1) error.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"
#include "ref_layers.h"

/* ---------- harness ---------- */

static float *alloc_f(size_t n)
{
    float *p = calloc(n ? n : 1, sizeof(float));
    assert_non_null(p);
    return p;
}

static float *rand_f(size_t n, uint64_t seed, float lo, float hi)
{
    float *p = alloc_f(n);
    tu_fill_uniform(p, n, seed, lo, hi);
    return p;
}

/* L = sum r * out, in double so that summing adds no rounding of its own. */
static double dot(const float *r, const float *out, size_t n)
{
    double s = 0.0;
    for (size_t i = 0; i < n; i++)
        s += (double)r[i] * out[i];
    return s;
}

/* The gradient a += backward produced: after minus prior. */
static float *accumulated(const float *buf, const float *prior, size_t n)
{
    float *g = alloc_f(n);
    for (size_t i = 0; i < n; i++)
        g[i] = buf[i] - prior[i];
    return g;
}

static float *copy_f(const float *x, size_t n)
{
    float *p = alloc_f(n);
    memcpy(p, x, n * sizeof(float));
    return p;
}

typedef double (*LossFn)(void *ctx);

/*
 * Central differences of f with respect to every element of x, against the
 * analytic gradient `an`: returns max |fd - an| / max |an|. The step is the
 * one float32 actually took, (x+eps) - (x-eps), not 2*eps.
 */
static double fd_check(LossFn f, void *ctx, float *x, size_t n, const float *an, float eps,
                       const char *what)
{
    double worst = 0.0, scale = 0.0;
    for (size_t i = 0; i < n; i++) {
        const float v = x[i];
        x[i] = v + eps;
        const float hi = x[i];
        const double lp = f(ctx);
        x[i] = v - eps;
        const float lo = x[i];
        const double lm = f(ctx);
        x[i] = v;
        const double fd = (lp - lm) / ((double)hi - (double)lo);
        if (fabs(fd - an[i]) > worst)
            worst = fabs(fd - an[i]);
        if (fabs(an[i]) > scale)
            scale = fabs(an[i]);
    }
    /* an all-zero gradient would make the check vacuous */
    assert_true(scale > 0.0);
    const double rel = worst / scale;
    printf("  %-44s fd rel err %.2e\n", what, rel);
    return rel;
}

/* max |a - b| / max |b| with b in double. */
static double rel_err_d(const float *a, const double *b, size_t n)
{
    double worst = 0.0, scale = 0.0;
    for (size_t i = 0; i < n; i++) {
        if (fabs(a[i] - b[i]) > worst || isnan(a[i]))
            worst = isnan(a[i]) ? INFINITY : fabs(a[i] - b[i]);
        if (fabs(b[i]) > scale)
            scale = fabs(b[i]);
    }
    return worst / (scale > 0 ? scale : 1e-30);
}

#define LINEAR_TOL 1e-3

/* ---------- conv2d ---------- */

static ConvDesc make_conv(int cin, int cout, int k, int stride, int pad, int groups, int ih,
                          int iw)
{
    ConvDesc c = {0};
    c.cin = cin;
    c.cout = cout;
    c.k = k;
    c.stride = stride;
    c.pad = pad;
    c.groups = groups;
    c.ih = ih;
    c.iw = iw;
    c.oh = (ih + 2 * pad - k) / stride + 1;
    c.ow = (iw + 2 * pad - k) / stride + 1;
    return c;
}

/* The definition, output position by output position. */
static void conv_direct(double *out, const float *in, const float *w, int n, const ConvDesc *c)
{
    const int cin_g = c->cin / c->groups, cout_g = c->cout / c->groups;
    for (int b = 0; b < n; b++)
        for (int oc = 0; oc < c->cout; oc++)
            for (int oy = 0; oy < c->oh; oy++)
                for (int ox = 0; ox < c->ow; ox++) {
                    double s = 0.0;
                    for (int j = 0; j < cin_g; j++)
                        for (int ky = 0; ky < c->k; ky++)
                            for (int kx = 0; kx < c->k; kx++) {
                                int iy = oy * c->stride - c->pad + ky;
                                int ix = ox * c->stride - c->pad + kx;
                                if (iy < 0 || iy >= c->ih || ix < 0 || ix >= c->iw)
                                    continue;
                                int ic = (oc / cout_g) * cin_g + j;
                                s += (double)in[((b * c->cin + ic) * c->ih + iy) * c->iw + ix] *
                                     w[((oc * cin_g + j) * c->k + ky) * c->k + kx];
                            }
                    out[((b * c->cout + oc) * c->oh + oy) * c->ow + ox] = s;
                }
}

typedef struct {
    ConvDesc c;
    int n;
    float *x, *w, *out, *r;
} ConvCtx;

static double conv_loss(void *p)
{
    ConvCtx *t = p;
    conv2d_forward(t->out, t->x, t->w, t->n, &t->c);
    return dot(t->r, t->out, (size_t)t->n * t->c.cout * t->c.oh * t->c.ow);
}

static void check_conv(const char *name, int n, ConvDesc c, uint64_t seed)
{
    printf("conv %s: %d->%d k%d s%d p%d g%d %dx%d -> %dx%d\n", name, c.cin, c.cout, c.k,
           c.stride, c.pad, c.groups, c.ih, c.iw, c.oh, c.ow);
    const size_t nx = (size_t)n * c.cin * c.ih * c.iw;
    const size_t nw = (size_t)c.cout * (c.cin / c.groups) * c.k * c.k;
    const size_t ny = (size_t)n * c.cout * c.oh * c.ow;
    ConvCtx t = {c, n, rand_f(nx, seed, -1, 1), rand_f(nw, seed + 1, -1, 1), alloc_f(ny),
                 rand_f(ny, seed + 2, -1, 1)};

    /* forward: float32 sums of at most cin/groups*k*k = 36 products of
     * O(1) terms against the exact sum: a few ulp of the output scale */
    double *want = calloc(ny, sizeof(double));
    conv_direct(want, t.x, t.w, n, &c);
    conv2d_forward(t.out, t.x, t.w, n, &c);
    double fe = rel_err_d(t.out, want, ny);
    printf("  %-44s rel err %.2e\n", "forward vs definition", fe);
    assert_true(fe < 1e-5);

    float *px = rand_f(nx, seed + 3, -1, 1), *pw = rand_f(nw, seed + 4, -1, 1);
    float *dx = copy_f(px, nx), *dw = copy_f(pw, nw);
    conv2d_backward(dx, dw, t.r, t.x, t.w, n, &c);
    float *gx = accumulated(dx, px, nx), *gw = accumulated(dw, pw, nw);
    assert_true(fd_check(conv_loss, &t, t.x, nx, gx, 1e-2f, "d input") < LINEAR_TOL);
    assert_true(fd_check(conv_loss, &t, t.w, nw, gw, 1e-2f, "d weight") < LINEAR_TOL);

    /* din NULL skips the input gradient and leaves dweight the same */
    float *dw2 = copy_f(pw, nw);
    conv2d_backward(NULL, dw2, t.r, t.x, t.w, n, &c);
    assert_memory_equal(dw2, dw, nw * sizeof(float));

    free(want);
    free(t.x); free(t.w); free(t.out); free(t.r);
    free(px); free(pw); free(dx); free(dw); free(gx); free(gw); free(dw2);
}

static void test_conv(void **state)
{
    (void)state;
    check_conv("3x3 same", 2, make_conv(3, 5, 3, 1, 1, 1, 6, 5), 100);
    check_conv("3x3 stride 2 odd", 2, make_conv(4, 6, 3, 2, 1, 1, 7, 5), 110);
    check_conv("3x3 stride 2 even", 2, make_conv(4, 4, 3, 2, 1, 1, 6, 6), 120);
    check_conv("3x3 no padding", 2, make_conv(2, 3, 3, 1, 0, 1, 5, 6), 130);
    check_conv("1x1", 3, make_conv(6, 4, 1, 1, 0, 1, 4, 3), 140);
    check_conv("1x1 stride 2", 2, make_conv(4, 6, 1, 2, 0, 1, 5, 6), 150);
    check_conv("grouped 3x3", 2, make_conv(4, 6, 3, 1, 1, 2, 5, 5), 160);
    check_conv("grouped 3x3 stride 2", 2, make_conv(8, 8, 3, 2, 1, 4, 5, 6), 170);
    check_conv("5x5 pad 2", 2, make_conv(2, 3, 5, 1, 2, 1, 6, 5), 180);
}

/* ---------- batch norm ---------- */

typedef struct {
    int n, c, hw;
    float *x, *gamma, *beta, *out, *mean, *var, *rstd, *r;
} BnCtx;

static double bn_loss(void *p)
{
    BnCtx *t = p;
    batchnorm_forward(t->out, t->mean, t->var, t->rstd, t->x, t->gamma, t->beta, t->n, t->c,
                      t->hw);
    return dot(t->r, t->out, (size_t)t->n * t->c * t->hw);
}

/* Channels with different means and spreads, so a statistic taken over the
 * wrong axis shows. */
static float *bn_input(int n, int c, int hw, uint64_t seed)
{
    float *x = rand_f((size_t)n * c * hw, seed, -1, 1);
    for (int b = 0; b < n; b++)
        for (int ch = 0; ch < c; ch++)
            for (int p = 0; p < hw; p++) {
                float *v = &x[((size_t)b * c + ch) * hw + p];
                *v = (float)(ch - 1) + (0.5f + 0.5f * ch) * *v;
            }
    return x;
}

static void test_batchnorm_forward(void **state)
{
    (void)state;
    const int n = 3, c = 4, hw = 10;
    const size_t nx = (size_t)n * c * hw;
    float *x = bn_input(n, c, hw, 200), *gamma = rand_f(c, 201, 0.5f, 1.5f);
    float *beta = rand_f(c, 202, -0.5f, 0.5f), *out = alloc_f(nx);
    float mean[4], var[4], rstd[4];
    batchnorm_forward(out, mean, var, rstd, x, gamma, beta, n, c, hw);

    double *want = calloc(nx, sizeof(double));
    double wm[4], wv[4], wr[4];
    for (int ch = 0; ch < c; ch++) {
        double s = 0, sq = 0;
        for (int b = 0; b < n; b++)
            for (int p = 0; p < hw; p++)
                s += x[(b * c + ch) * hw + p];
        wm[ch] = s / (n * hw);
        for (int b = 0; b < n; b++)
            for (int p = 0; p < hw; p++) {
                double d = x[(b * c + ch) * hw + p] - wm[ch];
                sq += d * d;
            }
        wv[ch] = sq / (n * hw);     /* biased, as the normalization uses */
        wr[ch] = 1.0 / sqrt(wv[ch] + 1e-5);
        for (int b = 0; b < n; b++)
            for (int p = 0; p < hw; p++) {
                size_t i = (size_t)(b * c + ch) * hw + p;
                want[i] = (x[i] - wm[ch]) * wr[ch] * gamma[ch] + beta[ch];
            }
    }
    /* computed in double and rounded once: float32 rounding, 2^-24 */
    assert_true(rel_err_d(out, want, nx) < 1e-6);
    assert_true(rel_err_d(mean, wm, c) < 1e-6);
    assert_true(rel_err_d(var, wv, c) < 1e-6);
    assert_true(rel_err_d(rstd, wr, c) < 1e-6);

    /* running statistics: momentum 0.1, unbiased variance (count 30) */
    float rm[4], rv[4];
    tu_fill_uniform(rm, c, 203, -1, 1);
    tu_fill_uniform(rv, c, 204, 0.5f, 2);
    double em[4], ev[4];
    for (int ch = 0; ch < c; ch++) {
        em[ch] = 0.9 * rm[ch] + 0.1 * wm[ch];
        ev[ch] = 0.9 * rv[ch] + 0.1 * wv[ch] * (n * hw) / (n * hw - 1.0);
    }
    batchnorm_running_update(rm, rv, mean, var, c, (long)n * hw);
    assert_true(rel_err_d(rm, em, c) < 1e-6);
    assert_true(rel_err_d(rv, ev, c) < 1e-6);

    /* evaluation: the running statistics, not the batch's */
    batchnorm_eval_forward(out, x, gamma, beta, rm, rv, n, c, hw);
    for (size_t i = 0; i < nx; i++) {
        int ch = (int)(i / hw % c);
        want[i] = (x[i] - (double)rm[ch]) / sqrt((double)rv[ch] + 1e-5) * gamma[ch] + beta[ch];
    }
    assert_true(rel_err_d(out, want, nx) < 1e-6);

    free(x); free(gamma); free(beta); free(out); free(want);
}

static void test_batchnorm_backward(void **state)
{
    (void)state;
    const int n = 3, c = 4, hw = 15;
    const size_t nx = (size_t)n * c * hw;
    float mean[4], var[4], rstd[4];
    BnCtx t = {n, c, hw, bn_input(n, c, hw, 300), rand_f(c, 301, 0.5f, 1.5f),
               rand_f(c, 302, -0.5f, 0.5f), alloc_f(nx), mean, var, rstd,
               rand_f(nx, 303, -1, 1)};
    bn_loss(&t);
    float *px = rand_f(nx, 304, -1, 1), *pg = rand_f(c, 305, -1, 1), *pb = rand_f(c, 306, -1, 1);
    float *dx = copy_f(px, nx), *dg = copy_f(pg, c), *db = copy_f(pb, c);
    batchnorm_backward(dx, dg, db, t.r, t.x, mean, rstd, t.gamma, n, c, hw);
    float *gx = accumulated(dx, px, nx), *gg = accumulated(dg, pg, c),
          *gb = accumulated(db, pb, c);
    /*
     * Batch norm is not linear in x: the batch statistics move with every
     * element, so all n*hw = 45 outputs of a channel change and the quotient
     * carries a truncation error O(eps^2 |L'''|). With unit-scale data and
     * eps = 1e-3, truncation is ~1e-6 and rounding sqrt(45) * 6e-8 / 2e-3
     * ~ 2e-4 of the O(1) gradient: 2e-3 is a 10x margin. gamma and beta enter
     * linearly, so the linear tolerance applies to them.
     */
    assert_true(fd_check(bn_loss, &t, t.x, nx, gx, 1e-3f, "batchnorm d input") < 2e-3);
    assert_true(fd_check(bn_loss, &t, t.gamma, c, gg, 1e-2f, "batchnorm d gamma") < LINEAR_TOL);
    assert_true(fd_check(bn_loss, &t, t.beta, c, gb, 1e-2f, "batchnorm d beta") < LINEAR_TOL);
    free(t.x); free(t.gamma); free(t.beta); free(t.out); free(t.r);
    free(px); free(pg); free(pb); free(dx); free(dg); free(db); free(gx); free(gg); free(gb);
}

/* ---------- relu ---------- */

typedef struct {
    size_t n;
    float *x, *out, *r;
} EltCtx;

static double relu_loss(void *p)
{
    EltCtx *t = p;
    relu_forward(t->out, t->x, t->n);
    return dot(t->r, t->out, t->n);
}

static void test_relu(void **state)
{
    (void)state;
    const size_t n = 300;
    EltCtx t = {n, rand_f(n, 400, -1, 1), alloc_f(n), rand_f(n, 401, -1, 1)};
    /* keep every input at least 0.05 from the kink, farther than the step,
     * so the function is linear over each difference */
    for (size_t i = 0; i < n; i++)
        t.x[i] += t.x[i] >= 0 ? 0.05f : -0.05f;
    relu_forward(t.out, t.x, n);
    for (size_t i = 0; i < n; i++)
        assert_true(t.out[i] == (t.x[i] > 0 ? t.x[i] : 0.0f));
    float *p = rand_f(n, 402, -1, 1), *dx = copy_f(p, n);
    relu_backward(dx, t.r, t.x, n);
    float *g = accumulated(dx, p, n);
    assert_true(fd_check(relu_loss, &t, t.x, n, g, 1e-2f, "relu d input") < LINEAR_TOL);
    free(t.x); free(t.out); free(t.r); free(p); free(dx); free(g);
}

/* ---------- shake ---------- */

typedef struct {
    int n;
    size_t chw;
    float *sc, *b1, *b2, *alpha, *out, *r;
} ShakeCtx;

static double shake_loss(void *p)
{
    ShakeCtx *t = p;
    const size_t sz = (size_t)t->n * t->chw;
    memcpy(t->out, t->sc, sz * sizeof(float));
    shake_forward(t->out, t->b1, t->b2, t->alpha, t->n, t->chw);
    return dot(t->r, t->out, sz);
}

static void test_shake(void **state)
{
    (void)state;
    const int n = 4;
    const size_t chw = 2 * 3 * 3, sz = n * chw;
    ShakeCtx t = {n, chw, rand_f(sz, 500, -1, 1), rand_f(sz, 501, -1, 1),
                  rand_f(sz, 502, -1, 1), rand_f(n, 503, 0, 1), alloc_f(sz),
                  rand_f(sz, 504, -1, 1)};
    float *beta = rand_f(n, 505, 0, 1);
    for (int i = 0; i < n; i++)
        assert_true(beta[i] != t.alpha[i]);

    /* forward: out = shortcut + alpha_i b1 + (1 - alpha_i) b2, per image.
     * Three float operations; 1e-6 allows a fused multiply-add. */
    shake_loss(&t);
    double *want = calloc(sz, sizeof(double));
    for (size_t j = 0; j < sz; j++) {
        double a = t.alpha[j / chw];
        want[j] = t.sc[j] + a * t.b1[j] + (1 - a) * t.b2[j];
    }
    assert_true(rel_err_d(t.out, want, sz) < 1e-6);

    /* beta != alpha: the backward is a choice, not a derivative, and must
     * be exactly beta*g and (1-beta)*g per image */
    float *db1 = alloc_f(sz), *db2 = alloc_f(sz);
    shake_backward(db1, db2, t.r, beta, n, chw);
    for (size_t j = 0; j < sz; j++) {
        const float bt = beta[j / chw];
        assert_true(db1[j] == bt * t.r[j]);
        assert_true(db2[j] == (1.0f - bt) * t.r[j]);
    }

    /* beta = alpha (Keep): now it is the gradient */
    float *p1 = rand_f(sz, 506, -1, 1), *p2 = rand_f(sz, 507, -1, 1);
    memcpy(db1, p1, sz * sizeof(float));
    memcpy(db2, p2, sz * sizeof(float));
    shake_backward(db1, db2, t.r, t.alpha, n, chw);
    float *g1 = accumulated(db1, p1, sz), *g2 = accumulated(db2, p2, sz);
    assert_true(fd_check(shake_loss, &t, t.b1, sz, g1, 1e-2f, "shake d b1 (Keep)") < LINEAR_TOL);
    assert_true(fd_check(shake_loss, &t, t.b2, sz, g2, 1e-2f, "shake d b2 (Keep)") < LINEAR_TOL);

    free(t.sc); free(t.b1); free(t.b2); free(t.alpha); free(t.out); free(t.r); free(beta);
    free(want); free(db1); free(db2); free(p1); free(p2); free(g1); free(g2);
}

/* ---------- shift and pool ---------- */

static void test_shift_pool_values(void **state)
{
    (void)state;
    /* a 3x4 plane holding 1..12, checked against the definitions by hand */
    float x[12], z[12], y[4];
    for (int i = 0; i < 12; i++)
        x[i] = (float)(i + 1);
    const float orig[12] = {0, 0, 0, 0, 0, 1, 2, 3, 0, 5, 6, 7};
    const float reimpl[12] = {6, 7, 8, 0, 10, 11, 12, 0, 0, 0, 0, 0};
    shift_forward(z, x, 1, 3, 4, SHIFT_ORIGINAL);
    assert_memory_equal(z, orig, sizeof orig);
    shift_forward(z, x, 1, 3, 4, SHIFT_REIMPL);
    assert_memory_equal(z, reimpl, sizeof reimpl);
    /* stride 2 on 3x4: (3-1)/2+1 = 2 rows, (4-1)/2+1 = 2 columns */
    const float pooled[4] = {1, 3, 9, 11};
    avgpool1_forward(y, x, 1, 3, 4, 2, 2, 2);
    assert_memory_equal(y, pooled, sizeof pooled);
    /* the shortcut's second path on the same plane, original shift */
    const float path2[4] = {0, 0, 0, 6};
    shift_forward(z, x, 1, 3, 4, SHIFT_ORIGINAL);
    avgpool1_forward(y, z, 1, 3, 4, 2, 2, 2);
    assert_memory_equal(y, path2, sizeof path2);
}

typedef struct {
    int nc, h, w, s, oh, ow;
    ShiftMode mode;
    float *x, *z, *y, *r;
} ShiftPoolCtx;

/* The resnet shortcut's second path: pool_s(shift(x)). */
static double shift_pool_loss(void *p)
{
    ShiftPoolCtx *t = p;
    shift_forward(t->z, t->x, t->nc, t->h, t->w, t->mode);
    avgpool1_forward(t->y, t->z, t->nc, t->h, t->w, t->s, t->oh, t->ow);
    return dot(t->r, t->y, (size_t)t->nc * t->oh * t->ow);
}

/* Its first path: pool_s(x). */
static double pool_loss(void *p)
{
    ShiftPoolCtx *t = p;
    avgpool1_forward(t->y, t->x, t->nc, t->h, t->w, t->s, t->oh, t->ow);
    return dot(t->r, t->y, (size_t)t->nc * t->oh * t->ow);
}

static void test_shift_pool_grad(void **state)
{
    (void)state;
    const int sizes[3][2] = {{5, 7}, {4, 6}, {3, 3}};
    uint64_t seed = 600;
    for (int m = 0; m < 2; m++)
        for (int s = 1; s <= 2; s++)
            for (int k = 0; k < 3; k++, seed += 10) {
                const int nc = 3, h = sizes[k][0], w = sizes[k][1];
                const int oh = (h - 1) / s + 1, ow = (w - 1) / s + 1;
                const size_t nx = (size_t)nc * h * w, ny = (size_t)nc * oh * ow;
                ShiftPoolCtx t = {nc, h, w, s, oh, ow, (ShiftMode)m, rand_f(nx, seed, -1, 1),
                                  alloc_f(nx), alloc_f(ny), rand_f(ny, seed + 1, -1, 1)};
                char what[96];
                printf("%s shift, stride %d, %dx%d\n", m == SHIFT_ORIGINAL ? "original" : "reimpl",
                       s, h, w);
                float *p = rand_f(nx, seed + 2, -1, 1), *dz = alloc_f(nx), *dx = copy_f(p, nx);
                avgpool1_backward(dz, t.r, nc, h, w, s, oh, ow);
                shift_backward(dx, dz, nc, h, w, t.mode);
                float *g = accumulated(dx, p, nx);
                snprintf(what, sizeof what, "pool(shift(x)) d input");
                assert_true(fd_check(shift_pool_loss, &t, t.x, nx, g, 1e-2f, what) < LINEAR_TOL);
                free(g);
                memcpy(dx, p, nx * sizeof(float));
                avgpool1_backward(dx, t.r, nc, h, w, s, oh, ow);
                g = accumulated(dx, p, nx);
                snprintf(what, sizeof what, "pool(x) d input");
                assert_true(fd_check(pool_loss, &t, t.x, nx, g, 1e-2f, what) < LINEAR_TOL);
                free(g); free(p); free(dz); free(dx);
                free(t.x); free(t.z); free(t.y); free(t.r);
            }
}

/* ---------- concat, global pool, fc ---------- */

typedef struct {
    int n, ca, cb, hw;
    float *a, *b, *out, *r;
} CatCtx;

static double cat_loss(void *p)
{
    CatCtx *t = p;
    concat_forward(t->out, t->a, t->b, t->n, t->ca, t->cb, t->hw);
    return dot(t->r, t->out, (size_t)t->n * (t->ca + t->cb) * t->hw);
}

static void test_concat(void **state)
{
    (void)state;
    const int n = 2, ca = 3, cb = 2, hw = 4;
    const size_t na = (size_t)n * ca * hw, nb = (size_t)n * cb * hw, ny = na + nb;
    CatCtx t = {n, ca, cb, hw, rand_f(na, 700, -1, 1), rand_f(nb, 701, -1, 1), alloc_f(ny),
                rand_f(ny, 702, -1, 1)};
    cat_loss(&t);
    for (int i = 0; i < n; i++)
        for (int c = 0; c < ca + cb; c++)
            for (int p = 0; p < hw; p++) {
                float want = c < ca ? t.a[(i * ca + c) * hw + p] : t.b[(i * cb + c - ca) * hw + p];
                assert_true(t.out[(i * (ca + cb) + c) * hw + p] == want);
            }
    float *pa = rand_f(na, 703, -1, 1), *pb = rand_f(nb, 704, -1, 1);
    float *da = copy_f(pa, na), *db = copy_f(pb, nb);
    concat_backward(da, db, t.r, n, ca, cb, hw);
    float *ga = accumulated(da, pa, na), *gb = accumulated(db, pb, nb);
    assert_true(fd_check(cat_loss, &t, t.a, na, ga, 1e-2f, "concat d a") < LINEAR_TOL);
    assert_true(fd_check(cat_loss, &t, t.b, nb, gb, 1e-2f, "concat d b") < LINEAR_TOL);
    free(t.a); free(t.b); free(t.out); free(t.r);
    free(pa); free(pb); free(da); free(db); free(ga); free(gb);
}

typedef struct {
    int n, c, hw;
    float *x, *out, *r;
} GapCtx;

static double gap_loss(void *p)
{
    GapCtx *t = p;
    global_avgpool_forward(t->out, t->x, t->n, t->c, t->hw);
    return dot(t->r, t->out, (size_t)t->n * t->c);
}

static void test_global_avgpool(void **state)
{
    (void)state;
    const int n = 3, c = 4, hw = 6;
    const size_t nx = (size_t)n * c * hw, ny = (size_t)n * c;
    GapCtx t = {n, c, hw, rand_f(nx, 800, -1, 1), alloc_f(ny), rand_f(ny, 801, -1, 1)};
    gap_loss(&t);
    double want[12];
    for (size_t i = 0; i < ny; i++) {
        want[i] = 0;
        for (int p = 0; p < hw; p++)
            want[i] += t.x[i * hw + p] / (double)hw;
    }
    /* a double sum rounded once */
    assert_true(rel_err_d(t.out, want, ny) < 1e-6);
    float *p = rand_f(nx, 802, -1, 1), *dx = copy_f(p, nx);
    global_avgpool_backward(dx, t.r, n, c, hw);
    float *g = accumulated(dx, p, nx);
    assert_true(fd_check(gap_loss, &t, t.x, nx, g, 1e-2f, "global avgpool d input") < LINEAR_TOL);
    free(t.x); free(t.out); free(t.r); free(p); free(dx); free(g);
}

typedef struct {
    int n, ic, oc;
    float *x, *w, *b, *out, *r;
} FcCtx;

static double fc_loss(void *p)
{
    FcCtx *t = p;
    fc_forward(t->out, t->x, t->w, t->b, t->n, t->ic, t->oc);
    return dot(t->r, t->out, (size_t)t->n * t->oc);
}

static void test_fc(void **state)
{
    (void)state;
    const int n = 3, ic = 7, oc = 5;
    const size_t nx = (size_t)n * ic, nw = (size_t)oc * ic, ny = (size_t)n * oc;
    FcCtx t = {n, ic, oc, rand_f(nx, 900, -1, 1), rand_f(nw, 901, -1, 1), rand_f(oc, 902, -1, 1),
               alloc_f(ny), rand_f(ny, 903, -1, 1)};
    fc_loss(&t);
    double want[15];
    for (int b = 0; b < n; b++)
        for (int o = 0; o < oc; o++) {
            want[b * oc + o] = t.b[o];
            for (int i = 0; i < ic; i++)
                want[b * oc + o] += (double)t.x[b * ic + i] * t.w[o * ic + i];
        }
    assert_true(rel_err_d(t.out, want, ny) < 1e-6);
    float *px = rand_f(nx, 904, -1, 1), *pw = rand_f(nw, 905, -1, 1), *pb = rand_f(oc, 906, -1, 1);
    float *dx = copy_f(px, nx), *dw = copy_f(pw, nw), *db = copy_f(pb, oc);
    fc_backward(dx, dw, db, t.r, t.x, t.w, n, ic, oc);
    float *gx = accumulated(dx, px, nx), *gw = accumulated(dw, pw, nw),
          *gb = accumulated(db, pb, oc);
    assert_true(fd_check(fc_loss, &t, t.x, nx, gx, 1e-2f, "fc d input") < LINEAR_TOL);
    assert_true(fd_check(fc_loss, &t, t.w, nw, gw, 1e-2f, "fc d weight") < LINEAR_TOL);
    assert_true(fd_check(fc_loss, &t, t.b, oc, gb, 1e-2f, "fc d bias") < LINEAR_TOL);
    free(t.x); free(t.w); free(t.b); free(t.out); free(t.r);
    free(px); free(pw); free(pb); free(dx); free(dw); free(db); free(gx); free(gw); free(gb);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_conv),
        cmocka_unit_test(test_batchnorm_forward),
        cmocka_unit_test(test_batchnorm_backward),
        cmocka_unit_test(test_relu),
        cmocka_unit_test(test_shake),
        cmocka_unit_test(test_shift_pool_values),
        cmocka_unit_test(test_shift_pool_grad),
        cmocka_unit_test(test_concat),
        cmocka_unit_test(test_global_avgpool),
        cmocka_unit_test(test_fc),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
