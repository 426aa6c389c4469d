/*
 * The `cpu` backend: oneDNN (2.6) convolutions and batch norms on blocked
 * activations, nChw16c or nChw8c (see channel_block), with the shake
 * combination, the shortcut's shift and the head written here. It computes
 * the same function as `ref`.
 *
 * What makes it fast and small:
 * - The two branches of a block run as one network of twice the width: the
 *   first conv of both branches is one conv with 2x the output channels (they
 *   share their input), later convs are grouped convs with twice the groups,
 *   and each batch norm covers both branches' channels (BN is per channel, so
 *   this is exact). Fewer, larger primitives; the first conv's backward-data
 *   pass sums both branches' input gradients for free.
 * - The Shake-Shake ResNet shortcut (pool, shift, two 1x1 convs, concat) is a
 *   gather into 2*cin channels followed by one grouped 1x1 conv (2 groups).
 * - Stored for backward, per block: the block input after its ReLU and the
 *   conv outputs (the batch-norm inputs). Batch-norm outputs are recomputed in
 *   the backward pass from the saved batch statistics; ReLU masks come from
 *   oneDNN's bit-mask workspace or from the stored post-ReLU tensors.
 *   Everything else lives in four scratch buffers shared by all blocks.
 * - Weights are packed (canonical arena -> oneDNN's blocked format) right
 *   before each primitive runs, into one shared buffer; the canonical arenas
 *   stay the master copy, so load/store/update need no conversion.
 * - One user-managed scratchpad serves every primitive.
 * - 3x3 stride-1 convs over both branches' input use Winograd where oneDNN
 *   offers it within a memory budget (see conv_plan).
 *
 * Padded channels (C not a multiple of the channel block) are kept zero by
 * every kernel here, as oneDNN requires of blocked inputs.
 */
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <oneapi/dnnl/dnnl.h>
#include <oneapi/dnnl/dnnl_debug.h>

#include "backend.h"
#include "optim.h"

#define DN(call)                                                                  \
    do {                                                                          \
        dnnl_status_t st_ = (call);                                               \
        if (st_ != dnnl_success)                                                  \
            return err_set(e, "%s:%d: oneDNN %s: %s", __FILE__, __LINE__, #call, \
                           dnnl_status2str(st_));                                 \
    } while (0)

#define MAX_PLANS 4
#define MAX_SEGS 2

typedef struct {
    size_t off, count;
} Seg;

/* A convolution over possibly concatenated branches. */
typedef struct {
    int cin, cout, k, stride, groups, ih, iw, oh, ow;
    int src_plain;              /* stem: the input batch, plain NCHW */
    int no_bwd_data;            /* stem: no gradient to the images */
    int nseg;
    Seg seg[MAX_SEGS];          /* params pieces, concatenated on out channels */
    dnnl_memory_desc_t w_plain; /* oihw or goihw */
    /* Expanded: oneDNN's fast convs want channel counts (per group) that
     * are multiples of the channel block and otherwise fall back to its
     * reference code, far slower than doing some zero work. An expanded
     * conv runs as one dense conv over the padded channel counts (the
     * blocked layout already holds the padding as zeros), its weights
     * block-diagonal (one block per original group), zero elsewhere. */
    int expand;
    int orig_groups;            /* groups of the canonical weights */
    int cin_p, cout_p;          /* channel counts oneDNN sees */
} Conv;

/* A batch norm over possibly concatenated branches (per-channel, so exact). */
typedef struct {
    int c, h, w, cpad;
    int relu;                   /* fused ReLU, mask kept in ws */
    int nseg;
    size_t gamma[MAX_SEGS], beta[MAX_SEGS], mean[MAX_SEGS], var[MAX_SEGS];
    float *scale, *shift;       /* (cpad) packed gamma, beta; zero padded */
    float *bmean, *bvar;        /* (cpad) batch statistics of the last training forward */
    float *rmean, *rvar;        /* (cpad) packed running statistics */
    float *dscale, *dshift;     /* (cpad) */
    float *as, *at;             /* (cpad) the affine map of the last training forward */
    void *ws;                   /* ReLU bit mask of the last training forward */
    size_t ws_size;
} Bn;

typedef struct {
    dnnl_primitive_desc_t fwd_pd, bwdd_pd, bwdw_pd, re_fwd_pd, re_bwd_pd, re_dw_pd;
    dnnl_primitive_t fwd, bwdd, bwdw, re_fwd, re_bwd, re_dw;
} ConvPlan;

typedef struct {
    dnnl_primitive_desc_t train_pd, infer_pd, bwd_pd;
    dnnl_primitive_t train, infer, bwd;
} BnPlan;

/* Every primitive for one batch size. */
typedef struct {
    int n;
    uint64_t used;
    ConvPlan *conv;
    BnPlan *bn;
} Plan;

typedef struct {
    const BlockDesc *d;
    int nconv;
    int conv[3], bn[3], sc_conv, sc_bn; /* indices; -1 for none */
    int ch[3];                  /* channels of the concatenated conv j output */
    float *in;                  /* (N, cin, ih, iw): relu(x) (resnet) or x (resnext) */
    float *c[3];                /* (N, ch[j], oh, ow): conv outputs */
} Block;

struct Backend {
    const Model *m;
    int max_n;
    int cb;                     /* channels a block of the layout holds: 16 or 8 */
    dnnl_engine_t eng;
    dnnl_stream_t stream;
    dnnl_primitive_attr_t attr;
    float *params, *grads, *mom, *state;
    int nconv, nbn;
    Conv conv[1 + 3 * 2 * 64];
    Bn bn[1 + 3 * 2 * 64];
    Block *blk;
    int stem_conv, stem_bn;
    float *xin;                 /* (N, in_c, in_h, in_w) plain copy of the batch */
    float *xblk;                /* the batch blocked, for a blocked stem (else NULL) */
    int quiet;                  /* probing: no warning for reference code */
    int warned;                 /* the warning for reference code was given */
    float *head_in;             /* (N, C, fh, fw) last block's output after ReLU */
    float *feat, *dfeat;        /* (N, C) plain */
    /* Scratch. Y (the size of the largest block input or output) holds a
     * block's pre-activation output in the forward pass and its gradient in
     * the backward pass. A and G (the size of the largest concatenated
     * branch tensor) hold the branches' activations and gradients and the
     * shortcut's. */
    float *Y, *A, *G;
    float *wplain, *dwplain;    /* one conv's weights, canonical */
    float *wblk;                /* one conv's weights, packed */
    size_t wmax;                /* floats of the largest conv's canonical weights */
    size_t wblk_size;
    void *scratchpad;
    size_t scratchpad_size;
    size_t act_bytes;           /* the largest activation at the largest batch */
    Plan plans[MAX_PLANS];
    uint64_t clock;
    Plan *cur;                  /* plan of the last forward */
};

/*
 * The channel block of the activations' layout: 16 (nChw16c) where oneDNN
 * runs AVX-512 code, 8 (nChw8c) elsewhere. oneDNN 2.6's AVX2 and SSE4.1
 * convolutions and batch norms take nChw8c only; given nChw16c they fall
 * back to its reference code, some 100x slower. SHAKE_CPU_BLOCK=8 or 16
 * chooses (the tests run both on any machine). 0 and *e set for a bad value.
 */
static int channel_block(Err *e)
{
    const char *v = getenv("SHAKE_CPU_BLOCK");
    if (v && *v) {
        if (strcmp(v, "8") && strcmp(v, "16")) {
            err_set(e, "SHAKE_CPU_BLOCK=%s: the channel block is 8 or 16", v);
            return 0;
        }
        return atoi(v);
    }
    const dnnl_cpu_isa_t isa = dnnl_get_effective_cpu_isa();
    return (isa & dnnl_cpu_isa_avx512_core) == dnnl_cpu_isa_avx512_core ? 16 : 8;
}

/* c rounded up to whole channel blocks of cb */
static inline int cpad_of(int c, int cb) { return (c + cb - 1) / cb * cb; }

