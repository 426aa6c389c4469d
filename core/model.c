/*
 * Lays out the Shake-Shake ResNet and Shake ResNeXt: every conv, batch norm
 * and the classifier get offsets in the params/state arenas and a checkpoint
 * name, in the order PyTorch's state_dict would list the same modules.
 */
#include "model.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "philox.h"

typedef struct {
    Model *m;
    int cap;
} Layout;

static TensorInfo *add_tensor(Layout *L, const char *name, TensorArena arena,
                              TensorInit init, int ndim, const int *shape)
{
    Model *m = L->m;
    if (m->ntensors == L->cap) {
        L->cap = L->cap ? 2 * L->cap : 64;
        m->tensors = realloc(m->tensors, (size_t)L->cap * sizeof *m->tensors);
    }
    TensorInfo *t = &m->tensors[m->ntensors++];
    memset(t, 0, sizeof *t);
    snprintf(t->name, sizeof t->name, "%s", name);
    t->ndim = ndim;
    t->count = 1;
    for (int i = 0; i < ndim; i++) {
        t->shape[i] = shape[i];
        t->count *= (size_t)shape[i];
    }
    t->arena = arena;
    t->init = init;
    size_t *top = arena == T_PARAM ? &m->nparams : &m->nstate;
    t->offset = *top;
    *top += t->count;
    return t;
}

static ConvDesc add_conv(Layout *L, const char *name, int cin, int cout, int k,
                         int stride, int groups, int ih, int iw)
{
    ConvDesc c = {0};
    c.cin = cin;
    c.cout = cout;
    c.k = k;
    c.stride = stride;
    c.pad = k / 2;
    c.groups = groups;
    c.ih = ih;
    c.iw = iw;
    c.oh = (ih + 2 * c.pad - k) / stride + 1;
    c.ow = (iw + 2 * c.pad - k) / stride + 1;
    char full[128];
    snprintf(full, sizeof full, "%s.weight", name);
    int shape[4] = {cout, cin / groups, k, k};
    TensorInfo *t = add_tensor(L, full, T_PARAM, INIT_CONV, 4, shape);
    t->std = sqrtf(2.0f / (float)(k * k * cout));
    c.w = t->offset;
    return c;
}

static BnDesc add_bn(Layout *L, const char *name, int c)
{
    BnDesc b = {0};
    char full[128];
    b.c = c;
    snprintf(full, sizeof full, "%s.weight", name);
    b.gamma = add_tensor(L, full, T_PARAM, INIT_ONE, 1, &c)->offset;
    snprintf(full, sizeof full, "%s.bias", name);
    b.beta = add_tensor(L, full, T_PARAM, INIT_ZERO, 1, &c)->offset;
    snprintf(full, sizeof full, "%s.running_mean", name);
    b.mean = add_tensor(L, full, T_STATE, INIT_ZERO, 1, &c)->offset;
    snprintf(full, sizeof full, "%s.running_var", name);
    b.var = add_tensor(L, full, T_STATE, INIT_ONE, 1, &c)->offset;
    return b;
}

static void add_fc(Layout *L, int in, int classes)
{
    Model *m = L->m;
    int wshape[2] = {classes, in};
    TensorInfo *w = add_tensor(L, "fc.weight", T_PARAM, INIT_FC, 2, wshape);
    w->fan_in = in;
    m->fc_w = w->offset;
    m->fc_b = add_tensor(L, "fc.bias", T_PARAM, INIT_ZERO, 1, &classes)->offset;
    m->fc_in = in;
}

