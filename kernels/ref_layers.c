/*
 * The reference layers; see ref_layers.h for the conventions. Parallel loops
 * split over an outer dimension whose iterations write disjoint outputs, so
 * results do not depend on the thread count and no reduction crosses threads.
 */
#include "ref_layers.h"

#include <math.h>

/*
 * The outputs o in [0, out) whose input position o*stride - pad + koff lies
 * in [0, in): [*lo, *hi). Hoisting the bounds out of the inner loops keeps
 * those loops branch-free without changing what they compute.
 */
static void valid_range(int koff, int stride, int pad, int in, int out, int *lo, int *hi)
{
    int a = pad - koff;                 /* need o*stride >= a */
    int b = in + pad - koff;            /* need o*stride < b */
    *lo = a <= 0 ? 0 : (a + stride - 1) / stride;
    *hi = b <= 0 ? 0 : (b + stride - 1) / stride;
    if (*hi > out)
        *hi = out;
    if (*lo > *hi)
        *lo = *hi;
}

void conv2d_forward(float *out, const float *in, const float *weight, int n, const ConvDesc *c)
{
    const int cin_g = c->cin / c->groups, cout_g = c->cout / c->groups, k = c->k;
    const size_t in_plane = (size_t)c->ih * c->iw, out_plane = (size_t)c->oh * c->ow;
#pragma omp parallel for collapse(2) schedule(static)
    for (int b = 0; b < n; b++) {
        for (int oc = 0; oc < c->cout; oc++) {
            const int g = oc / cout_g;
            float *o = out + ((size_t)b * c->cout + oc) * out_plane;
            for (size_t p = 0; p < out_plane; p++)
                o[p] = 0.0f;
            /* kernel offsets outermost: the valid output window depends on
             * them only, and the inner loop runs along an output row */
            for (int ky = 0; ky < k; ky++) {
                int y0, y1;
                valid_range(ky, c->stride, c->pad, c->ih, c->oh, &y0, &y1);
                for (int kx = 0; kx < k; kx++) {
                    int x0, x1;
                    valid_range(kx, c->stride, c->pad, c->iw, c->ow, &x0, &x1);
                    for (int icg = 0; icg < cin_g; icg++) {
                        const float *x = in + ((size_t)b * c->cin + (size_t)g * cin_g + icg) * in_plane;
                        const float wv = weight[(((size_t)oc * cin_g + icg) * k + ky) * k + kx];
                        for (int oy = y0; oy < y1; oy++) {
                            const float *xr = x + (size_t)(oy * c->stride - c->pad + ky) * c->iw;
                            float *orow = o + (size_t)oy * c->ow;
                            for (int ox = x0; ox < x1; ox++)
                                orow[ox] += wv * xr[ox * c->stride - c->pad + kx];
                        }
                    }
                }
            }
        }
    }
}

