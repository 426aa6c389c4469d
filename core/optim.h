/*
 * SGD with Nesterov momentum (PyTorch's SGD(nesterov=True), dampening 0,
 * weight decay on every parameter) and the paper's cosine learning rate.
 */
#ifndef SHAKE_OPTIM_H
#define SHAKE_OPTIM_H

#include <stddef.h>
#include <stdint.h>

/*
 * g = grad + wd*p;  buf = momentum*buf + g;  p -= lr * (g + momentum*buf).
 * A zero buffer on the first step gives PyTorch's buf = g.
 */
void sgd_nesterov(float *params, float *momentum_buf, const float *grads,
                  size_t n, float lr, float momentum, float wd);

/* lr = 0.5 * base * (1 + cos(pi * t / total)), t the 1-based iteration. */
double cosine_lr(double base, int64_t t, int64_t total);

#endif
