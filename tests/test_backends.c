/*
 * The cpu backend against `ref` (the comparison of backend_compare.h; the
 * cuda backend runs it in test_cuda.c) on small networks of both block
 * types, both shifts, odd image sizes and channel counts that are and are
 * not multiples of 8 and 16 (oneDNN pads blocked layouts): forward logits
 * in training and evaluation mode, the updated running statistics, every
 * parameter gradient, and the parameters after a few SGD steps. The cpu
 * backend runs each case on both of its layouts, nChw16c (AVX-512) and
 * nChw8c (AVX2 and older), whichever this machine would pick.
 *
 * Tolerance: float32 with different summation orders (oneDNN's blocked
 * convolutions and batch-norm reductions vs ref's double accumulation)
 * differs by a few ulps per op; relative to each tensor's scale the
 * discrepancy stays well below 1e-4, the bound asked of every backend.
 * Parameters after several SGD steps pass through batch norm with batch
 * statistics of 4 images, which amplifies differences, so that comparison
 * uses 1e-3.
 */
#include "testutil.h"

#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "backend_compare.h"
#include "model.h"
#include "shake.h"
#include "train.h"

static const CompareCase cases[] = {
    {"resnet d8 w16 8x8 original", {ARCH_RESNET, 8, 16, 1, 10, 3, 8, 8, SHIFT_ORIGINAL}, 4,
     SHAKE_SHAKE, SHAKE_SHAKE, LEVEL_IMAGE},
    {"resnet d8 w16 8x8 reimpl batch-level", {ARCH_RESNET, 8, 16, 1, 10, 3, 8, 8, SHIFT_REIMPL},
     4, SHAKE_SHAKE, SHAKE_SHAKE, LEVEL_BATCH},
    {"resnet d14 w32 9x9 (odd sizes)", {ARCH_RESNET, 14, 32, 1, 10, 3, 9, 9, SHIFT_ORIGINAL}, 3,
     SHAKE_SHAKE, SHAKE_SHAKE, LEVEL_IMAGE},
    {"resnet d8 w6 1ch 7x7 (padded channels)", {ARCH_RESNET, 8, 6, 1, 7, 1, 7, 7, SHIFT_REIMPL},
     5, SHAKE_SHAKE, SHAKE_SHAKE, LEVEL_IMAGE},
    {"resnext d11 g2 w16 8x8", {ARCH_RESNEXT, 11, 16, 2, 10, 3, 8, 8, SHIFT_ORIGINAL}, 4,
     SHAKE_SHAKE, SHAKE_SHAKE, LEVEL_IMAGE},
    {"resnet d8 w24 8x8 (multiples of 8, not 16)", {ARCH_RESNET, 8, 24, 1, 10, 3, 8, 8,
     SHIFT_ORIGINAL}, 4, SHAKE_SHAKE, SHAKE_SHAKE, LEVEL_IMAGE},
    {"resnext d11 g2 w8 8x8 (groups of 8)", {ARCH_RESNEXT, 11, 8, 2, 10, 3, 8, 8,
     SHIFT_ORIGINAL}, 4, SHAKE_SHAKE, SHAKE_SHAKE, LEVEL_IMAGE},
};

/* the cpu backend's layouts (SHAKE_CPU_BLOCK), as its description names them */
static const struct {
    const char *block, *layout;
} layouts[] = {{"8", "on nChw8c"}, {"16", "on nChw16c"}};

static const BackendOptions float32_2threads = {.max_batch = 0, .threads = 2, .device = 0,
                                                .precision = PRECISION_FP32};

static void test_backend(void **ctx)
{
    const char *name = *ctx;
    const BackendOps *ops = backend_find(name);
    if (!ops)
        skip();
    const CompareTol tol = {1e-4, 1e-3};
    for (size_t l = 0; l < sizeof layouts / sizeof layouts[0]; l++) {
        setenv("SHAKE_CPU_BLOCK", layouts[l].block, 1);
        print_message("SHAKE_CPU_BLOCK=%s\n", layouts[l].block);
        for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
            compare_case(ops, &float32_2threads, &cases[i], &tol);
    }
    unsetenv("SHAKE_CPU_BLOCK");
}

/* SHAKE_CPU_BLOCK picks the layout (the description names it), and a
 * value that is not a layout is an error naming it. */
