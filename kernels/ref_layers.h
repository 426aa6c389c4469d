/*
 * The reference layers: plain C, float32, NCHW, loops that read like the
 * definitions. Every other backend is tested against these, so they favour
 * being obviously right over being fast; reductions (batch-norm statistics,
 * weight gradients) accumulate in double so that their own rounding is not
 * what a comparison measures.
 *
 * Conventions, after llm.c: arguments are outputs, buffers saved for the
 * backward pass, inputs, weights, sizes. Forward outputs are overwritten (=).
 * Every backward output is accumulated (+=): an activation that feeds several
 * consumers (a block input feeds two branches and the shortcut) collects its
 * gradient from each, so the caller zeroes gradient buffers once per step.
 * No function allocates, prints or exits; buffers never alias unless a
 * comment says they may.
 */
#ifndef SHAKE_REF_LAYERS_H
#define SHAKE_REF_LAYERS_H

#include "../core/model.h"

/*
 * 2-D convolution without bias, any kernel, stride, zero padding and groups,
 * with the shape in c (cin, cout, k, stride, pad, groups, ih, iw, oh, ow; its
 * params offset is not used).
 */
void conv2d_forward(float *out,             /* (n, cout, oh, ow) = */
                    const float *in,        /* (n, cin, ih, iw) */
                    const float *weight,    /* (cout, cin/groups, k, k) */
                    int n, const ConvDesc *c);
void conv2d_backward(float *din,            /* (n, cin, ih, iw) +=, or NULL to skip */
                     float *dweight,        /* (cout, cin/groups, k, k) += */
                     const float *dout,     /* (n, cout, oh, ow) */
                     const float *in,       /* (n, cin, ih, iw) */
                     const float *weight,   /* (cout, cin/groups, k, k) */
                     int n, const ConvDesc *c);

/*
 * Batch norm over (n, hw) per channel with batch statistics (training):
 * out = gamma * (in - mean) * rstd + beta, rstd = 1 / sqrt(var + BN_EPS),
 * var the biased batch variance (PyTorch normalizes with it).
 */
void batchnorm_forward(float *out,          /* (n, c, hw) = */
                       float *mean,         /* (c) = batch mean, saved */
                       float *var,          /* (c) = biased batch variance */
                       float *rstd,         /* (c) = 1/sqrt(var + eps), saved */
                       const float *in,     /* (n, c, hw) */
                       const float *gamma,  /* (c) */
                       const float *beta,   /* (c) */
                       int n, int c, int hw);
/* Batch norm with the running statistics (evaluation). */
void batchnorm_eval_forward(float *out,             /* (n, c, hw) = */
                            const float *in,        /* (n, c, hw) */
                            const float *gamma,     /* (c) */
                            const float *beta,      /* (c) */
                            const float *run_mean,  /* (c) */
                            const float *run_var,   /* (c) */
                            int n, int c, int hw);
/* Gradient of batchnorm_forward, batch statistics included. */
void batchnorm_backward(float *din,         /* (n, c, hw) += */
                        float *dgamma,      /* (c) += */
                        float *dbeta,       /* (c) += */
                        const float *dout,  /* (n, c, hw) */
                        const float *in,    /* (n, c, hw) */
                        const float *mean,  /* (c) from the forward */
                        const float *rstd,  /* (c) from the forward */
                        const float *gamma, /* (c) */
                        int n, int c, int hw);
/*
 * run = (1 - BN_MOMENTUM) * run + BN_MOMENTUM * batch, with the variance made
 * unbiased (var * count / (count - 1)) as PyTorch does. count = n * hw.
 */
void batchnorm_running_update(float *run_mean,      /* (c) updated in place */
                              float *run_var,       /* (c) updated in place */
                              const float *mean,    /* (c) batch mean */
                              const float *var,     /* (c) biased batch variance */
                              int c, long count);

/* out = max(in, 0). */
void relu_forward(float *out,               /* (size) = */
                  const float *in,          /* (size) */
                  size_t size);