/* Offset of (n, c, p) in a blocked tensor (channel block cb, a power of 2)
 * with cpad channels, hw positions. */
static inline size_t bidx(int n, int c, int p, int cpad, int hw, int cb)
{
    const int lg = __builtin_ctz((unsigned)cb);
    return (((size_t)(n * (cpad >> lg) + (c >> lg)) * hw + p) << lg) + (size_t)(c & (cb - 1));
}

static size_t act_floats(const Backend *b, int n, int c, int h, int w)
{
    return (size_t)n * cpad_of(c, b->cb) * h * w;
}

static int act_md(const Backend *b, dnnl_memory_desc_t *md, int n, int c, int h, int w,
                  int plain, Err *e)
{
    dnnl_dims_t d = {n, c, h, w};
    DN(dnnl_memory_desc_init_by_tag(md, 4, d, dnnl_f32,
                                    plain ? dnnl_nchw : b->cb == 16 ? dnnl_nChw16c : dnnl_nChw8c));
    return 0;
}

/* ---- Execution ---------------------------------------------------------- */

typedef struct {
    int arg;
    void *ptr;
} Arg;

static int run_prim(Backend *b, const_dnnl_primitive_desc_t pd, dnnl_primitive_t p,
                    const Arg *args, int nargs, Err *e)
{
    dnnl_exec_arg_t ea[12];
    int k = 0, rc = 0;
    for (int i = 0; i < nargs; i++) {
        const dnnl_memory_desc_t *md = dnnl_primitive_desc_query_md(pd, dnnl_query_exec_arg_md,
                                                                    args[i].arg);
        dnnl_status_t s = dnnl_memory_create(&ea[k].memory, md, b->eng, args[i].ptr);
        if (s != dnnl_success) {
            rc = err_set(e, "%s:%d: oneDNN memory for argument %d: %s", __FILE__, __LINE__,
                         args[i].arg, dnnl_status2str(s));
            goto done;
        }
        ea[k++].arg = args[i].arg;
    }
    const dnnl_memory_desc_t *smd = dnnl_primitive_desc_query_md(pd, dnnl_query_scratchpad_md, 0);
    if (smd && dnnl_memory_desc_get_size(smd) > 0) {
        dnnl_status_t s = dnnl_memory_create(&ea[k].memory, smd, b->eng, b->scratchpad);
        if (s != dnnl_success) {
            rc = err_set(e, "%s:%d: oneDNN scratchpad: %s", __FILE__, __LINE__,
                         dnnl_status2str(s));
            goto done;
        }
        ea[k++].arg = DNNL_ARG_SCRATCHPAD;
    }
    dnnl_status_t s = dnnl_primitive_execute(p, b->stream, k, ea);
    if (s == dnnl_success)
        s = dnnl_stream_wait(b->stream);
    if (s != dnnl_success)
        rc = err_set(e, "%s:%d: oneDNN execute: %s", __FILE__, __LINE__, dnnl_status2str(s));
done:
    for (int i = 0; i < k; i++)
        dnnl_memory_destroy(ea[i].memory);
    return rc;
}

/* ---- Plans: every primitive for one batch size -------------------------- */

static void need(size_t *have, size_t want)
{
    if (want > *have)
        *have = want;
}

/* The implementation's name if oneDNN took its reference code for pd (far
 * slower than its JIT code: a layout or shape its fast code does not
 * take), else NULL. */
static const char *impl_ref(const_dnnl_primitive_desc_t pd)
{
    const char *impl = NULL;
    if (!pd || dnnl_primitive_desc_query(pd, dnnl_query_impl_info_str, 0, &impl) != dnnl_success ||
        !impl || strncmp(impl, "ref", 3) != 0)
        return NULL;
    return impl;
}

static int make_pd(Backend *b, dnnl_primitive_desc_t *pd, const_dnnl_op_desc_t op,
                   const_dnnl_primitive_desc_t hint, size_t *spad, Err *e)
{
    DN(dnnl_primitive_desc_create(pd, op, b->attr, b->eng, hint));
    const char *ref = b->quiet || b->warned ? NULL : impl_ref(*pd);
    if (ref) {
        dnnl_primitive_kind_t kind = dnnl_undefined_primitive;
        dnnl_primitive_desc_query(*pd, dnnl_query_primitive_kind, 0, &kind);
        fprintf(stderr, "cpu backend: warning: oneDNN runs its reference code (%s) for a "
                        "%s on nChw%dc; training will be far slower than it should\n",
                ref, dnnl_prim_kind2str(kind), b->cb);
        b->warned = 1;
    }
    need(spad, dnnl_memory_desc_get_size(
                   dnnl_primitive_desc_query_md(*pd, dnnl_query_scratchpad_md, 0)));
    return 0;
}

static int make_reorder(Backend *b, dnnl_primitive_desc_t *pd, dnnl_primitive_t *p,
                        const dnnl_memory_desc_t *from, const dnnl_memory_desc_t *to,
                        size_t *spad, Err *e)
{
    DN(dnnl_reorder_primitive_desc_create(pd, from, b->eng, to, b->eng, b->attr));
    need(spad, dnnl_memory_desc_get_size(
                   dnnl_primitive_desc_query_md(*pd, dnnl_query_scratchpad_md, 0)));
    DN(dnnl_primitive_create(p, *pd));
    return 0;
}

static void conv_plan_free(ConvPlan *c)
{
    dnnl_primitive_t prims[] = {c->fwd, c->bwdd, c->bwdw, c->re_fwd, c->re_bwd, c->re_dw};
    dnnl_primitive_desc_t pds[] = {c->fwd_pd, c->bwdd_pd, c->bwdw_pd,
                                   c->re_fwd_pd, c->re_bwd_pd, c->re_dw_pd};
    for (int k = 0; k < 6; k++) {
        if (prims[k])
            dnnl_primitive_destroy(prims[k]);
        if (pds[k])
            dnnl_primitive_desc_destroy(pds[k]);
    }
    memset(c, 0, sizeof *c);
}

static int conv_plan_alg(Backend *b, ConvPlan *cp, const Conv *c, int n, dnnl_alg_kind_t alg,
                         size_t *spad, size_t *wsize, Err *e)
{
    dnnl_memory_desc_t src, dst, wany;
    if (act_md(b, &src, n, c->cin_p, c->ih, c->iw, c->src_plain, e) ||
        act_md(b, &dst, n, c->cout_p, c->oh, c->ow, 0, e))
        return -1;
    if (c->groups > 1) {
        dnnl_dims_t wd = {c->groups, c->cout_p / c->groups, c->cin_p / c->groups, c->k, c->k};
        DN(dnnl_memory_desc_init_by_tag(&wany, 5, wd, dnnl_f32, dnnl_format_tag_any));
    } else {
        dnnl_dims_t wd = {c->cout_p, c->cin_p, c->k, c->k};
        DN(dnnl_memory_desc_init_by_tag(&wany, 4, wd, dnnl_f32, dnnl_format_tag_any));
    }
    int pad = c->k / 2;
    int pr_h = (c->oh - 1) * c->stride + c->k - c->ih - pad;
    int pr_w = (c->ow - 1) * c->stride + c->k - c->iw - pad;
    dnnl_dims_t strides = {c->stride, c->stride}, pl = {pad, pad};
    dnnl_dims_t pr = {pr_h > 0 ? pr_h : 0, pr_w > 0 ? pr_w : 0};
    dnnl_convolution_desc_t fd, bd, wd;
    DN(dnnl_convolution_forward_desc_init(&fd, dnnl_forward_training, alg, &src, &wany, NULL,
                                          &dst, strides, pl, pr));
    if (make_pd(b, &cp->fwd_pd, &fd, NULL, spad, e))
        return -1;
    DN(dnnl_primitive_create(&cp->fwd, cp->fwd_pd));
    const dnnl_memory_desc_t *wf = dnnl_primitive_desc_query_md(cp->fwd_pd, dnnl_query_weights_md, 0);
    need(wsize, dnnl_memory_desc_get_size(wf));
    if (make_reorder(b, &cp->re_fwd_pd, &cp->re_fwd, &c->w_plain, wf, spad, e))
        return -1;
    if (!c->no_bwd_data) {
        DN(dnnl_convolution_backward_data_desc_init(&bd, alg, &src, &wany, &dst, strides, pl, pr));
        if (make_pd(b, &cp->bwdd_pd, &bd, cp->fwd_pd, spad, e))
            return -1;
        DN(dnnl_primitive_create(&cp->bwdd, cp->bwdd_pd));
        const dnnl_memory_desc_t *wb = dnnl_primitive_desc_query_md(cp->bwdd_pd,
                                                                   dnnl_query_weights_md, 0);
        need(wsize, dnnl_memory_desc_get_size(wb));
        if (make_reorder(b, &cp->re_bwd_pd, &cp->re_bwd, &c->w_plain, wb, spad, e))
            return -1;
    }
    DN(dnnl_convolution_backward_weights_desc_init(&wd, alg, &src, &wany, NULL, &dst, strides,
                                                   pl, pr));
    if (make_pd(b, &cp->bwdw_pd, &wd, cp->fwd_pd, spad, e))
        return -1;
    DN(dnnl_primitive_create(&cp->bwdw, cp->bwdw_pd));
    const dnnl_memory_desc_t *dw = dnnl_primitive_desc_query_md(cp->bwdw_pd,
                                                               dnnl_query_diff_weights_md, 0);
    need(wsize, dnnl_memory_desc_get_size(dw));
    return make_reorder(b, &cp->re_dw_pd, &cp->re_dw, dw, &c->w_plain, spad, e);
}