static void test_cpu_layout(void **ctx)
{
    (void)ctx;
    const BackendOps *ops = backend_find("cpu");
    if (!ops)
        skip();
    Model m;
    tu_model(&m, &cases[0].spec);
    BackendOptions o = float32_2threads;
    o.max_batch = 4;
    char hw[600];
    for (size_t l = 0; l < sizeof layouts / sizeof layouts[0]; l++) {
        setenv("SHAKE_CPU_BLOCK", layouts[l].block, 1);
        Backend *be = compare_create(ops, &m, &o, 4);
        ops->describe(be, hw, sizeof hw);
        if (!strstr(hw, layouts[l].layout))
            fail_msg("SHAKE_CPU_BLOCK=%s: \"%s\" does not say \"%s\"", layouts[l].block, hw,
                     layouts[l].layout);
        ops->destroy(be);
    }
    setenv("SHAKE_CPU_BLOCK", "12", 1);
    Err e = {{0}};
    Backend *be = ops->create(&m, &o, &e);
    unsetenv("SHAKE_CPU_BLOCK");
    if (be)
        fail_msg("SHAKE_CPU_BLOCK=12 made a backend");
    if (!strstr(e.msg, "SHAKE_CPU_BLOCK=12"))
        fail_msg("unclear error: %s", e.msg);
    model_free(&m);
}

/* A mismatch must be caught: perturb one gradient value through a wrong
 * beta and see the comparison fail. */
static void test_detects_wrong_beta(void **ctx)
{
    (void)ctx;
    const BackendOps *ops = backend_find("cpu");
    if (!ops)
        skip();
    const CompareCase *c = &cases[0];
    Model m;
    tu_model(&m, &c->spec);
    int n = c->n, K = c->spec.classes;
    size_t img = (size_t)c->spec.in_c * c->spec.in_h * c->spec.in_w;
    float *params = malloc(m.nparams * 4), *state = malloc(m.nstate * 4);
    float *x = malloc(n * img * 4), *alpha = malloc(m.nblocks * n * 4);
    float *beta = malloc(m.nblocks * n * 4), *beta2 = malloc(m.nblocks * n * 4);
    float *lg = malloc(n * K * 4), *dl = malloc(n * K * 4);
    float *g1 = malloc(m.nparams * 4), *g2 = malloc(m.nparams * 4);
    int labels[8] = {0, 1, 2, 3, 4, 5, 6, 7};
    model_init(&m, 1, params, state);
    tu_fill_uniform(x, n * img, 9, -1, 1);
    shake_draw(alpha, beta, m.nblocks, n, 3, 0, SHAKE_SHAKE, SHAKE_SHAKE, LEVEL_IMAGE);
    memcpy(beta2, beta, m.nblocks * n * 4);
    beta2[0] = 1.0f - beta2[0];
    Backend *be = compare_create(ops, &m, &float32_2threads, n);
    COMPARE_OK(ops->load(be, params, state, NULL, ep));
    COMPARE_OK(ops->forward(be, lg, x, alpha, n, 1, ep));
    softmax_xent(dl, NULL, lg, labels, n, K);
    COMPARE_OK(ops->backward(be, dl, beta, n, ep));
    COMPARE_OK(ops->store(be, NULL, NULL, NULL, g1, ep));
    COMPARE_OK(ops->backward(be, dl, beta2, n, ep));
    COMPARE_OK(ops->store(be, NULL, NULL, NULL, g2, ep));
    /* block 0's branch weights see a different beta for image 0 */
    assert_true(tu_rel_err(g1, g2, m.nparams) > 1e-3);
    ops->destroy(be);
    free(params); free(state); free(x); free(alpha); free(beta); free(beta2);
    free(lg); free(dl); free(g1); free(g2);
    model_free(&m);
}

/* Each host backend says what it computes on: this machine's processor,
 * the backend's library and its thread count (the run's records keep it). */
static void test_describe(void **ctx)
{
    (void)ctx;
    char cpu[300], hw[600];
    host_cpu(cpu, sizeof cpu);
    assert_true(strlen(cpu) > 8 && strstr(cpu, " core"));
    const struct {
        const char *backend, *says;
    } want[] = {{"ref", ", with plain C, 2 threads"}, {"cpu", ", with oneDNN "}};
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        const BackendOps *ops = backend_find(want[i].backend);
        if (!ops)
            continue;
        Model m;
        tu_model(&m, &cases[0].spec);
        Backend *be = compare_create(ops, &m, &float32_2threads, 4);
        hw[0] = '\0';
        ops->describe(be, hw, sizeof hw);
        if (strncmp(hw, cpu, strlen(cpu)) != 0 || !strstr(hw, want[i].says))
            fail_msg("%s: \"%s\" does not start with the processor (%s) and name \"%s\"",
                     want[i].backend, hw, cpu, want[i].says);
        ops->destroy(be);
        model_free(&m);
    }
}

int main(void)
{
    static const char cpu[] = "cpu";
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_prestate(test_backend, (void *)cpu),
        cmocka_unit_test(test_detects_wrong_beta),
        cmocka_unit_test(test_describe),
        cmocka_unit_test(test_cpu_layout),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