void conv2d_backward(float *din, float *dweight, const float *dout, const float *in,
                     const float *weight, int n, const ConvDesc *c)
{
    const int cin_g = c->cin / c->groups, cout_g = c->cout / c->groups, k = c->k;
    const size_t in_plane = (size_t)c->ih * c->iw, out_plane = (size_t)c->oh * c->ow;

    /* din: each (image, input channel) plane gathers from the output
     * channels of its group, so threads own whole planes. */
    if (din) {
#pragma omp parallel for collapse(2) schedule(static)
        for (int b = 0; b < n; b++) {
            for (int ic = 0; ic < c->cin; ic++) {
                const int g = ic / cin_g, icg = ic % cin_g;
                float *dx = din + ((size_t)b * c->cin + ic) * in_plane;
                for (int ky = 0; ky < k; ky++) {
                    int y0, y1;
                    valid_range(ky, c->stride, c->pad, c->ih, c->oh, &y0, &y1);
                    for (int kx = 0; kx < k; kx++) {
                        int x0, x1;
                        valid_range(kx, c->stride, c->pad, c->iw, c->ow, &x0, &x1);
                        for (int ocg = 0; ocg < cout_g; ocg++) {
                            const int oc = g * cout_g + ocg;
                            const float *dy = dout + ((size_t)b * c->cout + oc) * out_plane;
                            const float wv = weight[(((size_t)oc * cin_g + icg) * k + ky) * k + kx];
                            for (int oy = y0; oy < y1; oy++) {
                                float *dxr = dx + (size_t)(oy * c->stride - c->pad + ky) * c->iw;
                                const float *dyr = dy + (size_t)oy * c->ow;
                                for (int ox = x0; ox < x1; ox++)
                                    dxr[ox * c->stride - c->pad + kx] += wv * dyr[ox];
                            }
                        }
                    }
                }
            }
        }
    }

    /* dweight: one sum over images and output positions per weight,
     * accumulated in double since it can run over many terms. */
#pragma omp parallel for schedule(static)
    for (int oc = 0; oc < c->cout; oc++) {
        const int g = oc / cout_g;
        for (int ky = 0; ky < k; ky++) {
            int y0, y1;
            valid_range(ky, c->stride, c->pad, c->ih, c->oh, &y0, &y1);
            for (int kx = 0; kx < k; kx++) {
                int x0, x1;
                valid_range(kx, c->stride, c->pad, c->iw, c->ow, &x0, &x1);
                for (int icg = 0; icg < cin_g; icg++) {
                    const int ic = g * cin_g + icg;
                    double s = 0.0;
                    for (int b = 0; b < n; b++) {
                        const float *x = in + ((size_t)b * c->cin + ic) * in_plane;
                        const float *dy = dout + ((size_t)b * c->cout + oc) * out_plane;
                        for (int oy = y0; oy < y1; oy++) {
                            const float *xr = x + (size_t)(oy * c->stride - c->pad + ky) * c->iw;
                            const float *dyr = dy + (size_t)oy * c->ow;
                            for (int ox = x0; ox < x1; ox++)
                                s += (double)dyr[ox] * xr[ox * c->stride - c->pad + kx];
                        }
                    }
                    dweight[(((size_t)oc * cin_g + icg) * k + ky) * k + kx] += (float)s;
                }
            }
        }
    }
}

void batchnorm_forward(float *out, float *mean, float *var, float *rstd, const float *in,
                       const float *gamma, const float *beta, int n, int c, int hw)
{
    const double count = (double)n * hw;
#pragma omp parallel for schedule(static)
    for (int ch = 0; ch < c; ch++) {
        /* two passes: the variance as a mean of squared deviations, which
         * keeps its precision when the mean is large against the spread */
        double s = 0.0;
        for (int b = 0; b < n; b++) {
            const float *x = in + ((size_t)b * c + ch) * hw;
            for (int p = 0; p < hw; p++)
                s += x[p];
        }
        const double m = s / count;
        double sq = 0.0;
        for (int b = 0; b < n; b++) {
            const float *x = in + ((size_t)b * c + ch) * hw;
            for (int p = 0; p < hw; p++)
                sq += (x[p] - m) * (x[p] - m);
        }
        const double v = sq / count;
        const double rs = 1.0 / sqrt(v + (double)BN_EPS);
        mean[ch] = (float)m;
        var[ch] = (float)v;
        rstd[ch] = (float)rs;
        for (int b = 0; b < n; b++) {
            const float *x = in + ((size_t)b * c + ch) * hw;
            float *y = out + ((size_t)b * c + ch) * hw;
            for (int p = 0; p < hw; p++)
                y[p] = (float)(gamma[ch] * (x[p] - m) * rs + beta[ch]);
        }
    }
}

void batchnorm_eval_forward(float *out, const float *in, const float *gamma, const float *beta,
                            const float *run_mean, const float *run_var, int n, int c, int hw)
{
#pragma omp parallel for schedule(static)
    for (int ch = 0; ch < c; ch++) {
        const double rs = 1.0 / sqrt((double)run_var[ch] + (double)BN_EPS);
        for (int b = 0; b < n; b++) {
            const float *x = in + ((size_t)b * c + ch) * hw;
            float *y = out + ((size_t)b * c + ch) * hw;
            for (int p = 0; p < hw; p++)
                y[p] = (float)(gamma[ch] * (x[p] - (double)run_mean[ch]) * rs + beta[ch]);
        }
    }
}

