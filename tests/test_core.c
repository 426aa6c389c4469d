/*
 * The small pure pieces every backend relies on: Philox (known-answer
 * vectors of the Random123 paper), the shake coefficient draws, the SGD
 * formula and cosine schedule, and the model layout (parameter counts of the
 * paper's networks, names, depth checks).
 */
#include "testutil.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "model.h"
#include "optim.h"
#include "philox.h"
#include "shake.h"

static void test_philox_known_answers(void **s)
{
    (void)s;
    /* Salmon et al., Random123 kat_vectors: philox4x32 10 rounds */
    Philox4 a = philox4x32(0, 0, 0, 0, 0);
    assert_int_equal(a.v[0], 0x6627e8d5u);
    assert_int_equal(a.v[1], 0xe169c58du);
    assert_int_equal(a.v[2], 0xbc57ac4cu);
    assert_int_equal(a.v[3], 0x9b00dbd8u);
    a = philox4x32(~0ull, ~0u, ~0u, ~0u, ~0u);
    assert_int_equal(a.v[0], 0x408f276du);
    assert_int_equal(a.v[3], 0x6d5451fdu);
    a = philox4x32(((uint64_t)0x299f31d0 << 32) | 0xa4093822u, 0x243f6a88u, 0x85a308d3u,
                   0x13198a2eu, 0x03707344u);
    assert_int_equal(a.v[0], 0xd16cfe09u);
    assert_int_equal(a.v[1], 0x94fdccebu);
    assert_int_equal(a.v[2], 0x5001e420u);
    assert_int_equal(a.v[3], 0x24126ea1u);
}

static void test_uniform_range(void **s)
{
    (void)s;
    assert_true(philox_u01(0) == 0.0f);
    assert_true(philox_u01(0xffffffffu) < 1.0f);
    double sum = 0;
    for (uint32_t i = 0; i < 100000; i++) {
        float u = rng_uniform(42, RNG_TEST, i, 0, 0);
        assert_true(u >= 0.0f && u < 1.0f);
        sum += u;
    }
    /* mean of 1e5 uniforms: standard error 0.0009 */
    assert_true(fabs(sum / 100000 - 0.5) < 0.005);
}

enum { NB = 12, NI = 64 };

static void draw(float *a, float *b, uint64_t seed, int64_t step, ShakeMode f, ShakeMode bw,
                 ShakeLevel l)
{
    shake_draw(a, b, NB, NI, seed, step, f, bw, l);
}

static void test_shake_levels(void **s)
{
    (void)s;
    float a[NB * NI], b[NB * NI];
    draw(a, b, 1, 5, SHAKE_SHAKE, SHAKE_SHAKE, LEVEL_BATCH);
    for (int k = 0; k < NB; k++) {
        for (int i = 1; i < NI; i++) {
            assert_true(a[k * NI + i] == a[k * NI]);   /* one value per block */
            assert_true(b[k * NI + i] == b[k * NI]);
        }
        if (k > 0)
            assert_true(a[k * NI] != a[(k - 1) * NI]); /* blocks differ */
    }
    draw(a, b, 1, 5, SHAKE_SHAKE, SHAKE_SHAKE, LEVEL_IMAGE);
    int distinct = 0;
    for (int i = 1; i < NI; i++)
        distinct += a[i] != a[0];
    assert_int_equal(distinct, NI - 1);                 /* one value per image */
    for (int i = 0; i < NB * NI; i++) {
        assert_true(a[i] >= 0.0f && a[i] < 1.0f);
        assert_true(b[i] >= 0.0f && b[i] < 1.0f);
    }
}

static void test_shake_modes(void **s)
{
    (void)s;
    float a[NB * NI], b[NB * NI], a2[NB * NI], b2[NB * NI];
    draw(a, b, 3, 7, SHAKE_SHAKE, SHAKE_KEEP, LEVEL_IMAGE);
    assert_memory_equal(a, b, sizeof a);                /* Keep: beta = alpha */
    draw(a2, b2, 3, 7, SHAKE_SHAKE, SHAKE_SHAKE, LEVEL_IMAGE);
    assert_memory_equal(a, a2, sizeof a);               /* alpha independent of bwd mode */
    int same = 0;
    for (int i = 0; i < NB * NI; i++)
        same += a2[i] == b2[i];
    assert_true(same < 3);                              /* Shake: a fresh draw */
    draw(a, b, 3, 7, SHAKE_SHAKE, SHAKE_EVEN, LEVEL_IMAGE);
    for (int i = 0; i < NB * NI; i++)
        assert_true(b[i] == 0.5f);                      /* Even backward */
    assert_memory_equal(a, a2, sizeof a);
    draw(a, b, 3, 7, SHAKE_EVEN, SHAKE_SHAKE, LEVEL_IMAGE);
    for (int i = 0; i < NB * NI; i++)
        assert_true(a[i] == 0.5f);                      /* Even forward */
    assert_memory_equal(b, b2, sizeof b);               /* same beta stream */
    draw(a, b, 3, 7, SHAKE_EVEN, SHAKE_EVEN, LEVEL_BATCH);
    for (int i = 0; i < NB * NI; i++)
        assert_true(a[i] == 0.5f && b[i] == 0.5f);
}