/*
 * 3x3 stride-1 convs let oneDNN choose (it takes Winograd F(4x4, 3x3) on
 * AVX-512, faster here than direct convs) unless that choice needs a
 * scratchpad larger than the largest activation (Winograd on few input
 * channels or small images wants up to 100 MB at batch 128): memory is the
 * other half of the budget. Everything else is direct. The choice depends on
 * shapes only, never on timing, so reruns and resumes compute the same.
 */
static int conv_plan(Backend *b, ConvPlan *cp, const Conv *c, int n, size_t *spad,
                     size_t *wsize, Err *e)
{
    if (c->k == 3 && c->stride == 1 && c->groups == 1 && !c->src_plain) {
        size_t s = 0, w = 0;
        Err ignored;
        if (conv_plan_alg(b, cp, c, n, dnnl_convolution_auto, &s, &w, &ignored) == 0 &&
            s <= b->act_bytes) {
            need(spad, s);
            need(wsize, w);
            return 0;
        }
        conv_plan_free(cp);
    }
    return conv_plan_alg(b, cp, c, n, dnnl_convolution_direct, spad, wsize, e);
}

/* whether oneDNN would run its reference code for c's forward or filter
 * gradient at batch n (direct algorithm): 1, 0, or -1 with *e set */
static int conv_is_ref(Backend *b, const Conv *c, int n, Err *e)
{
    ConvPlan cp = {0};
    size_t s = 0, w = 0;
    b->quiet = 1;
    int rc = conv_plan_alg(b, &cp, c, n, dnnl_convolution_direct, &s, &w, e);
    b->quiet = 0;
    if (rc == 0)
        rc = impl_ref(cp.fwd_pd) || impl_ref(cp.bwdw_pd);
    conv_plan_free(&cp);
    return rc;
}

static int bn_plan(Backend *b, BnPlan *bp, const Bn *bn, int n, size_t *spad, Err *e)
{
    dnnl_memory_desc_t d;
    if (act_md(b, &d, n, bn->c, bn->h, bn->w, 0, e))
        return -1;
    unsigned flags = dnnl_use_scale | dnnl_use_shift | (bn->relu ? dnnl_fuse_norm_relu : 0);
    dnnl_batch_normalization_desc_t fd, id, bd;
    DN(dnnl_batch_normalization_forward_desc_init(&fd, dnnl_forward_training, &d, BN_EPS, flags));
    if (make_pd(b, &bp->train_pd, &fd, NULL, spad, e))
        return -1;
    DN(dnnl_primitive_create(&bp->train, bp->train_pd));
    DN(dnnl_batch_normalization_forward_desc_init(&id, dnnl_forward_inference, &d, BN_EPS,
                                                  flags | dnnl_use_global_stats));
    if (make_pd(b, &bp->infer_pd, &id, NULL, spad, e))
        return -1;
    DN(dnnl_primitive_create(&bp->infer, bp->infer_pd));
    DN(dnnl_batch_normalization_backward_desc_init(&bd, dnnl_backward, &d, &d, BN_EPS, flags));
    if (make_pd(b, &bp->bwd_pd, &bd, bp->train_pd, spad, e))
        return -1;
    DN(dnnl_primitive_create(&bp->bwd, bp->bwd_pd));
    return 0;
}

static void plan_free(Backend *b, Plan *p)
{
    for (int i = 0; p->conv && i < b->nconv; i++)
        conv_plan_free(&p->conv[i]);
    for (int i = 0; p->bn && i < b->nbn; i++) {
        BnPlan *c = &p->bn[i];
        dnnl_primitive_t prims[] = {c->train, c->infer, c->bwd};
        dnnl_primitive_desc_t pds[] = {c->train_pd, c->infer_pd, c->bwd_pd};
        for (int k = 0; k < 3; k++) {
            if (prims[k])
                dnnl_primitive_destroy(prims[k]);
            if (pds[k])
                dnnl_primitive_desc_destroy(pds[k]);
        }
    }
    free(p->conv);
    free(p->bn);
    memset(p, 0, sizeof *p);
}

/* Grows a transient buffer (no contents survive a call). */
static int grow(void **buf, size_t *have, size_t want, const char *what, Err *e)
{
    if (want <= *have)
        return 0;
    mem_free(*buf);
    *buf = mem_alloc(want, what, e);
    *have = *buf ? want : 0;
    return *buf ? 0 : -1;
}

static Plan *plan_get(Backend *b, int n, Err *e)
{
    Plan *slot = NULL;
    for (int i = 0; i < MAX_PLANS; i++)
        if (b->plans[i].n == n) {
            b->plans[i].used = ++b->clock;
            return &b->plans[i];
        }
    for (int i = 0; i < MAX_PLANS; i++)
        if (!slot || b->plans[i].used < slot->used)
            slot = &b->plans[i];
    plan_free(b, slot);
    slot->conv = calloc((size_t)b->nconv, sizeof *slot->conv);
    slot->bn = calloc((size_t)b->nbn, sizeof *slot->bn);
    if (!slot->conv || !slot->bn) {
        plan_free(b, slot);
        err_set(e, "out of memory creating oneDNN primitives");
        return NULL;
    }
    size_t spad = b->scratchpad_size, wsize = b->wblk_size;
    for (int i = 0; i < b->nconv; i++)
        if (conv_plan(b, &slot->conv[i], &b->conv[i], n, &spad, &wsize, e))
            goto fail;
    for (int i = 0; i < b->nbn; i++)
        if (bn_plan(b, &slot->bn[i], &b->bn[i], n, &spad, e))
            goto fail;
    if (grow(&b->scratchpad, &b->scratchpad_size, spad, "oneDNN scratchpad", e) ||
        grow((void **)&b->wblk, &b->wblk_size, wsize, "packed weights", e))
        goto fail;
    slot->n = n;
    slot->used = ++b->clock;
    return slot;
fail:
    err_wrap(e, "setting up oneDNN for batch size %d", n);
    plan_free(b, slot);
    return NULL;
}

/* ---- Layers --------------------------------------------------------------- */

/* Copies a conv's weights between the arena (its segments) and plain, the
 * layout oneDNN gets: the same bytes, or for an expanded conv the rows of a
 * (cout_p, cin_p, k, k) matrix, each output channel's weights in its group's
 * columns. to_plain: arena -> plain, else back. */
