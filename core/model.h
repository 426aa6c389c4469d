/*
 * The paper's networks as data: shapes, parameter layout and names. Every
 * backend walks this description; none re-derives the architecture.
 *
 * Parameters live in one flat float32 arena in PyTorch layouts (conv weights
 * (out, in/groups, kh, kw), fc weight (classes, in)); batch-norm running
 * statistics live in a second arena ("state"), outside weight decay and
 * gradients. Offsets below index those arenas.
 */
#ifndef SHAKE_MODEL_H
#define SHAKE_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "util.h"

/* One definition of the batch-norm constants for every backend. */
#define BN_EPS 1e-5f
#define BN_MOMENTUM 0.1f

typedef enum { ARCH_RESNET = 0, ARCH_RESNEXT = 1 } Arch;
/* SHIFT_ORIGINAL: z[i][j] = x[i-1][j-1] (the paper's code, zeros enter at row
 * and column 0). SHIFT_REIMPL: z[i][j] = x[i+1][j+1] (the reimplementations,
 * zeros at the last row and column). */
typedef enum { SHIFT_ORIGINAL = 0, SHIFT_REIMPL = 1 } ShiftMode;

typedef struct {
    int cin, cout, k, stride, pad, groups;
    int ih, iw, oh, ow;
    size_t w;                   /* params offset of (cout, cin/groups, k, k) */
} ConvDesc;

typedef struct {
    int c;
    size_t gamma, beta;         /* params offsets, c floats each */
    size_t mean, var;           /* state offsets, c floats each */
} BnDesc;

/*
 * A residual block. ARCH_RESNET (pre-activation inside the block):
 *   r = relu(x); branch k = bn[k][1](conv[k][1](relu(bn[k][0](conv[k][0](r)))))
 *   shortcut = x, or bn_sc(concat(sc[0](pool_s(r)), sc[1](pool_s(shift(r)))))
 *   y = shortcut + alpha*branch0 + (1-alpha)*branch1          (no relu)
 * ARCH_RESNEXT (post-activation):
 *   branch k = bn2(conv2(relu(bn1(conv1(relu(bn0(conv0(x))))))))
 *   shortcut = x, or bn_sc(sc[0](x))  (1x1, stride s)
 *   y = relu(shortcut + alpha*branch0 + (1-alpha)*branch1)
 */
typedef struct {
    int cin, cout, stride;
    int ih, iw, oh, ow;
    int stage, index;           /* 1-based stage, 0-based block in stage */
    int nconv;                  /* convs per branch: 2 (resnet) or 3 (resnext) */
    ConvDesc conv[2][3];
    BnDesc bn[2][3];
    int proj;                   /* 0: identity shortcut */
    int nsc;                    /* shortcut convs: 2 (resnet) or 1 (resnext) */
    ConvDesc sc[2];
    BnDesc sc_bn;
} BlockDesc;

/* One named tensor of the checkpoint, in module order. */
typedef enum { T_PARAM = 0, T_STATE = 1 } TensorArena;
typedef enum { INIT_CONV, INIT_ONE, INIT_ZERO, INIT_FC } TensorInit;
typedef struct {
    char name[128];
    int ndim;
    int shape[4];
    size_t offset, count;
    TensorArena arena;
    TensorInit init;
    int fan_in;                 /* for INIT_FC */
    float std;                  /* for INIT_CONV */
} TensorInfo;

typedef struct {
    Arch arch;
    int depth, width, groups;
    int classes, in_c, in_h, in_w;
    ShiftMode shift;
} ModelSpec;

typedef struct {
    ModelSpec spec;
    ConvDesc stem_conv;
    BnDesc stem_bn;
    int stem_relu;              /* resnext only */
    int nblocks;
    BlockDesc *blocks;
    int fc_in;
    int feat_h, feat_w;         /* spatial size before global pooling */
    size_t fc_w, fc_b;          /* params offsets: (classes, fc_in), (classes) */
    int ntensors;
    TensorInfo *tensors;
    size_t nparams;             /* floats in the params arena */
    size_t nstate;              /* floats in the state arena */
} Model;

/* Validates the spec (depth 6n+2 or 9n+2, widths) and lays the model out. */
int model_build(Model *m, const ModelSpec *spec, Err *e);
void model_free(Model *m);

/* Fills params and state with the paper's init from (seed, RNG_INIT). */
void model_init(const Model *m, uint64_t seed, float *params, float *state);

/* Name such as "26 2x32d" or "29 2x4x64d" for humans. */
void model_describe(const Model *m, char *buf, size_t len);

/* Forward multiply-adds per image (for throughput reports). */
double model_macs(const Model *m);

#endif
