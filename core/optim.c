/* SGD with Nesterov momentum and the cosine schedule; see optim.h. */
#include "optim.h"

#include <math.h>

void sgd_nesterov(float *params, float *momentum_buf, const float *grads,
                  size_t n, float lr, float momentum, float wd)
{
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) {
        float g = grads[i] + wd * params[i];
        float buf = momentum * momentum_buf[i] + g;
        momentum_buf[i] = buf;
        params[i] -= lr * (g + momentum * buf);
    }
}

double cosine_lr(double base, int64_t t, int64_t total)
{
    if (total <= 0)
        return base;
    return 0.5 * base * (1.0 + cos(M_PI * (double)t / (double)total));
}