static void build_resnet(Layout *L, int n)
{
    Model *m = L->m;
    const ModelSpec *s = &m->spec;
    int h = s->in_h, w = s->in_w, cin = 16;
    m->stem_conv = add_conv(L, "stem.conv", s->in_c, 16, 3, 1, 1, h, w);
    m->stem_bn = add_bn(L, "stem.bn", 16);
    m->stem_relu = 0;
    int widths[3] = {s->width, 2 * s->width, 4 * s->width};
    int strides[3] = {1, 2, 2};
    for (int st = 0; st < 3; st++) {
        for (int b = 0; b < n; b++) {
            BlockDesc *B = &m->blocks[st * n + b];
            char pre[64], name[96];
            snprintf(pre, sizeof pre, "stage%d.block%d", st + 1, b);
            B->stage = st + 1;
            B->index = b;
            B->cin = cin;
            B->cout = widths[st];
            B->stride = b == 0 ? strides[st] : 1;
            B->ih = h;
            B->iw = w;
            B->nconv = 2;
            for (int k = 0; k < 2; k++) {
                snprintf(name, sizeof name, "%s.branch%d.conv1", pre, k + 1);
                B->conv[k][0] = add_conv(L, name, cin, B->cout, 3, B->stride, 1, h, w);
                snprintf(name, sizeof name, "%s.branch%d.bn1", pre, k + 1);
                B->bn[k][0] = add_bn(L, name, B->cout);
                ConvDesc *c0 = &B->conv[k][0];
                snprintf(name, sizeof name, "%s.branch%d.conv2", pre, k + 1);
                B->conv[k][1] = add_conv(L, name, B->cout, B->cout, 3, 1, 1, c0->oh, c0->ow);
                snprintf(name, sizeof name, "%s.branch%d.bn2", pre, k + 1);
                B->bn[k][1] = add_bn(L, name, B->cout);
            }
            B->oh = B->conv[0][1].oh;
            B->ow = B->conv[0][1].ow;
            B->proj = cin != B->cout;
            if (B->proj) {
                B->nsc = 2;
                for (int p = 0; p < 2; p++) {
                    snprintf(name, sizeof name, "%s.shortcut.conv%d", pre, p + 1);
                    /* 1x1 on the pooled input: its input size is the block's output size */
                    B->sc[p] = add_conv(L, name, cin, B->cout / 2, 1, 1, 1, B->oh, B->ow);
                }
                snprintf(name, sizeof name, "%s.shortcut.bn", pre);
                B->sc_bn = add_bn(L, name, B->cout);
            }
            cin = B->cout;
            h = B->oh;
            w = B->ow;
        }
    }
    m->feat_h = h;
    m->feat_w = w;
    add_fc(L, cin, s->classes);
}

static void build_resnext(Layout *L, int n)
{
    Model *m = L->m;
    const ModelSpec *s = &m->spec;
    int h = s->in_h, w = s->in_w, cin = 64;
    m->stem_conv = add_conv(L, "stem.conv", s->in_c, 64, 3, 1, 1, h, w);
    m->stem_bn = add_bn(L, "stem.bn", 64);
    m->stem_relu = 1;
    int bases[3] = {64, 128, 256};
    int strides[3] = {1, 2, 2};
    for (int st = 0; st < 3; st++) {
        int inner = s->groups * (bases[st] * s->width / 64);
        for (int b = 0; b < n; b++) {
            BlockDesc *B = &m->blocks[st * n + b];
            char pre[64], name[96];
            snprintf(pre, sizeof pre, "stage%d.block%d", st + 1, b);
            B->stage = st + 1;
            B->index = b;
            B->cin = cin;
            B->cout = 4 * bases[st];
            B->stride = b == 0 ? strides[st] : 1;
            B->ih = h;
            B->iw = w;
            B->nconv = 3;
            for (int k = 0; k < 2; k++) {
                snprintf(name, sizeof name, "%s.branch%d.conv1", pre, k + 1);
                B->conv[k][0] = add_conv(L, name, cin, inner, 1, 1, 1, h, w);
                snprintf(name, sizeof name, "%s.branch%d.bn1", pre, k + 1);
                B->bn[k][0] = add_bn(L, name, inner);
                snprintf(name, sizeof name, "%s.branch%d.conv2", pre, k + 1);
                B->conv[k][1] = add_conv(L, name, inner, inner, 3, B->stride, s->groups, h, w);
                snprintf(name, sizeof name, "%s.branch%d.bn2", pre, k + 1);
                B->bn[k][1] = add_bn(L, name, inner);
                ConvDesc *c1 = &B->conv[k][1];
                snprintf(name, sizeof name, "%s.branch%d.conv3", pre, k + 1);
                B->conv[k][2] = add_conv(L, name, inner, B->cout, 1, 1, 1, c1->oh, c1->ow);
                snprintf(name, sizeof name, "%s.branch%d.bn3", pre, k + 1);
                B->bn[k][2] = add_bn(L, name, B->cout);
            }
            B->oh = B->conv[0][2].oh;
            B->ow = B->conv[0][2].ow;
            B->proj = cin != B->cout || B->stride != 1;
            if (B->proj) {
                B->nsc = 1;
                snprintf(name, sizeof name, "%s.shortcut.conv", pre);
                B->sc[0] = add_conv(L, name, cin, B->cout, 1, B->stride, 1, h, w);
                snprintf(name, sizeof name, "%s.shortcut.bn", pre);
                B->sc_bn = add_bn(L, name, B->cout);
            }
            cin = B->cout;
            h = B->oh;
            w = B->ow;
        }
    }
    m->feat_h = h;
    m->feat_w = w;
    add_fc(L, cin, s->classes);
}