static void conv_copy(const Conv *c, float *arena, float *plain, int to_plain)
{
    if (!c->expand) {
        size_t at = 0;
        for (int s = 0; s < c->nseg; s++) {
            float *a = arena + c->seg[s].off;
            size_t bytes = c->seg[s].count * sizeof(float);
            memcpy(to_plain ? plain + at : a, to_plain ? a : plain + at, bytes);
            at += c->seg[s].count;
        }
        return;
    }
    /* output channel o: row o % per_seg of segment o / per_seg, in group
     * o / og, whose input channels are columns [group * ig, (group + 1) * ig) */
    int og = c->cout / c->orig_groups, ig = c->cin / c->orig_groups, kk = c->k * c->k;
    int per_seg = c->cout / c->nseg;
    size_t bytes = (size_t)ig * kk * sizeof(float);
    if (to_plain)
        memset(plain, 0, (size_t)c->cout_p * c->cin_p * kk * sizeof(float));
    for (int o = 0; o < c->cout; o++) {
        float *w = arena + c->seg[o / per_seg].off + (size_t)(o % per_seg) * ig * kk;
        float *row = plain + ((size_t)o * c->cin_p + (size_t)(o / og) * ig) * kk;
        memcpy(to_plain ? row : w, to_plain ? w : row, bytes);
    }
}

static int conv_forward(Backend *b, int ci, float *dst, const float *src, Err *e)
{
    const Conv *c = &b->conv[ci];
    ConvPlan *cp = &b->cur->conv[ci];
    conv_copy(c, b->params, b->wplain, 1);
    Arg re[] = {{DNNL_ARG_FROM, b->wplain}, {DNNL_ARG_TO, b->wblk}};
    if (run_prim(b, cp->re_fwd_pd, cp->re_fwd, re, 2, e))
        return -1;
    Arg a[] = {{DNNL_ARG_SRC, (void *)src}, {DNNL_ARG_WEIGHTS, b->wblk}, {DNNL_ARG_DST, dst}};
    return run_prim(b, cp->fwd_pd, cp->fwd, a, 3, e);
}

/* dW (overwritten in the grads arena) from src and the output gradient. */
static int conv_backward_weights(Backend *b, int ci, const float *src, const float *dy, Err *e)
{
    const Conv *c = &b->conv[ci];
    ConvPlan *cp = &b->cur->conv[ci];
    Arg a[] = {{DNNL_ARG_SRC, (void *)src}, {DNNL_ARG_DIFF_DST, (void *)dy},
               {DNNL_ARG_DIFF_WEIGHTS, b->wblk}};
    if (run_prim(b, cp->bwdw_pd, cp->bwdw, a, 3, e))
        return -1;
    Arg re[] = {{DNNL_ARG_FROM, b->wblk}, {DNNL_ARG_TO, b->dwplain}};
    if (run_prim(b, cp->re_dw_pd, cp->re_dw, re, 2, e))
        return -1;
    conv_copy(c, b->grads, b->dwplain, 0);
    return 0;
}

/* dx (overwritten) from the output gradient. */
static int conv_backward_data(Backend *b, int ci, float *dx, const float *dy, Err *e)
{
    const Conv *c = &b->conv[ci];
    ConvPlan *cp = &b->cur->conv[ci];
    conv_copy(c, b->params, b->wplain, 1);
    Arg re[] = {{DNNL_ARG_FROM, b->wplain}, {DNNL_ARG_TO, b->wblk}};
    if (run_prim(b, cp->re_bwd_pd, cp->re_bwd, re, 2, e))
        return -1;
    Arg a[] = {{DNNL_ARG_DIFF_DST, (void *)dy}, {DNNL_ARG_WEIGHTS, b->wblk},
               {DNNL_ARG_DIFF_SRC, dx}};
    return run_prim(b, cp->bwdd_pd, cp->bwdd, a, 3, e);
}

static void bn_pack(Backend *b, Bn *bn, int running)
{
    int cs = bn->c / bn->nseg;
    for (int s = 0; s < bn->nseg; s++)
        for (int i = 0; i < cs; i++) {
            bn->scale[s * cs + i] = b->params[bn->gamma[s] + i];
            bn->shift[s * cs + i] = b->params[bn->beta[s] + i];
            if (running) {
                bn->rmean[s * cs + i] = b->state[bn->mean[s] + i];
                bn->rvar[s * cs + i] = b->state[bn->var[s] + i];
            }
        }
}

static int bn_forward(Backend *b, int bi, float *dst, const float *src, int n, int train, Err *e)
{
    Bn *bn = &b->bn[bi];
    BnPlan *bp = &b->cur->bn[bi];
    bn_pack(b, bn, !train);
    if (!train) {
        Arg a[] = {{DNNL_ARG_SRC, (void *)src}, {DNNL_ARG_DST, dst},
                   {DNNL_ARG_SCALE, bn->scale}, {DNNL_ARG_SHIFT, bn->shift},
                   {DNNL_ARG_MEAN, bn->rmean}, {DNNL_ARG_VARIANCE, bn->rvar}};
        return run_prim(b, bp->infer_pd, bp->infer, a, 6, e);
    }
    Arg a[] = {{DNNL_ARG_SRC, (void *)src}, {DNNL_ARG_DST, dst},
               {DNNL_ARG_SCALE, bn->scale}, {DNNL_ARG_SHIFT, bn->shift},
               {DNNL_ARG_MEAN, bn->bmean}, {DNNL_ARG_VARIANCE, bn->bvar},
               {DNNL_ARG_WORKSPACE, bn->ws}};
    if (run_prim(b, bp->train_pd, bp->train, a, bn->relu ? 7 : 6, e))
        return -1;
    /* running statistics: the unbiased variance, as PyTorch */
    double cnt = (double)n * bn->h * bn->w;
    float unbias = cnt > 1 ? (float)(cnt / (cnt - 1)) : 1.0f;
    int cs = bn->c / bn->nseg;
    for (int s = 0; s < bn->nseg; s++)
        for (int i = 0; i < cs; i++) {
            float *rm = &b->state[bn->mean[s] + i], *rv = &b->state[bn->var[s] + i];
            *rm = (1.0f - BN_MOMENTUM) * *rm + BN_MOMENTUM * bn->bmean[s * cs + i];
            *rv = (1.0f - BN_MOMENTUM) * *rv + BN_MOMENTUM * bn->bvar[s * cs + i] * unbias;
        }
    return 0;
}

/* dx may alias dy. Writes dgamma, dbeta into the grads arena. */
static int bn_backward(Backend *b, int bi, float *dx, const float *dy, const float *src, Err *e)
{
    Bn *bn = &b->bn[bi];
    BnPlan *bp = &b->cur->bn[bi];
    bn_pack(b, bn, 0);
    Arg a[] = {{DNNL_ARG_SRC, (void *)src}, {DNNL_ARG_DIFF_DST, (void *)dy},
               {DNNL_ARG_DIFF_SRC, dx}, {DNNL_ARG_SCALE, bn->scale},
               {DNNL_ARG_SHIFT, bn->shift}, /* unused, but oneDNN 2.6 insists */
               {DNNL_ARG_MEAN, bn->bmean}, {DNNL_ARG_VARIANCE, bn->bvar},
               {DNNL_ARG_DIFF_SCALE, bn->dscale}, {DNNL_ARG_DIFF_SHIFT, bn->dshift},
               {DNNL_ARG_WORKSPACE, bn->ws}};
    if (run_prim(b, bp->bwd_pd, bp->bwd, a, bn->relu ? 10 : 9, e))
        return -1;
    int cs = bn->c / bn->nseg;
    for (int s = 0; s < bn->nseg; s++)
        for (int i = 0; i < cs; i++) {
            b->grads[bn->gamma[s] + i] = bn->dscale[s * cs + i];
            b->grads[bn->beta[s] + i] = bn->dshift[s * cs + i];
        }
    return 0;
}

/* ---- Elementwise kernels on the blocked layout (channel block cb) ------- */

