/*
 * backend_ref against PyTorch: the .bin files in tests/fixtures hold what the
 * separately written scripts/torch_model.py computes in float64 for small
 * networks
 * (tests/fixtures/make_fixtures.py documents the format): training logits
 * and loss with per-image alpha, the gradients with a different per-image
 * beta, the running statistics after that forward, and evaluation logits.
 * The fixtures also name every tensor, which checks that model.c lays the
 * arenas out in PyTorch's state_dict order. No Python at run time.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"
#include "backend.h"

/*
 * Tolerances, all relative to the largest magnitude in the compared tensor.
 * The fixtures are float64 results rounded once, so the differences are the
 * C backend's float32 rounding: about 6e-8 per operation, grown through up
 * to 60 layers and the batch norms' division by small batch spreads (stage 3
 * channels have 16 values). Measured on these five networks: logits within
 * 8e-7, running statistics 2e-7, gradients 8e-6 (and their norms 5e-6).
 * The limits leave a margin of about 10x and stay far below what any error
 * in the definition gives: the other shift direction, a missing relu or a
 * branch given the wrong coefficient move logits and gradients by 1e-2 or
 * more.
 */
#define LOGIT_TOL 1e-5
#define STATE_TOL 2e-6
#define GRAD_TOL 1e-4
#define LOSS_TOL 1e-5       /* absolute, on a loss of about 2.4: 1e-5 of logits of O(1) */

typedef struct {
    char name[97];
    int arena, count, nsample;
    float lo, hi;
    double grad_norm;
} FixTensor;

typedef struct {
    char *buf;
    size_t len, pos;
} Reader;

static void rd(Reader *r, void *dst, size_t bytes)
{
    if (r->pos + bytes > r->len)
        fail_msg("fixture truncated at byte %zu", r->pos);
    memcpy(dst, r->buf + r->pos, bytes);
    r->pos += bytes;
}

static int32_t rd_i32(Reader *r)
{
    int32_t v;
    rd(r, &v, 4);
    return v;
}

static float *rd_floats(Reader *r, size_t n)
{
    float *p = calloc(n ? n : 1, sizeof(float));
    assert_non_null(p);
    rd(r, p, n * sizeof(float));
    return p;
}