int model_build(Model *m, const ModelSpec *spec, Err *e)
{
    memset(m, 0, sizeof *m);
    m->spec = *spec;
    const ModelSpec *s = spec;
    if (s->classes < 2)
        return err_set(e, "classes must be at least 2, got %d", s->classes);
    if (s->in_c < 1 || s->in_h < 1 || s->in_w < 1)
        return err_set(e, "bad input shape %dx%dx%d", s->in_c, s->in_h, s->in_w);
    int n;
    if (s->arch == ARCH_RESNET) {
        if (s->depth < 8 || (s->depth - 2) % 6 != 0)
            return err_set(e, "depth %d is not 6n+2 (n >= 1) as a Shake-Shake ResNet "
                           "needs (26 = 6*4+2 is the paper's)", s->depth);
        if (s->width < 2 || s->width % 2 != 0)
            return err_set(e, "width %d must be even and at least 2 (the shortcut "
                           "splits each stage's width in two)", s->width);
        n = (s->depth - 2) / 6;
    } else if (s->arch == ARCH_RESNEXT) {
        if (s->depth < 11 || (s->depth - 2) % 9 != 0)
            return err_set(e, "depth %d is not 9n+2 (n >= 1) as a Shake ResNeXt "
                           "needs (29 = 9*3+2 is the paper's)", s->depth);
        if (s->groups < 1)
            return err_set(e, "groups must be at least 1, got %d", s->groups);
        if (s->width < 1 || 64 * s->width / 64 < 1)
            return err_set(e, "width must be at least 1, got %d", s->width);
        n = (s->depth - 2) / 9;
    } else {
        return err_set(e, "unknown architecture %d", (int)s->arch);
    }
    m->nblocks = 3 * n;
    m->blocks = calloc((size_t)m->nblocks, sizeof *m->blocks);
    if (!m->blocks)
        return err_set(e, "out of memory laying out the model");
    Layout L = {m, 0};
    if (s->arch == ARCH_RESNET)
        build_resnet(&L, n);
    else
        build_resnext(&L, n);
    if (!m->tensors) {
        model_free(m);
        return err_set(e, "out of memory laying out the model");
    }
    return 0;
}

void model_free(Model *m)
{
    free(m->blocks);
    free(m->tensors);
    memset(m, 0, sizeof *m);
}

void model_init(const Model *m, uint64_t seed, float *params, float *state)
{
    for (int ti = 0; ti < m->ntensors; ti++) {
        const TensorInfo *t = &m->tensors[ti];
        float *p = (t->arena == T_PARAM ? params : state) + t->offset;
        for (size_t i = 0; i < t->count; i++) {
            switch (t->init) {
            case INIT_ZERO:
                p[i] = 0.0f;
                break;
            case INIT_ONE:
                p[i] = 1.0f;
                break;
            case INIT_FC: {
                float u = rng_uniform(seed, RNG_INIT, (uint32_t)ti, (uint32_t)i, 0);
                float bound = 1.0f / sqrtf((float)t->fan_in);
                p[i] = (2.0f * u - 1.0f) * bound;
                break;
            }
            case INIT_CONV: {
                /* Box-Muller over one Philox draw per pair of elements */
                Philox4 r = philox4x32(seed, RNG_INIT, (uint32_t)ti, (uint32_t)(i / 2), 0);
                double u1 = 1.0 - (double)(r.v[0] >> 8) / 16777216.0; /* (0, 1] */
                double u2 = (double)(r.v[1] >> 8) / 16777216.0;
                double rad = sqrt(-2.0 * log(u1));
                double z = (i % 2 == 0) ? rad * cos(2.0 * M_PI * u2) : rad * sin(2.0 * M_PI * u2);
                p[i] = (float)(z * t->std);
                break;
            }
            }
        }
    }
}

void model_describe(const Model *m, char *buf, size_t len)
{
    const ModelSpec *s = &m->spec;
    if (s->arch == ARCH_RESNET)
        snprintf(buf, len, "Shake-Shake ResNet %d 2x%dd", s->depth, s->width);
    else
        snprintf(buf, len, "Shake ResNeXt %d 2x%dx%dd", s->depth, s->groups, s->width);
}

static double conv_macs(const ConvDesc *c)
{
    return (double)c->oh * c->ow * c->cout * (c->cin / c->groups) * c->k * c->k;
}

double model_macs(const Model *m)
{
    double t = conv_macs(&m->stem_conv);
    for (int b = 0; b < m->nblocks; b++) {
        const BlockDesc *B = &m->blocks[b];
        for (int k = 0; k < 2; k++)
            for (int j = 0; j < B->nconv; j++)
                t += conv_macs(&B->conv[k][j]);
        for (int j = 0; B->proj && j < B->nsc; j++)
            t += conv_macs(&B->sc[j]);
    }
    return t + (double)m->fc_in * m->spec.classes;
}