/* x (n, c, hw) plain into y, blocked (cb) with c zero-padded to blocks */
static void k_to_blocked(float *y, const float *x, int n, int c, int hw, int cb)
{
    const int cp = cpad_of(c, cb);
#pragma omp parallel for schedule(static)
    for (int i = 0; i < n; i++)
        for (int ch = 0; ch < cp; ch++)
            for (int p = 0; p < hw; p++)
                y[bidx(i, ch, p, cp, hw, cb)] = ch < c ? x[((size_t)i * c + ch) * hw + p] : 0.0f;
}

/* out = max(0, in); count covers the padded tensor. out may alias in. */
static void k_relu(float *out, const float *in, size_t count)
{
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < count; i++)
        out[i] = in[i] > 0.0f ? in[i] : 0.0f;
}

/* one channel block of hw positions: out = max(0, in * s + t), s and t
 * the block's cb channels' (inlined with cb a constant) */
static inline void bn_relu_block(float *out, const float *in, const float *s, const float *t,
                                 int hw, int cb)
{
    for (int p = 0; p < hw; p++)
        for (int l = 0; l < cb; l++) {
            float v = in[(size_t)p * cb + l] * s[l] + t[l];
            out[(size_t)p * cb + l] = v > 0.0f ? v : 0.0f;
        }
}

/* out = max(0, in * s[c] + t[c]) with s, t from the saved batch statistics:
 * the ReLU'd batch-norm output of the forward pass, recomputed. */
static void k_bn_relu(float *out, const float *in, Bn *bn, int n, int cb)
{
    float *s = bn->as, *t = bn->at;
    for (int c = 0; c < bn->cpad; c++) {
        if (c < bn->c) {
            s[c] = bn->scale[c] / sqrtf(bn->bvar[c] + BN_EPS);
            t[c] = bn->shift[c] - bn->bmean[c] * s[c];
        } else {
            s[c] = t[c] = 0.0f;
        }
    }
    int nb = bn->cpad / cb, hw = bn->h * bn->w;
#pragma omp parallel for collapse(2) schedule(static)
    for (int i = 0; i < n; i++)
        for (int j = 0; j < nb; j++) {
            size_t base = ((size_t)i * nb + j) * hw * cb;
            if (cb == 16)
                bn_relu_block(out + base, in + base, s + 16 * j, t + 16 * j, hw, 16);
            else
                bn_relu_block(out + base, in + base, s + 8 * j, t + 8 * j, hw, 8);
        }
}

/*
 * pre = sc + a*B[:, :C] + (1-a)*B[:, C:] per image (a = 0.5 when alpha is
 * NULL); store = relu(pre); pre_out (may be NULL) = pre. B has 2C channels.
 */
static void k_combine(float *pre_out, float *store, const float *sc, const float *B,
                      const float *alpha, int n, int C, int hw, int cb)
{
    int cp = cpad_of(C, cb), cp2 = cpad_of(2 * C, cb), nb = cp / cb;
    if (C % cb == 0) {
#pragma omp parallel for collapse(2) schedule(static)
        for (int i = 0; i < n; i++)
            for (int j = 0; j < nb; j++) {
                float a = alpha ? alpha[i] : 0.5f, a2 = 1.0f - a;
                size_t o = ((size_t)i * nb + j) * hw * cb;
                const float *b1 = B + ((size_t)i * 2 * nb + j) * hw * cb;
                const float *b2 = B + ((size_t)i * 2 * nb + j + nb) * hw * cb;
                for (int q = 0; q < hw * cb; q++) {
                    float v = sc[o + q] + a * b1[q] + a2 * b2[q];
                    if (pre_out)
                        pre_out[o + q] = v;
                    store[o + q] = v > 0.0f ? v : 0.0f;
                }
            }
        return;
    }
#pragma omp parallel for schedule(static)
    for (int i = 0; i < n; i++) {
        float a = alpha ? alpha[i] : 0.5f, a2 = 1.0f - a;
        for (int c = 0; c < cp; c++)
            for (int p = 0; p < hw; p++) {
                size_t o = bidx(i, c, p, cp, hw, cb);
                float v = 0.0f;
                if (c < C)
                    v = sc[o] + a * B[bidx(i, c, p, cp2, hw, cb)] +
                        a2 * B[bidx(i, C + c, p, cp2, hw, cb)];
                if (pre_out)
                    pre_out[o] = v;
                store[o] = v > 0.0f ? v : 0.0f;
            }
    }
}

/* G[:, :C] = beta*g, G[:, C:] = (1-beta)*g per image: the gradient reaching
 * the two branches (beta = 0.5 when NULL). */
static void k_split(float *G, const float *g, const float *beta, int n, int C, int hw, int cb)
{
    int cp = cpad_of(C, cb), cp2 = cpad_of(2 * C, cb), nb = cp / cb;
    if (C % cb == 0) {
#pragma omp parallel for collapse(2) schedule(static)
        for (int i = 0; i < n; i++)
            for (int j = 0; j < nb; j++) {
                float bt = beta ? beta[i] : 0.5f, b2 = 1.0f - bt;
                const float *gi = g + ((size_t)i * nb + j) * hw * cb;
                float *g1 = G + ((size_t)i * 2 * nb + j) * hw * cb;
                float *g2 = G + ((size_t)i * 2 * nb + j + nb) * hw * cb;
                for (int q = 0; q < hw * cb; q++) {
                    g1[q] = bt * gi[q];
                    g2[q] = b2 * gi[q];
                }
            }
        return;
    }
#pragma omp parallel for schedule(static)
    for (int i = 0; i < n; i++) {
        float bt = beta ? beta[i] : 0.5f;
        for (int c = 0; c < cp2; c++)
            for (int p = 0; p < hw; p++) {
                float v = 0.0f;
                if (c < C)
                    v = bt * g[bidx(i, c, p, cp, hw, cb)];
                else if (c < 2 * C)
                    v = (1.0f - bt) * g[bidx(i, c - C, p, cp, hw, cb)];
                G[bidx(i, c, p, cp2, hw, cb)] = v;
            }
    }
}

/*
 * The gradient leaving a block toward the previous block's pre-activation
 * output, from dR (the gradient of the block input `in`, which is relu'd):
 *   resnet:  gx = gy_id + (in > 0) * dR
 *   resnext: gx = (in > 0) * (gy_id + dR)
 * gy_id is the identity shortcut's gradient (NULL for a projection). gx may
 * alias gy_id or dR (elementwise).
 */
static void k_mask(float *gx, const float *gy_id, const float *in, const float *dR,
                   size_t count, int post)
{
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < count; i++) {
        float id = gy_id ? gy_id[i] : 0.0f, m = in[i] > 0.0f ? 1.0f : 0.0f;
        gx[i] = post ? m * (id + dR[i]) : id + m * dR[i];
    }
}

static void k_add(float *y, const float *x, size_t count)
{
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < count; i++)
        y[i] += x[i];
}

/* Source row/column of shortcut path 2 for output position o at stride s. */
static inline int shifted(int o, int s, int shift)
{
    return o * s + (shift == SHIFT_ORIGINAL ? -1 : 1);
}

/*
 * The Shake-Shake ResNet shortcut input: P[:, :cin] = in subsampled at
 * stride s (avg-pool 1x1); P[:, cin:] = the shifted input subsampled.
 */
static void k_gather(float *P, const float *in, int n, int cin, int ih, int iw, int oh,
                     int ow, int s, int shift, int cb)
{
    int cpi = cpad_of(cin, cb), cpp = cpad_of(2 * cin, cb), ihw = ih * iw, ohw = oh * ow;
#pragma omp parallel for collapse(2) schedule(static)
    for (int i = 0; i < n; i++)
        for (int c = 0; c < cpp; c++)
            for (int y = 0; y < oh; y++)
                for (int x = 0; x < ow; x++) {
                    float v = 0.0f;
                    if (c < cin) {
                        v = in[bidx(i, c, y * s * iw + x * s, cpi, ihw, cb)];
                    } else if (c < 2 * cin) {
                        int sy = shifted(y, s, shift), sx = shifted(x, s, shift);
                        if (sy >= 0 && sy < ih && sx >= 0 && sx < iw)
                            v = in[bidx(i, c - cin, sy * iw + sx, cpi, ihw, cb)];
                    }
                    P[bidx(i, c, y * ow + x, cpp, ohw, cb)] = v;
                }
}