void batchnorm_backward(float *din, float *dgamma, float *dbeta, const float *dout,
                        const float *in, const float *mean, const float *rstd,
                        const float *gamma, int n, int c, int hw)
{
    const double count = (double)n * hw;
#pragma omp parallel for schedule(static)
    for (int ch = 0; ch < c; ch++) {
        /* with xhat = (x - mean) * rstd and the batch statistics depending
         * on every x: dx = gamma*rstd * (dy - mean(dy) - xhat*mean(dy*xhat)) */
        const double m = mean[ch], rs = rstd[ch];
        double sdy = 0.0, sdyx = 0.0;
        for (int b = 0; b < n; b++) {
            const float *x = in + ((size_t)b * c + ch) * hw;
            const float *dy = dout + ((size_t)b * c + ch) * hw;
            for (int p = 0; p < hw; p++) {
                sdy += dy[p];
                sdyx += dy[p] * (x[p] - m) * rs;
            }
        }
        dbeta[ch] += (float)sdy;
        dgamma[ch] += (float)sdyx;
        const double k = gamma[ch] * rs;
        for (int b = 0; b < n; b++) {
            const float *x = in + ((size_t)b * c + ch) * hw;
            const float *dy = dout + ((size_t)b * c + ch) * hw;
            float *dx = din + ((size_t)b * c + ch) * hw;
            for (int p = 0; p < hw; p++) {
                const double xhat = (x[p] - m) * rs;
                dx[p] += (float)(k * (dy[p] - sdy / count - xhat * sdyx / count));
            }
        }
    }
}

void batchnorm_running_update(float *run_mean, float *run_var, const float *mean,
                              const float *var, int c, long count)
{
    /* A single value per channel has no unbiased variance (PyTorch refuses
     * to train on it); the biased one, 0, is kept rather than dividing by 0. */
    const double unbias = count > 1 ? (double)count / (double)(count - 1) : 1.0;
    const double mom = BN_MOMENTUM;
    for (int ch = 0; ch < c; ch++) {
        run_mean[ch] = (float)((1.0 - mom) * run_mean[ch] + mom * mean[ch]);
        run_var[ch] = (float)((1.0 - mom) * run_var[ch] + mom * var[ch] * unbias);
    }
}

void relu_forward(float *out, const float *in, size_t size)
{
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < size; i++)
        out[i] = in[i] > 0.0f ? in[i] : 0.0f;
}

void relu_backward(float *din, const float *dout, const float *in, size_t size)
{
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < size; i++)
        if (in[i] > 0.0f)
            din[i] += dout[i];
}

void shake_forward(float *out, const float *b1, const float *b2, const float *alpha,
                   int n, size_t chw)
{
#pragma omp parallel for schedule(static)
    for (int i = 0; i < n; i++) {
        const float a = alpha[i];
        for (size_t j = i * chw; j < (i + 1) * chw; j++)
            out[j] += a * b1[j] + (1.0f - a) * b2[j];
    }
}

void shake_backward(float *db1, float *db2, const float *dout, const float *beta,
                    int n, size_t chw)
{
#pragma omp parallel for schedule(static)
    for (int i = 0; i < n; i++) {
        const float bt = beta[i];
        for (size_t j = i * chw; j < (i + 1) * chw; j++) {
            db1[j] += bt * dout[j];
            db2[j] += (1.0f - bt) * dout[j];
        }
    }
}

/* The source row/column offset of a shifted pixel: z[i][j] = x[i+d][j+d]. */
static int shift_offset(ShiftMode mode)
{
    return mode == SHIFT_ORIGINAL ? -1 : +1;
}

void shift_forward(float *out, const float *in, int nc, int h, int w, ShiftMode mode)
{
    const int d = shift_offset(mode);
#pragma omp parallel for schedule(static)
    for (int p = 0; p < nc; p++) {
        const float *x = in + (size_t)p * h * w;
        float *z = out + (size_t)p * h * w;
        for (int i = 0; i < h; i++)
            for (int j = 0; j < w; j++) {
                const int si = i + d, sj = j + d;
                z[i * w + j] = (si >= 0 && si < h && sj >= 0 && sj < w) ? x[si * w + sj] : 0.0f;
            }
    }
}

void shift_backward(float *din, const float *dout, int nc, int h, int w, ShiftMode mode)
{
    const int d = shift_offset(mode);
#pragma omp parallel for schedule(static)
    for (int p = 0; p < nc; p++) {
        float *dx = din + (size_t)p * h * w;
        const float *dz = dout + (size_t)p * h * w;
        for (int i = 0; i < h; i++)
            for (int j = 0; j < w; j++) {
                const int si = i + d, sj = j + d;
                if (si >= 0 && si < h && sj >= 0 && sj < w)
                    dx[si * w + sj] += dz[i * w + j];
            }
    }
}