static void check_fixture(const char *file)
{
    char rel[256];
    snprintf(rel, sizeof rel, "tests/fixtures/%s", file);
    Reader r = {0};
    r.buf = tu_read_file(tu_source_path(rel), &r.len);
    if (!r.buf)
        fail_msg("cannot read %s (make it with tests/fixtures/make_fixtures.py)", rel);
    char magic[8];
    rd(&r, magic, 8);
    assert_memory_equal(magic, "SHAKEFX1", 8);
    int32_t h[12];
    for (int i = 0; i < 12; i++)
        h[i] = rd_i32(&r);
    ModelSpec spec = {(Arch)h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7], (ShiftMode)h[8]};
    const int n = h[9], ntensors = h[10], nblocks = h[11];
    uint64_t seed;
    double param_sum, loss_want;
    rd(&r, &seed, 8);
    rd(&r, &param_sum, 8);
    rd(&r, &loss_want, 8);

    Model m;
    Err e;
    tu_model(&m, &spec);
    char desc[64];
    model_describe(&m, desc, sizeof desc);
    printf("%s: %s, %s shift\n", file, desc, spec.shift == SHIFT_ORIGINAL ? "original" : "reimpl");
    assert_int_equal(ntensors, m.ntensors);
    assert_int_equal(nblocks, m.nblocks);

    /* the tensor table: names, arenas and sizes in model.c's order */
    FixTensor *ft = calloc((size_t)ntensors, sizeof *ft);
    float *params = calloc(m.nparams, sizeof(float));
    float *state = calloc(m.nstate, sizeof(float));
    for (int t = 0; t < ntensors; t++) {
        rd(&r, ft[t].name, 96);
        ft[t].arena = rd_i32(&r);
        ft[t].count = rd_i32(&r);
        rd(&r, &ft[t].lo, 4);
        rd(&r, &ft[t].hi, 4);
        ft[t].nsample = rd_i32(&r);
        rd(&r, &ft[t].grad_norm, 8);
        const TensorInfo *T = &m.tensors[t];
        if (strcmp(ft[t].name, T->name) != 0)
            fail_msg("tensor %d: PyTorch has %s, model.c %s", t, ft[t].name, T->name);
        assert_int_equal(ft[t].arena, (int)T->arena);
        assert_int_equal((size_t)ft[t].count, T->count);
        tu_fill_uniform((T->arena == T_PARAM ? params : state) + T->offset, T->count,
                        seed + (uint64_t)t, ft[t].lo, ft[t].hi);
    }
    double sum = 0;
    for (size_t i = 0; i < m.nparams; i++)
        sum += params[i];
    /* the same float32 values summed in a different order: 1e-9 relative */
    if (fabs(sum - param_sum) > 1e-9 * fabs(param_sum) + 1e-9)
        fail_msg("generated parameters differ from the fixture's: sum %.12g vs %.12g", sum,
                 param_sum);

    const size_t nx = (size_t)n * spec.in_c * spec.in_h * spec.in_w;
    const size_t nl = (size_t)n * spec.classes;
    float *x = rd_floats(&r, nx);
    float *alpha = rd_floats(&r, (size_t)nblocks * n);
    float *beta = rd_floats(&r, (size_t)nblocks * n);
    int *labels = calloc((size_t)n, sizeof(int));
    for (int i = 0; i < n; i++)
        labels[i] = rd_i32(&r);
    float *logits_want = rd_floats(&r, nl);
    float *state_want = rd_floats(&r, m.nstate);
    float *eval_want = rd_floats(&r, nl);

    BackendOptions o = {.max_batch = n, .threads = 0, .device = 0, .precision = PRECISION_FP32};
    Backend *be = backend_ref.create(&m, &o, &e);
    assert_non_null(be);
    assert_int_equal(backend_ref.load(be, params, state, NULL, &e), 0);
    float *logits = calloc(nl, sizeof(float)), *dlogits = calloc(nl, sizeof(float));
    assert_int_equal(backend_ref.forward(be, logits, x, alpha, n, 1, &e), 0);
    const double le = tu_rel_err(logits, logits_want, nl);
    const double loss = tu_xent(dlogits, logits, labels, n, spec.classes);
    printf("  train logits rel err %.1e, loss %.7f vs %.7f\n", le, loss, loss_want);
    assert_true(le < LOGIT_TOL);
    assert_true(fabs(loss - loss_want) < LOSS_TOL);

    float *state_got = calloc(m.nstate, sizeof(float)), *grads = calloc(m.nparams, sizeof(float));
    assert_int_equal(backend_ref.backward(be, dlogits, beta, n, &e), 0);
    assert_int_equal(backend_ref.store(be, NULL, state_got, NULL, grads, &e), 0);
    double worst_state = 0;
    for (int t = 0; t < ntensors; t++) {
        const TensorInfo *T = &m.tensors[t];
        if (T->arena != T_STATE)
            continue;
        const double se = tu_rel_err(state_got + T->offset, state_want + T->offset, T->count);
        if (se >= STATE_TOL)
            fail_msg("%s rel err %.2e", T->name, se);
        worst_state = se > worst_state ? se : worst_state;
    }
    printf("  running statistics worst rel err %.1e\n", worst_state);

    /* gradients: the sampled elements, and the norm of the whole tensor */
    double worst_grad = 0, worst_norm = 0;
    const char *worst_name = "";
    for (int t = 0; t < ntensors; t++) {
        const TensorInfo *T = &m.tensors[t];
        if (T->arena != T_PARAM)
            continue;
        const int ns = ft[t].nsample;
        assert_true(ns > 0);
        float *want = rd_floats(&r, (size_t)ns), *got = calloc((size_t)ns, sizeof(float));
        double norm = 0;
        for (int j = 0; j < ns; j++)
            got[j] = grads[T->offset + (size_t)((uint64_t)j * T->count / (uint64_t)ns)];
        for (size_t i = 0; i < T->count; i++)
            norm += (double)grads[T->offset + i] * grads[T->offset + i];
        const double ge = tu_rel_err(got, want, (size_t)ns);
        const double ne = fabs(sqrt(norm) - ft[t].grad_norm) / ft[t].grad_norm;
        if (ge >= GRAD_TOL || ne >= GRAD_TOL)
            fail_msg("%s: gradient rel err %.2e, norm rel err %.2e", T->name, ge, ne);
        if (ge > worst_grad) {
            worst_grad = ge;
            worst_name = T->name;
        }
        worst_norm = ne > worst_norm ? ne : worst_norm;
        free(want);
        free(got);
    }
    printf("  gradients worst rel err %.1e (%s), norms %.1e\n", worst_grad, worst_name,
           worst_norm);
    assert_int_equal(r.pos, r.len);

    /* evaluation with the running statistics the training forward left */
    assert_int_equal(backend_ref.forward(be, logits, x, NULL, n, 0, &e), 0);
    const double ee = tu_rel_err(logits, eval_want, nl);
    printf("  eval logits rel err %.1e\n", ee);
    assert_true(ee < LOGIT_TOL);

    backend_ref.destroy(be);
    free(r.buf); free(ft); free(params); free(state); free(x); free(alpha); free(beta);
    free(labels); free(logits_want); free(state_want); free(eval_want); free(logits);
    free(dlogits); free(state_got); free(grads);
    model_free(&m);
}

static void test_resnet8_original(void **state)
{
    (void)state;
    check_fixture("resnet8_w4_original.bin");
}

static void test_resnet8_reimpl(void **state)
{
    (void)state;
    check_fixture("resnet8_w4_reimpl.bin");
}

static void test_resnet14_identity(void **state)
{
    (void)state;
    check_fixture("resnet14_w4_original.bin");
}

static void test_resnext11(void **state)
{
    (void)state;
    check_fixture("resnext11_g2_w4.bin");
}

static void test_resnext20_identity(void **state)
{
    (void)state;
    check_fixture("resnext20_g2_w4.bin");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_resnet8_original),
        cmocka_unit_test(test_resnet8_reimpl),
        cmocka_unit_test(test_resnet14_identity),
        cmocka_unit_test(test_resnext11),
        cmocka_unit_test(test_resnext20_identity),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