/* dR += the gradient of k_gather's input given dP. */
static void k_scatter(float *dR, const float *dP, int n, int cin, int ih, int iw, int oh,
                      int ow, int s, int shift, int cb)
{
    int cpi = cpad_of(cin, cb), cpp = cpad_of(2 * cin, cb), ihw = ih * iw, ohw = oh * ow;
#pragma omp parallel for collapse(2) schedule(static)
    for (int i = 0; i < n; i++)
        for (int c = 0; c < cin; c++)
            for (int y = 0; y < oh; y++)
                for (int x = 0; x < ow; x++) {
                    dR[bidx(i, c, y * s * iw + x * s, cpi, ihw, cb)] +=
                        dP[bidx(i, c, y * ow + x, cpp, ohw, cb)];
                    int sy = shifted(y, s, shift), sx = shifted(x, s, shift);
                    if (sy >= 0 && sy < ih && sx >= 0 && sx < iw)
                        dR[bidx(i, c, sy * iw + sx, cpi, ihw, cb)] +=
                            dP[bidx(i, cin + c, y * ow + x, cpp, ohw, cb)];
                }
}

/* ---- The network ------------------------------------------------------- */

/* the stem conv's input: the batch as it came, or its blocked copy */
static const float *stem_src(const Backend *b)
{
    return b->xblk ? b->xblk : b->xin;
}

static int add_conv(Backend *b, const ConvDesc *d, int cin, int cout, int groups,
                    const ConvDesc *second, int src_plain, Err *e)
{
    Conv *c = &b->conv[b->nconv];
    c->cin = cin;
    c->cout = cout;
    c->k = d->k;
    c->stride = d->stride;
    c->groups = groups;
    c->ih = d->ih;
    c->iw = d->iw;
    c->oh = d->oh;
    c->ow = d->ow;
    c->src_plain = src_plain;
    size_t each = (size_t)d->cout * (d->cin / d->groups) * d->k * d->k;
    c->seg[0] = (Seg){d->w, each};
    c->nseg = 1;
    if (second)
        c->seg[c->nseg++] = (Seg){second->w, each};
    c->orig_groups = groups;
    c->cin_p = cin;
    c->cout_p = cout;
    const int cb = b->cb;
    if ((groups > 1 && ((cin / groups) % cb || (cout / groups) % cb)) ||
        (groups == 1 && !src_plain && (cin % cb || cout % cb))) {
        c->expand = 1;
        c->groups = groups = 1;
        c->cin_p = cpad_of(cin, cb);
        c->cout_p = cpad_of(cout, cb);
    }
    need(&b->wmax, (size_t)c->cout_p * (c->cin_p / groups) * c->k * c->k);
    if (groups > 1) {
        dnnl_dims_t wd = {groups, cout / groups, cin / groups, c->k, c->k};
        DN(dnnl_memory_desc_init_by_tag(&c->w_plain, 5, wd, dnnl_f32, dnnl_goihw));
    } else {
        dnnl_dims_t wd = {c->cout_p, c->cin_p, c->k, c->k};
        DN(dnnl_memory_desc_init_by_tag(&c->w_plain, 4, wd, dnnl_f32, dnnl_oihw));
    }
    return b->nconv++;
}

static int add_bn(Backend *b, const BnDesc *d, const BnDesc *second, int h, int w, int relu,
                  Err *e)
{
    Bn *bn = &b->bn[b->nbn];
    bn->nseg = second ? 2 : 1;
    bn->c = d->c * bn->nseg;
    bn->cpad = cpad_of(bn->c, b->cb);
    bn->h = h;
    bn->w = w;
    bn->relu = relu;
    const BnDesc *segs[2] = {d, second};
    for (int s = 0; s < bn->nseg; s++) {
        bn->gamma[s] = segs[s]->gamma;
        bn->beta[s] = segs[s]->beta;
        bn->mean[s] = segs[s]->mean;
        bn->var[s] = segs[s]->var;
    }
    float **arrays[] = {&bn->scale, &bn->shift, &bn->bmean, &bn->bvar, &bn->rmean,
                        &bn->rvar, &bn->dscale, &bn->dshift, &bn->as, &bn->at};
    for (int i = 0; i < 10; i++)
        if (!(*arrays[i] = mem_alloc((size_t)bn->cpad * sizeof(float), "batch norm", e)))
            return -1;
    return b->nbn++;
}

static void cpu_destroy(Backend *b)
{
    if (!b)
        return;
    for (int i = 0; i < MAX_PLANS; i++)
        plan_free(b, &b->plans[i]);
    for (int i = 0; i < b->nbn; i++) {
        Bn *bn = &b->bn[i];
        float *arrays[] = {bn->scale, bn->shift, bn->bmean, bn->bvar, bn->rmean,
                           bn->rvar, bn->dscale, bn->dshift, bn->as, bn->at};
        for (int k = 0; k < 10; k++)
            mem_free(arrays[k]);
        mem_free(bn->ws);
    }
    for (int i = 0; b->blk && i < b->m->nblocks; i++) {
        Block *B = &b->blk[i];
        mem_free(B->in);
        for (int j = 0; j < 3; j++)
            mem_free(B->c[j]);
    }
    free(b->blk);
    float *bufs[] = {b->params, b->grads, b->mom, b->state, b->xin, b->xblk, b->head_in,
                     b->feat, b->dfeat, b->Y, b->A, b->G, b->wplain, b->dwplain,
                     b->wblk};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        mem_free(bufs[i]);
    mem_free(b->scratchpad);
    if (b->attr)
        dnnl_primitive_attr_destroy(b->attr);
    if (b->stream)
        dnnl_stream_destroy(b->stream);
    if (b->eng)
        dnnl_engine_destroy(b->eng);
    free(b);
}