/* din += dout where in > 0 (the subgradient at 0 is taken as 0, as PyTorch). */
void relu_backward(float *din,              /* (size) += */
                   const float *dout,       /* (size) */
                   const float *in,         /* (size) the forward's input */
                   size_t size);

/*
 * The shake combination, per image i: out += alpha[i]*b1 + (1-alpha[i])*b2.
 * Accumulates so that the caller writes the shortcut into out first.
 */
void shake_forward(float *out,              /* (n, chw) += */
                   const float *b1,         /* (n, chw) */
                   const float *b2,         /* (n, chw) */
                   const float *alpha,      /* (n) */
                   int n, size_t chw);
/*
 * Not the derivative of shake_forward unless beta = alpha: the backward pass
 * scales by its own coefficient, db1 += beta*g, db2 += (1-beta)*g.
 */
void shake_backward(float *db1,             /* (n, chw) += */
                    float *db2,             /* (n, chw) += */
                    const float *dout,      /* (n, chw) */
                    const float *beta,      /* (n) */
                    int n, size_t chw);

/*
 * The shortcut's one-pixel shift (model.h's ShiftMode):
 * SHIFT_ORIGINAL z[i][j] = x[i-1][j-1], zeros in row 0 and column 0;
 * SHIFT_REIMPL   z[i][j] = x[i+1][j+1], zeros in the last row and column.
 */
void shift_forward(float *out,              /* (nc, h, w) = */
                   const float *in,         /* (nc, h, w) */
                   int nc, int h, int w, ShiftMode mode);
void shift_backward(float *din,             /* (nc, h, w) += */
                    const float *dout,      /* (nc, h, w) */
                    int nc, int h, int w, ShiftMode mode);

/*
 * Average pooling with kernel 1 and stride s, which is subsampling:
 * out[i][j] = in[i*s][j*s], oh = (h-1)/s + 1, ow = (w-1)/s + 1.
 */
void avgpool1_forward(float *out,           /* (nc, oh, ow) = */
                      const float *in,      /* (nc, h, w) */
                      int nc, int h, int w, int s, int oh, int ow);
void avgpool1_backward(float *din,          /* (nc, h, w) += */
                       const float *dout,   /* (nc, oh, ow) */
                       int nc, int h, int w, int s, int oh, int ow);

/* Channel concatenation, a first: out[:, 0:ca] = a, out[:, ca:ca+cb] = b. */
void concat_forward(float *out,             /* (n, ca+cb, hw) = */
                    const float *a,         /* (n, ca, hw) */
                    const float *b,         /* (n, cb, hw) */
                    int n, int ca, int cb, int hw);
/* The split: da += dout[:, 0:ca], db += dout[:, ca:]. */
void concat_backward(float *da,             /* (n, ca, hw) += */
                     float *db,             /* (n, cb, hw) += */
                     const float *dout,     /* (n, ca+cb, hw) */
                     int n, int ca, int cb, int hw);

/* Global average pooling: out[i][c] = mean over hw of in[i][c]. */
void global_avgpool_forward(float *out,     /* (n, c) = */
                            const float *in,/* (n, c, hw) */
                            int n, int c, int hw);
void global_avgpool_backward(float *din,    /* (n, c, hw) += */
                             const float *dout, /* (n, c) */
                             int n, int c, int hw);

/* Fully connected with bias: out = in @ weight^T + bias (PyTorch Linear). */
void fc_forward(float *out,                 /* (n, oc) = */
                const float *in,            /* (n, ic) */
                const float *weight,        /* (oc, ic) */
                const float *bias,          /* (oc) */
                int n, int ic, int oc);
void fc_backward(float *din,                /* (n, ic) += */
                 float *dweight,            /* (oc, ic) += */
                 float *dbias,              /* (oc) += */
                 const float *dout,         /* (n, oc) */
                 const float *in,           /* (n, ic) */
                 const float *weight,       /* (oc, ic) */
                 int n, int ic, int oc);

#endif