void avgpool1_forward(float *out, const float *in, int nc, int h, int w, int s, int oh, int ow)
{
#pragma omp parallel for schedule(static)
    for (int p = 0; p < nc; p++) {
        const float *x = in + (size_t)p * h * w;
        float *y = out + (size_t)p * oh * ow;
        for (int i = 0; i < oh; i++)
            for (int j = 0; j < ow; j++)
                y[i * ow + j] = x[(i * s) * w + j * s];
    }
}

void avgpool1_backward(float *din, const float *dout, int nc, int h, int w, int s, int oh, int ow)
{
#pragma omp parallel for schedule(static)
    for (int p = 0; p < nc; p++) {
        float *dx = din + (size_t)p * h * w;
        const float *dy = dout + (size_t)p * oh * ow;
        for (int i = 0; i < oh; i++)
            for (int j = 0; j < ow; j++)
                dx[(i * s) * w + j * s] += dy[i * ow + j];
    }
}

void concat_forward(float *out, const float *a, const float *b, int n, int ca, int cb, int hw)
{
    const size_t sa = (size_t)ca * hw, sb = (size_t)cb * hw;
    for (int i = 0; i < n; i++) {
        float *y = out + (size_t)i * (sa + sb);
        for (size_t j = 0; j < sa; j++)
            y[j] = a[i * sa + j];
        for (size_t j = 0; j < sb; j++)
            y[sa + j] = b[i * sb + j];
    }
}

void concat_backward(float *da, float *db, const float *dout, int n, int ca, int cb, int hw)
{
    const size_t sa = (size_t)ca * hw, sb = (size_t)cb * hw;
    for (int i = 0; i < n; i++) {
        const float *dy = dout + (size_t)i * (sa + sb);
        for (size_t j = 0; j < sa; j++)
            da[i * sa + j] += dy[j];
        for (size_t j = 0; j < sb; j++)
            db[i * sb + j] += dy[sa + j];
    }
}

void global_avgpool_forward(float *out, const float *in, int n, int c, int hw)
{
    for (int p = 0; p < n * c; p++) {
        const float *x = in + (size_t)p * hw;
        double s = 0.0;
        for (int q = 0; q < hw; q++)
            s += x[q];
        out[p] = (float)(s / hw);
    }
}

void global_avgpool_backward(float *din, const float *dout, int n, int c, int hw)
{
    for (int p = 0; p < n * c; p++) {
        float *dx = din + (size_t)p * hw;
        const float g = dout[p] / (float)hw;
        for (int q = 0; q < hw; q++)
            dx[q] += g;
    }
}

void fc_forward(float *out, const float *in, const float *weight, const float *bias,
                int n, int ic, int oc)
{
    for (int b = 0; b < n; b++)
        for (int o = 0; o < oc; o++) {
            const float *x = in + (size_t)b * ic, *wr = weight + (size_t)o * ic;
            double s = bias[o];
            for (int i = 0; i < ic; i++)
                s += (double)x[i] * wr[i];
            out[(size_t)b * oc + o] = (float)s;
        }
}

void fc_backward(float *din, float *dweight, float *dbias, const float *dout, const float *in,
                 const float *weight, int n, int ic, int oc)
{
    for (int b = 0; b < n; b++)
        for (int i = 0; i < ic; i++) {
            double s = 0.0;
            for (int o = 0; o < oc; o++)
                s += (double)dout[(size_t)b * oc + o] * weight[(size_t)o * ic + i];
            din[(size_t)b * ic + i] += (float)s;
        }
    for (int o = 0; o < oc; o++) {
        double sb = 0.0;
        for (int b = 0; b < n; b++)
            sb += dout[(size_t)b * oc + o];
        dbias[o] += (float)sb;
        for (int i = 0; i < ic; i++) {
            double s = 0.0;
            for (int b = 0; b < n; b++)
                s += (double)dout[(size_t)b * oc + o] * in[(size_t)b * ic + i];
            dweight[(size_t)o * ic + i] += (float)s;
        }
    }
}