static int cpu_setup(Backend *b, const Model *m, int N, Err *e)
{
    const ModelSpec *s = &m->spec;
    DN(dnnl_engine_create(&b->eng, dnnl_cpu, 0));
    DN(dnnl_stream_create(&b->stream, b->eng, dnnl_stream_default_flags));
    DN(dnnl_primitive_attr_create(&b->attr));
    DN(dnnl_primitive_attr_set_scratchpad_mode(b->attr, dnnl_scratchpad_mode_user));
    if (m->nblocks > 3 * 64)
        return err_set(e, "cpu backend supports at most 64 blocks per stage");

    size_t narrow = 0, wide = 0;
    b->stem_conv = add_conv(b, &m->stem_conv, s->in_c, m->stem_conv.cout, 1, NULL, 1, e);
    if (b->stem_conv < 0)
        return -1;
    b->conv[b->stem_conv].no_bwd_data = 1;
    /* The stem reads the batch as it comes (plain NCHW) where oneDNN has
     * fast code for that; else (AVX2's filter gradient of a one-channel
     * input) a blocked copy of it, zero-padded to a channel block. */
    const int slow = conv_is_ref(b, &b->conv[b->stem_conv], N, e);
    if (slow < 0)
        return -1;
    if (slow) {
        b->nconv--;
        b->stem_conv = add_conv(b, &m->stem_conv, s->in_c, m->stem_conv.cout, 1, NULL, 0, e);
        if (b->stem_conv < 0)
            return -1;
        b->conv[b->stem_conv].no_bwd_data = 1;
        if (!(b->xblk = mem_alloc(act_floats(b, N, s->in_c, s->in_h, s->in_w) * sizeof(float),
                                  "input batch", e)))
            return -1;
    }
    b->stem_bn = add_bn(b, &m->stem_bn, NULL, s->in_h, s->in_w, 0, e);
    if (b->stem_bn < 0)
        return -1;
    need(&narrow, act_floats(b, N, m->stem_conv.cout, s->in_h, s->in_w));
    need(&wide, act_floats(b, N, m->stem_conv.cout, s->in_h, s->in_w));

    b->blk = calloc((size_t)m->nblocks, sizeof *b->blk);
    if (!b->blk)
        return err_set(e, "out of memory");
    for (int i = 0; i < m->nblocks; i++) {
        const BlockDesc *d = &m->blocks[i];
        Block *B = &b->blk[i];
        B->d = d;
        B->nconv = d->nconv;
        B->sc_conv = B->sc_bn = -1;
        int cin = d->cin;
        for (int j = 0; j < d->nconv; j++) {
            const ConvDesc *c0 = &d->conv[0][j];
            int groups = j == 0 ? 1 : 2 * c0->groups;
            B->ch[j] = 2 * c0->cout;
            B->conv[j] = add_conv(b, c0, cin, B->ch[j], groups, &d->conv[1][j], 0, e);
            B->bn[j] = add_bn(b, &d->bn[0][j], &d->bn[1][j], c0->oh, c0->ow,
                              j < d->nconv - 1, e);
            if (B->conv[j] < 0 || B->bn[j] < 0)
                return -1;
            if (!(B->c[j] = mem_alloc(act_floats(b, N, B->ch[j], c0->oh, c0->ow) * sizeof(float),
                                      "stored activations", e)))
                return -1;
            need(&wide, act_floats(b, N, B->ch[j], c0->oh, c0->ow));
            cin = B->ch[j];
        }
        if (d->proj) {
            if (m->spec.arch == ARCH_RESNET) {
                B->sc_conv = add_conv(b, &d->sc[0], 2 * d->cin, d->cout, 2, &d->sc[1], 0, e);
                /* the backward pass holds the gathered input and the
                 * recomputed conv output side by side */
                need(&wide, act_floats(b, N, 2 * d->cin, d->oh, d->ow) +
                                act_floats(b, N, d->cout, d->oh, d->ow));
            } else {
                B->sc_conv = add_conv(b, &d->sc[0], d->cin, d->cout, 1, NULL, 0, e);
            }
            B->sc_bn = add_bn(b, &d->sc_bn, NULL, d->oh, d->ow, 0, e);
            if (B->sc_conv < 0 || B->sc_bn < 0)
                return -1;
            need(&wide, act_floats(b, N, d->cout, d->oh, d->ow));
        }
        if (!(B->in = mem_alloc(act_floats(b, N, d->cin, d->ih, d->iw) * sizeof(float),
                                "stored activations", e)))
            return -1;
        need(&narrow, act_floats(b, N, d->cin, d->ih, d->iw));
        need(&narrow, act_floats(b, N, d->cout, d->oh, d->ow));
    }
    size_t img = (size_t)s->in_c * s->in_h * s->in_w;
    if (!(b->xin = mem_alloc((size_t)N * img * sizeof(float), "input batch", e)) ||
        !(b->head_in = mem_alloc(act_floats(b, N, m->fc_in, m->feat_h, m->feat_w) * sizeof(float),
                                 "stored activations", e)) ||
        !(b->feat = mem_alloc((size_t)N * m->fc_in * sizeof(float), "features", e)) ||
        !(b->dfeat = mem_alloc((size_t)N * m->fc_in * sizeof(float), "features", e)) ||
        !(b->Y = mem_alloc(narrow * sizeof(float), "scratch", e)) ||
        !(b->A = mem_alloc(wide * sizeof(float), "scratch", e)) ||
        !(b->G = mem_alloc(wide * sizeof(float), "scratch", e)) ||
        !(b->wplain = mem_alloc(b->wmax * sizeof(float), "weights", e)) ||
        !(b->dwplain = mem_alloc(b->wmax * sizeof(float), "weights", e)) ||
        !(b->params = mem_alloc(m->nparams * sizeof(float), "parameters", e)) ||
        !(b->grads = mem_alloc(m->nparams * sizeof(float), "gradients", e)) ||
        !(b->mom = mem_alloc(m->nparams * sizeof(float), "momentum", e)) ||
        !(b->state = mem_alloc(m->nstate * sizeof(float), "batch-norm statistics", e)))
        return -1;

    /* Primitives for the largest batch now: shapes are checked up front and
     * the ReLU workspaces sized for it. */
    b->act_bytes = wide * sizeof(float);
    Plan *p = plan_get(b, N, e);
    if (!p)
        return -1;

    for (int i = 0; i < b->nbn; i++) {
        Bn *bn = &b->bn[i];
        if (!bn->relu)
            continue;
        bn->ws_size = dnnl_memory_desc_get_size(
            dnnl_primitive_desc_query_md(p->bn[i].train_pd, dnnl_query_workspace_md, 0));
        if (!(bn->ws = mem_alloc(bn->ws_size, "batch-norm ReLU mask", e)))
            return -1;
    }
    return 0;
}

static Backend *cpu_create(const Model *m, const BackendOptions *o, Err *e)
{
    if (o->threads > 0)
        omp_set_num_threads(o->threads);
    Backend *b = calloc(1, sizeof *b);
    if (!b) {
        err_set(e, "out of memory");
        return NULL;
    }
    b->m = m;
    b->max_n = o->max_batch;
    if (!(b->cb = channel_block(e))) {
        free(b);
        return NULL;
    }
    if (cpu_setup(b, m, o->max_batch, e)) {
        cpu_destroy(b);
        return NULL;
    }
    return b;
}

static int cpu_load(Backend *b, const float *params, const float *state,
                    const float *momentum, Err *e)
{
    const Model *m = b->m;
    memcpy(b->params, params, m->nparams * sizeof(float));
    memcpy(b->state, state, m->nstate * sizeof(float));
    if (momentum)
        memcpy(b->mom, momentum, m->nparams * sizeof(float));
    else
        memset(b->mom, 0, m->nparams * sizeof(float));
    return 0;
}

static int cpu_store(Backend *b, float *params, float *state, float *momentum, float *grads,
                     Err *e)
{
    const Model *m = b->m;
    if (params)
        memcpy(params, b->params, m->nparams * sizeof(float));
    if (state)
        memcpy(state, b->state, m->nstate * sizeof(float));
    if (momentum)
        memcpy(momentum, b->mom, m->nparams * sizeof(float));
    if (grads)
        memcpy(grads, b->grads, m->nparams * sizeof(float));
    return 0;
}