static void test_shake_reproducible(void **s)
{
    (void)s;
    float a[NB * NI], b[NB * NI], a2[NB * NI], b2[NB * NI];
    draw(a, b, 9, 100, SHAKE_SHAKE, SHAKE_SHAKE, LEVEL_IMAGE);
    draw(a2, b2, 9, 100, SHAKE_SHAKE, SHAKE_SHAKE, LEVEL_IMAGE);
    assert_memory_equal(a, a2, sizeof a);
    assert_memory_equal(b, b2, sizeof b);
    draw(a2, b2, 10, 100, SHAKE_SHAKE, SHAKE_SHAKE, LEVEL_IMAGE);  /* other seed */
    assert_true(memcmp(a, a2, sizeof a) != 0);
    draw(a2, b2, 9, 101, SHAKE_SHAKE, SHAKE_SHAKE, LEVEL_IMAGE);   /* other step */
    assert_true(memcmp(a, a2, sizeof a) != 0);
    /* the value of (step, block, image) does not depend on the batch size */
    float a3[NB * 8], b3[NB * 8];
    shake_draw(a3, b3, NB, 8, 9, 100, SHAKE_SHAKE, SHAKE_SHAKE, LEVEL_IMAGE);
    for (int k = 0; k < NB; k++)
        for (int i = 0; i < 8; i++)
            assert_true(a3[k * 8 + i] == a[k * NI + i]);
}

static void test_sgd_matches_pytorch_formula(void **s)
{
    (void)s;
    /* PyTorch SGD(momentum=m, nesterov=True, weight_decay=wd), dampening 0:
     * d = g + wd*p; buf = d (first step) or m*buf + d; d = d + m*buf; p -= lr*d */
    float p[3] = {1.0f, -2.0f, 0.5f}, buf[3] = {0}, g[3];
    double pr[3] = {1.0, -2.0, 0.5}, br[3];
    const double m = 0.9, wd = 1e-2, lrs[3] = {0.1, 0.05, 0.01};
    for (int step = 0; step < 3; step++) {
        for (int i = 0; i < 3; i++)
            g[i] = 0.3f * (float)(i + 1) - 0.2f * (float)step;
        sgd_nesterov(p, buf, g, 3, (float)lrs[step], (float)m, (float)wd);
        for (int i = 0; i < 3; i++) {
            double d = (double)g[i] + wd * pr[i];
            br[i] = step == 0 ? d : m * br[i] + d;
            pr[i] -= lrs[step] * (d + m * br[i]);
            assert_true(fabs(p[i] - pr[i]) < 1e-6);
            assert_true(fabs(buf[i] - br[i]) < 1e-6);
        }
    }
}

static void test_cosine(void **s)
{
    (void)s;
    assert_true(fabs(cosine_lr(0.2, 0, 100) - 0.2) < 1e-12);
    assert_true(fabs(cosine_lr(0.2, 50, 100) - 0.1) < 1e-12);
    assert_true(fabs(cosine_lr(0.2, 100, 100)) < 1e-12);  /* the last iteration: 0 */
    assert_true(cosine_lr(0.2, 1, 100) < 0.2 && cosine_lr(0.2, 1, 100) > 0.1999);
    for (int t = 1; t <= 100; t++)
        assert_true(cosine_lr(0.2, t, 100) < cosine_lr(0.2, t - 1, 100));
}

static size_t count_params(Arch arch, int depth, int width, int groups, int classes)
{
    ModelSpec spec = {arch, depth, width, groups, classes, 3, 32, 32, SHIFT_ORIGINAL};
    Model m;
    tu_model(&m, &spec);
    size_t n = m.nparams;
    model_free(&m);
    return n;
}

static void test_parameter_counts(void **s)
{
    (void)s;
    assert_int_equal(count_params(ARCH_RESNET, 26, 32, 1, 10), 2923162);
    assert_int_equal(count_params(ARCH_RESNET, 26, 64, 1, 10), 11653978);
    assert_int_equal(count_params(ARCH_RESNET, 26, 96, 1, 10), 26192922);
    assert_int_equal(count_params(ARCH_RESNET, 26, 112, 1, 10), 35640442);
    assert_int_equal(count_params(ARCH_RESNEXT, 29, 64, 4, 100), 34529700);
}

