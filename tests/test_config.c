/*
 * The run configuration: defaults, every key settable by text and by JSON,
 * error messages that name the key and value (and suggest a close key),
 * cross-key validation, and an exact canonical JSON round trip.
 */
#include "testutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "config.h"

static void assert_contains(const char *haystack, const char *needle)
{
    if (!strstr(haystack, needle))
        fail_msg("expected \"%s\" in \"%s\"", needle, haystack);
}

/* config_set must fail and leave a message that contains each of the parts. */
static void expect_set_error(const char *assignment, const char *part1, const char *part2)
{
    TrainConfig c, before;
    Err e = {{0}};
    config_defaults(&c);
    before = c;
    assert_int_equal(config_set(&c, assignment, &e), -1);
    assert_contains(e.msg, part1);
    if (part2)
        assert_contains(e.msg, part2);
    /* a failed set changes nothing */
    assert_memory_equal(&c, &before, sizeof c);
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static void expect_invalid(const char *const *assignments, int n, const char *part)
{
    TrainConfig c;
    Err e = {{0}};
    config_defaults(&c);
    for (int i = 0; i < n; i++)
        if (config_set(&c, assignments[i], &e) != 0)
            fail_msg("%s: %s", assignments[i], e.msg);
    assert_int_equal(config_validate(&c, &e), -1);
    assert_contains(e.msg, part);
}

static void test_defaults(void **state)
{
    (void)state;
    TrainConfig c;
    Err e = {{0}};
    config_defaults(&c);
    assert_int_equal(c.dataset, DS_CIFAR10);
    assert_string_equal(c.data_dir, "");
    assert_int_equal(c.arch, ARCH_RESNET);
    assert_int_equal(c.depth, 26);
    assert_int_equal(c.width, 32);
    assert_int_equal(c.groups, 4);
    assert_int_equal(c.forward, SHAKE_SHAKE);
    assert_int_equal(c.backward, SHAKE_SHAKE);
    assert_int_equal(c.level, LEVEL_IMAGE);
    assert_int_equal(c.shift, SHIFT_ORIGINAL);
    assert_int_equal(c.epochs, 1800);
    assert_int_equal(c.batch, 128);
    assert_true(c.lr == 0.2);
    assert_true(c.wd == 1e-4);
    assert_true(c.momentum == 0.9);
    assert_int_equal(c.seed, 1);
    assert_int_equal(c.train_subset, 0);
    assert_int_equal(c.subset_seed, 0);
    assert_string_equal(c.backend, "cpu");
    assert_int_equal(c.threads, 0);
    assert_int_equal(c.device, 0);
    assert_int_equal(c.precision, CFG_PRECISION_AUTO);
    assert_string_equal(c.out, "results/train");
    assert_string_equal(c.init, "");
    assert_string_equal(c.resume, "");
    assert_int_equal(c.augment, 1);
    assert_int_equal(c.shuffle, 1);
    assert_int_equal(c.steps, 0);
    if (config_validate(&c, &e) != 0)
        fail_msg("defaults do not validate: %s", e.msg);
}

static void test_every_key_settable(void **state)
{
    (void)state;
    static const char *const sets[] = {
        "dataset=fashion-mnist", "data_dir=/data/fm", "arch=resnext", "depth=29",
        "width=64", "groups=8", "forward=even", "backward=keep", "level=batch",
        "shift=reimpl", "epochs=3", "batch=7", "lr=0.05", "wd=5e-4",
        "momentum=0", "seed=9007199254740993", "train_subset=500",
        "subset_seed=-0", "backend=ref", "threads=4", "device=3", "precision=fp32",
        "out=runs/x", "init=a.st",
        "resume=", "augment=off", "shuffle=No", "steps=10000000000",
    };
    int n = (int)(sizeof sets / sizeof sets[0]);
    assert_int_equal(n, config_nkeys());
    TrainConfig c;
    Err e = {{0}};
    config_defaults(&c);
    for (int i = 0; i < n; i++)
        if (config_set(&c, sets[i], &e) != 0)
            fail_msg("%s: %s", sets[i], e.msg);
    assert_int_equal(c.dataset, DS_FASHION_MNIST);
    assert_string_equal(c.data_dir, "/data/fm");
    assert_int_equal(c.arch, ARCH_RESNEXT);
    assert_int_equal(c.depth, 29);
    assert_int_equal(c.width, 64);
    assert_int_equal(c.groups, 8);
    assert_int_equal(c.forward, SHAKE_EVEN);
    assert_int_equal(c.backward, SHAKE_KEEP);
    assert_int_equal(c.level, LEVEL_BATCH);
    assert_int_equal(c.shift, SHIFT_REIMPL);
    assert_int_equal(c.epochs, 3);
    assert_int_equal(c.batch, 7);
    assert_true(c.lr == 0.05);
    assert_true(c.wd == 5e-4);
    assert_true(c.momentum == 0.0);
    /* beyond 2^53: an int64 key must not pass through a double */
    assert_true(c.seed == INT64_C(9007199254740993));
    assert_int_equal(c.train_subset, 500);
    assert_int_equal(c.subset_seed, 0);
    assert_string_equal(c.backend, "ref");
    assert_int_equal(c.threads, 4);
    assert_int_equal(c.device, 3);
    assert_int_equal(c.precision, CFG_PRECISION_FP32);
    assert_string_equal(c.out, "runs/x");
    assert_string_equal(c.init, "a.st");
    assert_string_equal(c.resume, "");
    assert_int_equal(c.augment, 0);
    assert_int_equal(c.shuffle, 0);
    assert_true(c.steps == INT64_C(10000000000));
    if (config_validate(&c, &e) != 0)
        fail_msg("%s", e.msg);

    /* every data set name and every bool spelling */
    static const char *const ds[] = {"cifar10", "cifar100", "fashion-mnist", "mnist", "synthetic"};
    for (int i = 0; i < 5; i++) {
        assert_int_equal(config_set_kv(&c, "dataset", ds[i], &e), 0);
        assert_int_equal(c.dataset, i);
    }
    static const char *const yes[] = {"1", "true", "yes", "on", "TRUE"};
    static const char *const no[] = {"0", "false", "no", "off", "Off"};
    for (int i = 0; i < 5; i++) {
        assert_int_equal(config_set_kv(&c, "augment", yes[i], &e), 0);
        assert_int_equal(c.augment, 1);
        assert_int_equal(config_set_kv(&c, "augment", no[i], &e), 0);
        assert_int_equal(c.augment, 0);
    }
    /* the value is everything after the first '=' */
    assert_int_equal(config_set(&c, "out=a=b", &e), 0);
    assert_string_equal(c.out, "a=b");
}

static void test_unknown_key(void **state)
{
    (void)state;
    expect_set_error("deph=26", "unknown key 'deph'", "did you mean 'depth'?");
    expect_set_error("epoch=3", "unknown key 'epoch'", "did you mean 'epochs'?");
    expect_set_error("Depth=26", "did you mean 'depth'?", NULL);
    expect_set_error("learning_rate=0.1", "unknown key 'learning_rate'", NULL);
    expect_set_error("depth", "not of the form key=value", NULL);
    expect_set_error("=26", "no key", NULL);

    assert_string_equal(config_suggest("widht"), "width");
    assert_string_equal(config_suggest("sead"), "seed");
    assert_string_equal(config_suggest("train_subst"), "train_subset");
    assert_null(config_suggest("zzzzzzzz"));
    assert_null(config_suggest("x"));
    /* "learning_rate" is nothing like "lr": no suggestion */
    TrainConfig c;
    Err e = {{0}};
    config_defaults(&c);
    assert_int_equal(config_set(&c, "learning_rate=0.1", &e), -1);
    assert_null(strstr(e.msg, "did you mean"));
}

static void test_bad_values(void **state)
{
    (void)state;
    expect_set_error("depth=abc", "bad value 'abc' for key 'depth'", "expected an integer");
    expect_set_error("depth=", "bad value '' for key 'depth'", "expected an integer");
    expect_set_error("depth=26x", "bad value '26x'", "expected an integer");
    expect_set_error("depth= 26", "bad value ' 26'", "expected an integer");
    expect_set_error("depth=2.5", "bad value '2.5'", "expected an integer");
    expect_set_error("depth=99999999999", "'depth'", "out of range");
    expect_set_error("steps=99999999999999999999", "'steps'", "expected an integer");
    expect_set_error("lr=fast", "bad value 'fast' for key 'lr'", "expected a number");
    expect_set_error("lr=0.1.2", "bad value '0.1.2'", "expected a number");
    expect_set_error("lr=nan", "'lr'", "finite");
    expect_set_error("wd=inf", "'wd'", "finite");
    expect_set_error("lr=1e999", "'lr'", NULL);
    expect_set_error("backward=random", "bad value 'random' for key 'backward'",
                     "expected one of even, shake, keep");
    expect_set_error("arch=resnet50", "'arch'", "expected one of resnet, resnext");
    expect_set_error("dataset=imagenet", "'dataset'",
                     "expected one of cifar10, cifar100, fashion-mnist, mnist, synthetic");
    expect_set_error("level=pixel", "'level'", "expected one of batch, image");
    expect_set_error("shift=none", "'shift'", "expected one of original, reimpl");
    expect_set_error("augment=maybe", "bad value 'maybe' for key 'augment'", "boolean");
    expect_set_error("shuffle=2", "bad value '2' for key 'shuffle'", "boolean");

    /* a string longer than its field */
    char big[700];
    memset(big, 'a', sizeof big);
    memcpy(big, "out=", 4);
    big[sizeof big - 1] = 0;
    expect_set_error(big, "'out'", "at most 511");
    expect_set_error("backend=abcdefghijklmnopq", "'backend'", "at most 15");
}

static void test_validation(void **state)
{
    (void)state;
    const char *depth27[] = {"depth=27"};
    expect_invalid(depth27, 1, "depth=27");
    expect_invalid(depth27, 1, "6n+2");
    const char *depth2[] = {"depth=2"};
    expect_invalid(depth2, 1, "6n+2");
    const char *resnext26[] = {"arch=resnext", "depth=26"};
    expect_invalid(resnext26, 2, "depth=26");
    expect_invalid(resnext26, 2, "9n+2");
    /* bf16 is the cuda backend's; the others compute in float32 */
    const char *bf16_cpu[] = {"backend=cpu", "precision=bf16"};
    expect_invalid(bf16_cpu, 2, "precision=bf16");
    {
        Err be = {{0}};
        TrainConfig cuda_bf16;
        config_defaults(&cuda_bf16);
        assert_int_equal(config_set(&cuda_bf16, "backend=cuda", &be), 0);
        assert_int_equal(config_set(&cuda_bf16, "precision=bf16", &be), 0);
        assert_int_equal(config_validate(&cuda_bf16, &be), 0);
    }
    const char *odd[] = {"width=33"};
    expect_invalid(odd, 1, "width=33");
    expect_invalid(odd, 1, "even");
    const char *keep[] = {"forward=keep"};
    expect_invalid(keep, 1, "keep is only a backward mode");
    const char *both[] = {"init=a", "resume=b"};
    expect_invalid(both, 2, "init and resume");
    const char *groups0[] = {"groups=0"};
    expect_invalid(groups0, 1, "groups=0");
    const char *epochs0[] = {"epochs=0"};
    expect_invalid(epochs0, 1, "epochs=0");
    const char *batch0[] = {"batch=0"};
    expect_invalid(batch0, 1, "batch=0");
    const char *lr0[] = {"lr=0"};
    expect_invalid(lr0, 1, "lr=0");
    const char *wdneg[] = {"wd=-1e-4"};
    expect_invalid(wdneg, 1, "wd=");
    const char *mom1[] = {"momentum=1"};
    expect_invalid(mom1, 1, "momentum=1");
    const char *subset[] = {"train_subset=-1"};
    expect_invalid(subset, 1, "train_subset=-1");
    const char *threads[] = {"threads=-2"};
    expect_invalid(threads, 1, "threads=-2");
    const char *steps[] = {"steps=-1"};
    expect_invalid(steps, 1, "steps=-1");
    const char *width0[] = {"arch=resnext", "depth=29", "width=0"};
    expect_invalid(width0, 3, "width=0");

    /* the paper's configurations validate */
    TrainConfig c;
    Err e = {{0}};
    config_defaults(&c);
    const char *ok[] = {"arch=resnext", "depth=29", "width=64", "groups=4", "width=1", "groups=1"};
    for (int i = 0; i < 6; i++) {
        assert_int_equal(config_set(&c, ok[i], &e), 0);
        if (i >= 3 && config_validate(&c, &e) != 0)
            fail_msg("%s: %s", ok[i], e.msg);
    }
    config_defaults(&c);
    assert_int_equal(config_set(&c, "depth=8", &e), 0);
    assert_int_equal(config_set(&c, "width=2", &e), 0);
    assert_int_equal(config_validate(&c, &e), 0);
}

static void test_json_round_trip(void **state)
{
    (void)state;
    TrainConfig c, d;
    Err e = {{0}};
    config_defaults(&c);
    const char *sets[] = {"lr=0.1", "wd=5e-4", "momentum=0.30000000000000004",
                          "seed=9223372036854775807", "data_dir=caf\xc3\xa9 \"q\"\\",
                          "backward=keep", "dataset=mnist", "augment=0"};
    for (int i = 0; i < 8; i++)
        assert_int_equal(config_set(&c, sets[i], &e), 0);
    char *js = config_to_json(&c);
    assert_non_null(js);

    /* canonical: compact, all keys, sorted */
    assert_null(strchr(js, '\n'));
    assert_null(strstr(js, ": "));
    assert_null(strstr(js, ", "));
    json_error_t jerr;
    json_t *root = json_loads(js, 0, &jerr);
    assert_non_null(root);
    assert_int_equal((int)json_object_size(root), config_nkeys());
    /* keys appear in the text in sorted order: sort the names, then each
     * "name": must come after the previous one */
    int nk = config_nkeys();
    const char **names = calloc((size_t)nk, sizeof *names);
    for (int i = 0; i < nk; i++) {
        names[i] = config_key_name(i);
        assert_non_null(json_object_get(root, names[i]));
    }
    qsort(names, (size_t)nk, sizeof *names, cmp_str);
    const char *at = js;
    for (int i = 0; i < nk; i++) {
        char needle[80];
        snprintf(needle, sizeof needle, "\"%s\":", names[i]);
        const char *p = strstr(at, needle);
        if (!p)
            fail_msg("key %s missing or out of order in %s", names[i], js);
        at = p + strlen(needle);
    }
    free(names);
    /* types: choices by name, numbers as numbers, bools as booleans */
    assert_string_equal(json_string_value(json_object_get(root, "backward")), "keep");
    assert_string_equal(json_string_value(json_object_get(root, "dataset")), "mnist");
    assert_true(json_is_integer(json_object_get(root, "depth")));
    assert_true(json_is_real(json_object_get(root, "lr")));
    assert_true(json_is_false(json_object_get(root, "augment")));
    assert_true(json_is_true(json_object_get(root, "shuffle")));
    json_decref(root);

    /* from a different starting point, the JSON restores every field */
    config_defaults(&d);
    assert_int_equal(config_set(&d, "depth=8", &e), 0);
    assert_int_equal(config_set(&d, "augment=1", &e), 0);
    if (config_from_json(&d, js, &e) != 0)
        fail_msg("%s", e.msg);
    assert_memory_equal(&c, &d, sizeof c);
    /* bit-exact doubles, not just close */
    double lr = 0.1, wd = 5e-4;
    assert_memory_equal(&d.lr, &lr, sizeof lr);
    assert_memory_equal(&d.wd, &wd, sizeof wd);
    char *js2 = config_to_json(&d);
    assert_string_equal(js, js2);
    free(js2);
    free(js);

    /* the text form round-trips through config_set_kv too */
    config_defaults(&d);
    for (int i = 0; i < config_nkeys(); i++) {
        char buf[600];
        config_key_value(&c, i, buf, sizeof buf);
        if (config_set_kv(&d, config_key_name(i), buf, &e) != 0)
            fail_msg("%s=%s: %s", config_key_name(i), buf, e.msg);
    }
    assert_memory_equal(&c, &d, sizeof c);
    char buf[64];
    for (int i = 0; i < config_nkeys(); i++) {
        if (strcmp(config_key_name(i), "lr") == 0) {
            config_key_value(&c, i, buf, sizeof buf);
            assert_string_equal(buf, "0.1");
        }
    }
    assert_null(config_key_name(config_nkeys()));
}

static void test_from_json_errors(void **state)
{
    (void)state;
    TrainConfig c, before;
    Err e = {{0}};
    config_defaults(&c);
    before = c;
    struct { const char *json, *part; } cases[] = {
        {"{\"depth\":8,\"deph\":26}", "unknown key 'deph' (did you mean 'depth'?)"},
        {"{\"depth\":\"26\"}", "key 'depth': expected an integer, found a string"},
        {"{\"depth\":26.0}", "key 'depth': expected an integer"},
        {"{\"depth\":4294967296}", "out of range"},
        {"{\"lr\":\"0.1\"}", "key 'lr': expected a number"},
        {"{\"augment\":1}", "key 'augment': expected true or false"},
        {"{\"arch\":\"vgg\"}", "expected one of resnet, resnext"},
        {"{\"out\":3}", "key 'out': expected a string"},
        {"[1,2]", "not an object"},
        {"{\"depth\":", "config JSON"},
        {"{\"depth\":8,\"depth\":14}", "config JSON"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        e.msg[0] = 0;
        assert_int_equal(config_from_json(&c, cases[i].json, &e), -1);
        assert_contains(e.msg, cases[i].part);
        /* a failed JSON apply changes nothing, not even the keys before the bad one */
        assert_memory_equal(&c, &before, sizeof c);
    }
    /* a partial object applies only its keys; an integer is a valid double */
    assert_int_equal(config_from_json(&c, "{\"lr\":1,\"depth\":14}", &e), 0);
    assert_true(c.lr == 1.0);
    assert_int_equal(c.depth, 14);
    assert_int_equal(c.width, 32);
}

static void test_model_spec(void **state)
{
    (void)state;
    TrainConfig c;
    Err e = {{0}};
    ModelSpec s;
    config_defaults(&c);
    config_model_spec(&c, 10, 3, 32, 32, &s);
    assert_int_equal(s.arch, ARCH_RESNET);
    assert_int_equal(s.depth, 26);
    assert_int_equal(s.width, 32);
    assert_int_equal(s.groups, 1); /* groups is a ResNeXt key */
    assert_int_equal(s.classes, 10);
    assert_int_equal(s.in_c, 3);
    assert_int_equal(s.in_h, 32);
    assert_int_equal(s.in_w, 32);
    assert_int_equal(s.shift, SHIFT_ORIGINAL);
    const char *x[] = {"arch=resnext", "depth=29", "width=4", "groups=2", "shift=reimpl"};
    for (int i = 0; i < 5; i++)
        assert_int_equal(config_set(&c, x[i], &e), 0);
    config_model_spec(&c, 100, 1, 28, 28, &s);
    assert_int_equal(s.arch, ARCH_RESNEXT);
    assert_int_equal(s.depth, 29);
    assert_int_equal(s.width, 4);
    assert_int_equal(s.groups, 2);
    assert_int_equal(s.classes, 100);
    assert_int_equal(s.in_c, 1);
    assert_int_equal(s.in_h, 28);
    assert_int_equal(s.shift, SHIFT_REIMPL);
    /* a validated config always lays out */
    Model m;
    tu_model(&m, &s);
    model_free(&m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_every_key_settable),
        cmocka_unit_test(test_unknown_key),
        cmocka_unit_test(test_bad_values),
        cmocka_unit_test(test_validation),
        cmocka_unit_test(test_json_round_trip),
        cmocka_unit_test(test_from_json_errors),
        cmocka_unit_test(test_model_spec),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