static int cpu_forward(Backend *b, float *logits, const float *x, const float *alpha, int n,
                       int train, Err *e)
{
    const Model *m = b->m;
    const ModelSpec *s = &m->spec;
    if (n < 1 || n > b->max_n)
        return err_set(e, "batch of %d images; this backend was made for 1..%d", n, b->max_n);
    if (!(b->cur = plan_get(b, n, e)))
        return -1;
    int post = s->arch == ARCH_RESNEXT;
    memcpy(b->xin, x, (size_t)n * s->in_c * s->in_h * s->in_w * sizeof(float));
    if (b->xblk)
        k_to_blocked(b->xblk, b->xin, n, s->in_c, s->in_h * s->in_w, b->cb);
    /* The stem conv output is not kept: the backward pass recomputes it. Y
     * holds the previous block's pre-activation output (the identity
     * shortcut adds it); each block stores its ReLU as its input. */
    if (conv_forward(b, b->stem_conv, b->A, stem_src(b), e) ||
        bn_forward(b, b->stem_bn, b->Y, b->A, n, train, e))
        return -1;
    k_relu(b->blk[0].in, b->Y, act_floats(b, n, m->stem_conv.cout, s->in_h, s->in_w));
    for (int i = 0; i < m->nblocks; i++) {
        Block *B = &b->blk[i];
        const BlockDesc *d = B->d;
        const float *src = B->in;
        for (int j = 0; j < B->nconv; j++) {
            if (conv_forward(b, B->conv[j], B->c[j], src, e) ||
                bn_forward(b, B->bn[j], b->A, B->c[j], n, train, e))
                return -1;
            src = b->A;
        }
        const float *sc;
        if (d->proj) {
            const float *scin = B->in;
            if (s->arch == ARCH_RESNET) {
                k_gather(b->G, B->in, n, d->cin, d->ih, d->iw, d->oh, d->ow, d->stride,
                         s->shift, b->cb);
                scin = b->G;
            }
            /* The conv output is not kept (the backward pass recomputes it);
             * a projection block has no use for Y's old content. */
            if (conv_forward(b, B->sc_conv, b->Y, scin, e) ||
                bn_forward(b, B->sc_bn, b->G, b->Y, n, train, e))
                return -1;
            sc = b->G;
        } else {
            sc = post ? B->in : b->Y;   /* k_combine may write Y over itself */
        }
        float *store = i + 1 < m->nblocks ? b->blk[i + 1].in : b->head_in;
        k_combine(post ? NULL : b->Y, store, sc, b->A, train ? alpha + (size_t)i * n : NULL, n,
                  d->cout, d->oh * d->ow, b->cb);
    }
    /* head: global average pool of the stored ReLU'd output, then fc */
    int C = m->fc_in, hw = m->feat_h * m->feat_w, cp = cpad_of(C, b->cb), K = s->classes;
#pragma omp parallel for schedule(static)
    for (int i = 0; i < n; i++)
        for (int c = 0; c < C; c++) {
            float acc = 0.0f;
            for (int p = 0; p < hw; p++)
                acc += b->head_in[bidx(i, c, p, cp, hw, b->cb)];
            b->feat[(size_t)i * C + c] = acc / hw;
        }
    const float *W = b->params + m->fc_w, *bias = b->params + m->fc_b;
    for (int i = 0; i < n; i++)
        for (int k = 0; k < K; k++) {
            float acc = bias[k];
            for (int c = 0; c < C; c++)
                acc += W[(size_t)k * C + c] * b->feat[(size_t)i * C + c];
            logits[(size_t)i * K + k] = acc;
        }
    return 0;
}

static int cpu_backward(Backend *b, const float *dlogits, const float *beta, int n, Err *e)
{
    const Model *m = b->m;
    const ModelSpec *s = &m->spec;
    if (!b->cur || b->cur->n != n)
        return err_set(e, "backward of %d images without a training forward of them", n);
    int post = s->arch == ARCH_RESNEXT;
    int C = m->fc_in, hw = m->feat_h * m->feat_w, cp = cpad_of(C, b->cb), K = s->classes;
    float *dW = b->grads + m->fc_w, *db = b->grads + m->fc_b;
    const float *W = b->params + m->fc_w;
    for (int k = 0; k < K; k++) {
        float acc = 0.0f;
        for (int i = 0; i < n; i++)
            acc += dlogits[(size_t)i * K + k];
        db[k] = acc;
    }
#pragma omp parallel for schedule(static)
    for (int k = 0; k < K; k++)
        for (int c = 0; c < C; c++) {
            float acc = 0.0f;
            for (int i = 0; i < n; i++)
                acc += dlogits[(size_t)i * K + k] * b->feat[(size_t)i * C + c];
            dW[(size_t)k * C + c] = acc;
        }
#pragma omp parallel for schedule(static)
    for (int i = 0; i < n; i++)
        for (int c = 0; c < C; c++) {
            float acc = 0.0f;
            for (int k = 0; k < K; k++)
                acc += dlogits[(size_t)i * K + k] * W[(size_t)k * C + c];
            b->dfeat[(size_t)i * C + c] = acc / hw;
        }
    /* the gradient at the last block's pre-activation output */
    float *g = b->Y;
#pragma omp parallel for schedule(static)
    for (int i = 0; i < n; i++)
        for (int c = 0; c < cp; c++)
            for (int p = 0; p < hw; p++) {
                size_t o = bidx(i, c, p, cp, hw, b->cb);
                g[o] = c < C && b->head_in[o] > 0.0f ? b->dfeat[(size_t)i * C + c] : 0.0f;
            }
    /* Each block turns the gradient in Y (gy, of its output) into the
     * gradient of the previous block's output, in Y again. */
    for (int i = m->nblocks - 1; i >= 0; i--) {
        Block *B = &b->blk[i];
        const BlockDesc *d = B->d;
        float *gy = b->Y, *Gb = b->G, *Ab = b->A;
        k_split(Gb, gy, beta ? beta + (size_t)i * n : NULL, n, d->cout, d->oh * d->ow, b->cb);
        for (int j = B->nconv - 1; j >= 0; j--) {
            if (bn_backward(b, B->bn[j], Gb, Gb, B->c[j], e))
                return -1;
            const float *src = B->in;
            if (j > 0) {
                Bn *prev = &b->bn[B->bn[j - 1]];
                bn_pack(b, prev, 0);
                k_bn_relu(Ab, B->c[j - 1], prev, n, b->cb);
                src = Ab;
            }
            /* the recomputed input is dead after the weight gradient, so its
             * buffer takes the data gradient; the roles then swap */
            if (conv_backward_weights(b, B->conv[j], src, Gb, e) ||
                conv_backward_data(b, B->conv[j], Ab, Gb, e))
                return -1;
            float *t = Gb;
            Gb = Ab;
            Ab = t;
        }
        /* Gb: dR, the gradient of the block input from both branches; Ab is free */
        float *dR = Gb;
        size_t count = act_floats(b, n, d->cin, d->ih, d->iw);
        if (d->proj) {
            /* Recompute the shortcut conv output, then its batch norm's
             * gradient in place of gy: a projection block has no further use
             * for gy. Ab holds the conv input (resnet: the gathered one) and
             * the recomputed output, then the input's gradient. */
            const float *scin = B->in;
            float *scc = Ab;
            if (s->arch == ARCH_RESNET) {
                k_gather(Ab, B->in, n, d->cin, d->ih, d->iw, d->oh, d->ow, d->stride,
                         s->shift, b->cb);
                scin = Ab;
                scc = Ab + act_floats(b, n, 2 * d->cin, d->oh, d->ow);
            }
            if (conv_forward(b, B->sc_conv, scc, scin, e) ||
                bn_backward(b, B->sc_bn, gy, gy, scc, e) ||
                conv_backward_weights(b, B->sc_conv, scin, gy, e) ||
                conv_backward_data(b, B->sc_conv, Ab, gy, e))
                return -1;
            if (s->arch == ARCH_RESNET)
                k_scatter(dR, Ab, n, d->cin, d->ih, d->iw, d->oh, d->ow, d->stride, s->shift,
                          b->cb);
            else
                k_add(dR, Ab, count);
            k_mask(b->Y, NULL, B->in, dR, count, post);
        } else {
            k_mask(b->Y, gy, B->in, dR, count, post);
        }
    }
    /* stem: Y holds the gradient of its batch-norm output; its conv output
     * is recomputed */
    if (conv_forward(b, b->stem_conv, b->A, stem_src(b), e) ||
        bn_backward(b, b->stem_bn, b->Y, b->Y, b->A, e) ||
        conv_backward_weights(b, b->stem_conv, stem_src(b), b->Y, e))
        return -1;
    return 0;
}

static int cpu_update(Backend *b, float lr, float momentum, float wd, Err *e)
{
    sgd_nesterov(b->params, b->mom, b->grads, b->m->nparams, lr, momentum, wd);
    return 0;
}

/* OpenMP's thread count as cpu_create set it (process-wide) */
static void cpu_describe(const Backend *be, char *buf, size_t len)
{
    char cpu[300];
    host_cpu(cpu, sizeof cpu);
    const dnnl_version_t *v = dnnl_version();
    const int t = omp_get_max_threads();
    snprintf(buf, len, "%s, with oneDNN %d.%d.%d on nChw%dc, %d thread%s", cpu, v->major,
             v->minor, v->patch, be->cb, t, t == 1 ? "" : "s");
}

const BackendOps backend_cpu = {
    "cpu", cpu_create, cpu_destroy, cpu_load, cpu_store, cpu_forward, cpu_backward, cpu_update,
    NULL,
    NULL,
    NULL,
    NULL,
    cpu_describe,
};