static void test_forward_macs(void **s)
{
    (void)s;
    /* the paper's multiply-adds per 32x32 image, in millions */
    int widths[4] = {32, 64, 96, 112}, macs[4] = {427, 1686, 3777, 5135};
    for (int i = 0; i < 4; i++) {
        ModelSpec spec = {ARCH_RESNET, 26, widths[i], 1, 10, 3, 32, 32, SHIFT_ORIGINAL};
        Model m;
        tu_model(&m, &spec);
        assert_int_equal((int)lround(model_macs(&m) / 1e6), macs[i]);
        model_free(&m);
    }
}

static const TensorInfo *find(const Model *m, const char *name)
{
    for (int i = 0; i < m->ntensors; i++)
        if (strcmp(m->tensors[i].name, name) == 0)
            return &m->tensors[i];
    return NULL;
}

static void test_layout(void **s)
{
    (void)s;
    ModelSpec spec = {ARCH_RESNET, 26, 32, 1, 10, 3, 32, 32, SHIFT_ORIGINAL};
    Model m;
    tu_model(&m, &spec);
    assert_int_equal(m.nblocks, 12);
    assert_int_equal(m.stem_conv.cout, 16);            /* the stem is 16 wide */
    assert_int_equal(m.stem_relu, 0);                  /* and has no ReLU */
    const TensorInfo *t = find(&m, "stem.conv.weight");
    assert_non_null(t);
    assert_int_equal(t->shape[0], 16);
    assert_int_equal(t->shape[1], 3);
    t = find(&m, "stage1.block0.shortcut.conv1.weight"); /* 16 -> 32 at stride 1 */
    assert_non_null(t);
    assert_int_equal(t->shape[0], 16);
    assert_int_equal(t->shape[1], 16);
    assert_non_null(find(&m, "stage2.block3.branch2.bn2.running_var"));
    assert_null(find(&m, "stage1.block1.shortcut.conv1.weight")); /* identity */
    t = find(&m, "fc.weight");
    assert_int_equal(t->shape[0], 10);
    assert_int_equal(t->shape[1], 128);
    assert_int_equal(m.blocks[4].stride, 2);
    assert_int_equal(m.blocks[4].oh, 16);
    assert_int_equal(m.feat_h, 8);
    /* conv init: N(0, sqrt(2 / (k*k*out))) */
    float *p = malloc(m.nparams * sizeof(float)), *st = malloc(m.nstate * sizeof(float));
    model_init(&m, 1, p, st);
    t = find(&m, "stage3.block1.branch1.conv2.weight");
    double sum = 0, sq = 0;
    for (size_t i = 0; i < t->count; i++) {
        sum += p[t->offset + i];
        sq += (double)p[t->offset + i] * p[t->offset + i];
    }
    double sd = sqrt(sq / t->count), want = sqrt(2.0 / (9 * 128));
    assert_true(fabs(sd / want - 1) < 0.01);           /* 147k samples */
    assert_true(fabs(sum / t->count) < 0.01 * want);
    t = find(&m, "fc.weight");
    for (size_t i = 0; i < t->count; i++)
        assert_true(fabs(p[t->offset + i]) <= 1 / sqrt(128.0));
    assert_true(p[find(&m, "fc.bias")->offset] == 0.0f);
    assert_true(p[find(&m, "stem.bn.weight")->offset] == 1.0f);
    assert_true(st[find(&m, "stem.bn.running_var")->offset] == 1.0f);
    free(p);
    free(st);
    model_free(&m);
}

static void test_bad_depths(void **s)
{
    (void)s;
    Model m;
    Err e = {{0}};
    ModelSpec spec = {ARCH_RESNET, 27, 32, 1, 10, 3, 32, 32, SHIFT_ORIGINAL};
    assert_int_equal(model_build(&m, &spec, &e), -1);
    assert_non_null(strstr(e.msg, "6n+2"));
    spec.depth = 2;
    assert_int_equal(model_build(&m, &spec, &e), -1);
    spec.depth = 26;
    spec.width = 33;
    assert_int_equal(model_build(&m, &spec, &e), -1);
    ModelSpec x = {ARCH_RESNEXT, 26, 64, 4, 100, 3, 32, 32, SHIFT_ORIGINAL};
    assert_int_equal(model_build(&m, &x, &e), -1);
    assert_non_null(strstr(e.msg, "9n+2"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_philox_known_answers),
        cmocka_unit_test(test_uniform_range),
        cmocka_unit_test(test_shake_levels),
        cmocka_unit_test(test_shake_modes),
        cmocka_unit_test(test_shake_reproducible),
        cmocka_unit_test(test_sgd_matches_pytorch_formula),
        cmocka_unit_test(test_cosine),
        cmocka_unit_test(test_parameter_counts),
        cmocka_unit_test(test_forward_macs),
        cmocka_unit_test(test_layout),
        cmocka_unit_test(test_bad_depths),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
