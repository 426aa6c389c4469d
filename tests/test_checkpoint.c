/*
 * Checkpoints: a bit-exact round trip of parameters, running statistics,
 * momentum and metadata; the safetensors layout other readers rely on; every
 * kind of damaged file refused with a message and without touching the
 * caller's arrays; atomic replacement that survives a failed write; and a
 * file written by the Python safetensors package (tests/fixtures/tiny.*).
 */
#define _GNU_SOURCE
#include "testutil.h"

#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <jansson.h>

#include "checkpoint.h"
#include "model.h"

/* The fixture's model: tests/fixtures/make_safetensors_fixture.py. */
static const ModelSpec TINY = {ARCH_RESNET, 8, 4, 1, 10, 3, 8, 8, SHIFT_ORIGINAL};
static const ModelSpec TINY_NEXT = {ARCH_RESNEXT, 11, 4, 2, 10, 3, 8, 8, SHIFT_ORIGINAL};

typedef struct {
    Model m;
    float *params, *state, *momentum;
} Net;

static void net_make(Net *n, const ModelSpec *spec, uint64_t seed)
{
    tu_model(&n->m, spec);
    n->params = malloc(n->m.nparams * sizeof(float));
    n->state = malloc(n->m.nstate * sizeof(float));
    n->momentum = malloc(n->m.nparams * sizeof(float));
    tu_fill_uniform(n->params, n->m.nparams, seed, -1, 1);
    tu_fill_uniform(n->state, n->m.nstate, seed + 1, 0, 2);
    tu_fill_uniform(n->momentum, n->m.nparams, seed + 2, -0.1f, 0.1f);
}

static void net_free(Net *n)
{
    model_free(&n->m);
    free(n->params);
    free(n->state);
    free(n->momentum);
}

/* Arrays that a refused load must leave as they were. */
static void net_poison(Net *n)
{
    memset(n->params, 0x7f, n->m.nparams * sizeof(float));
    memset(n->state, 0x7f, n->m.nstate * sizeof(float));
    memset(n->momentum, 0x7f, n->m.nparams * sizeof(float));
}

static int net_is_poisoned(const Net *n)
{
    const unsigned char *p = (const unsigned char *)n->params;
    for (size_t i = 0; i < n->m.nparams * sizeof(float); i++)
        if (p[i] != 0x7f)
            return 0;
    p = (const unsigned char *)n->state;
    for (size_t i = 0; i < n->m.nstate * sizeof(float); i++)
        if (p[i] != 0x7f)
            return 0;
    return 1;
}

static void assert_contains(const char *haystack, const char *needle)
{
    if (!strstr(haystack, needle))
        fail_msg("expected \"%s\" in \"%s\"", needle, haystack);
}

static void save_or_fail(const char *path, const Net *n, int with_momentum,
                         const CheckpointMeta *meta)
{
    Err e = {{0}};
    if (checkpoint_save(path, &n->m, n->params, n->state,
                        with_momentum ? n->momentum : NULL, meta, &e) != 0)
        fail_msg("%s", e.msg);
}

static void round_trip(const ModelSpec *spec)
{
    char *dir = tu_tempdir("ckpt");
    char path[4096];
    snprintf(path, sizeof path, "%s/ck.safetensors", dir);
    Net a, b;
    net_make(&a, spec, 11);
    net_make(&b, spec, 99);
    CheckpointMeta meta = {123456789012LL, 1799, UINT64_MAX,
                           (char *)"{\"depth\":8,\"out\":\"caf\xc3\xa9 \\\"x\\\"\"}"};
    save_or_fail(path, &a, 1, &meta);

    Err e = {{0}};
    CheckpointMeta got = {0};
    if (checkpoint_load(path, &b.m, b.params, b.state, b.momentum, &got, &e) != 0)
        fail_msg("%s", e.msg);
    assert_memory_equal(a.params, b.params, a.m.nparams * sizeof(float));
    assert_memory_equal(a.state, b.state, a.m.nstate * sizeof(float));
    assert_memory_equal(a.momentum, b.momentum, a.m.nparams * sizeof(float));
    assert_true(got.step == meta.step);
    assert_true(got.epoch == meta.epoch);
    assert_true(got.seed == meta.seed);
    assert_string_equal(got.config_json, meta.config_json);
    checkpoint_meta_free(&got);
    assert_null(got.config_json);

    CheckpointMeta only = {0};
    if (checkpoint_read_meta(path, &only, &e) != 0)
        fail_msg("%s", e.msg);
    assert_true(only.step == meta.step && only.epoch == meta.epoch && only.seed == meta.seed);
    assert_string_equal(only.config_json, meta.config_json);
    checkpoint_meta_free(&only);

    /* without momentum and without metadata: the same weights */
    net_poison(&b);
    if (checkpoint_load(path, &b.m, b.params, b.state, NULL, NULL, &e) != 0)
        fail_msg("%s", e.msg);
    assert_memory_equal(a.params, b.params, a.m.nparams * sizeof(float));
    assert_memory_equal(a.state, b.state, a.m.nstate * sizeof(float));

    /* a file saved without momentum loads zeros into a requested momentum;
     * no config in the metadata reads back as NULL */
    CheckpointMeta bare = {0, 0, 5, NULL};
    save_or_fail(path, &a, 0, &bare);
    net_poison(&b);
    if (checkpoint_load(path, &b.m, b.params, b.state, b.momentum, &got, &e) != 0)
        fail_msg("%s", e.msg);
    for (size_t i = 0; i < b.m.nparams; i++)
        assert_true(b.momentum[i] == 0.0f);
    assert_memory_equal(a.params, b.params, a.m.nparams * sizeof(float));
    assert_null(got.config_json);
    assert_true(got.seed == 5);

    net_free(&a);
    net_free(&b);
    tu_rmtree(dir);
    free(dir);
}

static void test_round_trip_resnet(void **state)
{
    (void)state;
    round_trip(&TINY);
}

static void test_round_trip_resnext(void **state)
{
    (void)state;
    round_trip(&TINY_NEXT);
}

/* ---- raw file helpers ---- */

static uint64_t le64(const unsigned char *b)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v |= (uint64_t)b[i] << (8 * i);
    return v;
}

/* The parsed header of a file's bytes. */
static json_t *header_of(const unsigned char *buf, size_t len, uint64_t *n)
{
    assert_true(len >= 8);
    *n = le64(buf);
    assert_true(8 + *n <= len);
    json_error_t jerr;
    json_t *root = json_loadb((const char *)buf + 8, *n, 0, &jerr);
    if (!root)
        fail_msg("header does not parse: %s", jerr.text);
    return root;
}

/* Writes `root` as the header of a copy of src's data buffer. */
static void write_with_header(const char *path, json_t *root, const unsigned char *data,
                              size_t data_len)
{
    char *js = json_dumps(root, JSON_COMPACT);
    size_t n = strlen(js), padded = (n + 8 + 7) / 8 * 8 - 8;
    size_t total = 8 + padded + data_len;
    unsigned char *out = malloc(total);
    for (int i = 0; i < 8; i++)
        out[i] = (unsigned char)((uint64_t)padded >> (8 * i));
    memcpy(out + 8, js, n);
    memset(out + 8 + n, ' ', padded - n);
    memcpy(out + 8 + padded, data, data_len);
    tu_write_file(path, out, total);
    free(out);
    free(js);
}

static void test_layout(void **state)
{
    (void)state;
    char *dir = tu_tempdir("ckpt");
    char path[4096];
    snprintf(path, sizeof path, "%s/ck.safetensors", dir);
    Net a;
    net_make(&a, &TINY, 3);
    CheckpointMeta meta = {42, 2, 7, (char *)"{}"};
    save_or_fail(path, &a, 1, &meta);

    size_t len;
    unsigned char *buf = tu_read_file(path, &len);
    assert_non_null(buf);
    uint64_t n;
    json_t *root = header_of(buf, len, &n);
    assert_int_equal((8 + n) % 8, 0);
    for (uint64_t i = 0; i < n; i++) /* padding, if any, is spaces after the JSON */
        if (buf[8 + i] == 0)
            fail_msg("NUL byte in the header");
    assert_int_equal(buf[8], '{');
    size_t data_len = len - 8 - n;
    assert_int_equal(data_len, 4 * (2 * a.m.nparams + a.m.nstate));

    json_t *md = json_object_get(root, "__metadata__");
    assert_string_equal(json_string_value(json_object_get(md, "format")), "shakeshake-checkpoint");
    assert_string_equal(json_string_value(json_object_get(md, "version")), "1");
    assert_string_equal(json_string_value(json_object_get(md, "step")), "42");
    assert_string_equal(json_string_value(json_object_get(md, "epoch")), "2");
    assert_string_equal(json_string_value(json_object_get(md, "seed")), "7");
    assert_string_equal(json_string_value(json_object_get(md, "config")), "{}");

    /* names of model.h's module structure, with PyTorch shapes */
    struct { const char *name; int ndim, shape[4]; } want[] = {
        {"stem.conv.weight", 4, {16, 3, 3, 3}},
        {"stem.bn.running_var", 1, {16}},
        {"stage1.block0.branch1.conv1.weight", 4, {4, 16, 3, 3}},
        {"stage1.block0.branch2.bn2.bias", 1, {4}},
        {"stage1.block0.shortcut.conv1.weight", 4, {2, 16, 1, 1}},
        {"stage1.block0.shortcut.bn.running_var", 1, {4}},
        {"stage3.block0.branch1.conv2.weight", 4, {16, 16, 3, 3}},
        {"fc.weight", 2, {10, 16}},
        {"fc.bias", 1, {10}},
        {"momentum.fc.bias", 1, {10}},
        {"momentum.stem.conv.weight", 4, {16, 3, 3, 3}},
    };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        json_t *ent = json_object_get(root, want[i].name);
        if (!ent)
            fail_msg("no tensor %s", want[i].name);
        assert_string_equal(json_string_value(json_object_get(ent, "dtype")), "F32");
        json_t *shape = json_object_get(ent, "shape");
        assert_int_equal(json_array_size(shape), want[i].ndim);
        for (int d = 0; d < want[i].ndim; d++)
            assert_int_equal(json_integer_value(json_array_get(shape, d)), want[i].shape[d]);
    }
    /* no momentum for running statistics; one entry per tensor + momentum */
    assert_null(json_object_get(root, "momentum.stem.bn.running_mean"));
    int nparam_tensors = 0;
    for (int i = 0; i < a.m.ntensors; i++)
        nparam_tensors += a.m.tensors[i].arena == T_PARAM;
    assert_int_equal(json_object_size(root), 1 + a.m.ntensors + nparam_tensors);

    /* contiguous in model order, then momentum; bytes are the arrays' bytes */
    uint64_t at = 0;
    for (int pass = 0; pass < 2; pass++) {
        for (int i = 0; i < a.m.ntensors; i++) {
            const TensorInfo *t = &a.m.tensors[i];
            char name[sizeof "momentum." + sizeof t->name];
            if (pass == 1 && t->arena != T_PARAM)
                continue;
            snprintf(name, sizeof name, "%s%s", pass ? "momentum." : "", t->name);
            json_t *off = json_object_get(json_object_get(root, name), "data_offsets");
            assert_int_equal(json_integer_value(json_array_get(off, 0)), at);
            assert_int_equal(json_integer_value(json_array_get(off, 1)), at + 4 * t->count);
            const float *src = pass ? a.momentum + t->offset
                                    : (t->arena == T_PARAM ? a.params : a.state) + t->offset;
            assert_memory_equal(buf + 8 + n + at, src, 4 * t->count);
            at += 4 * t->count;
        }
    }
    assert_int_equal(at, data_len);

    json_decref(root);
    free(buf);
    net_free(&a);
    tu_rmtree(dir);
    free(dir);
}

/* ---- damaged files ---- */

typedef struct {
    char dir[2048];
    char good[4096];            /* a valid checkpoint of TINY */
    char bad[4096];             /* where each damaged copy goes */
    unsigned char *buf;
    size_t len;
    uint64_t n;
    Net net;
} Damage;

static void damage_setup(Damage *d)
{
    char *dir = tu_tempdir("ckpt");
    snprintf(d->dir, sizeof d->dir, "%s", dir);
    free(dir);
    snprintf(d->good, sizeof d->good, "%s/good.safetensors", d->dir);
    snprintf(d->bad, sizeof d->bad, "%s/bad.safetensors", d->dir);
    net_make(&d->net, &TINY, 5);
    CheckpointMeta meta = {10, 1, 3, (char *)"{}"};
    save_or_fail(d->good, &d->net, 1, &meta);
    d->buf = tu_read_file(d->good, &d->len);
    d->n = le64(d->buf);
}

static void damage_teardown(Damage *d)
{
    free(d->buf);
    net_free(&d->net);
    tu_rmtree(d->dir);
}

/* Loads d->bad with metadata and momentum; it must fail, name the file and
 * say `part`, and leave the arrays as they were. */
static void expect_refused(Damage *d, const char *part)
{
    Err e = {{0}};
    CheckpointMeta meta = {0};
    net_poison(&d->net);
    if (checkpoint_load(d->bad, &d->net.m, d->net.params, d->net.state, d->net.momentum,
                        &meta, &e) == 0)
        fail_msg("damaged file loaded; expected an error with \"%s\"", part);
    assert_contains(e.msg, d->bad);
    if (part)
        assert_contains(e.msg, part);
    assert_null(meta.config_json);
    /* header faults are found before any byte is copied */
    assert_true(net_is_poisoned(&d->net));
}

static void test_truncated(void **state)
{
    (void)state;
    Damage d;
    damage_setup(&d);
    size_t cuts[] = {0, 1, 7, 8, 9, 8 + d.n / 2, 8 + d.n - 1, 8 + d.n, 8 + d.n + 1,
                     8 + d.n + 4096, d.len - 4, d.len - 1};
    for (size_t i = 0; i < sizeof cuts / sizeof cuts[0]; i++) {
        tu_write_file(d.bad, d.buf, cuts[i]);
        expect_refused(&d, NULL);
    }
    tu_write_file(d.bad, d.buf, 7);
    expect_refused(&d, "too short");
    tu_write_file(d.bad, d.buf, 8 + d.n / 2);
    expect_refused(&d, "header size");
    tu_write_file(d.bad, d.buf, d.len - 1);
    expect_refused(&d, "past the");
    /* missing file, and a folder where the file should be */
    Err e = {{0}};
    char missing[4200];
    snprintf(missing, sizeof missing, "%s/nope.safetensors", d.dir);
    assert_int_equal(checkpoint_load(missing, &d.net.m, d.net.params, d.net.state,
                                     NULL, NULL, &e), -1);
    assert_contains(e.msg, missing);
    assert_contains(e.msg, "No such file");
    CheckpointMeta meta = {0};
    assert_int_equal(checkpoint_read_meta(missing, &meta, &e), -1);
    assert_int_equal(checkpoint_read_meta(d.dir, &meta, &e), -1);
    assert_contains(e.msg, "not a regular file");
    damage_teardown(&d);
}

static void test_header_size_bytes(void **state)
{
    (void)state;
    Damage d;
    damage_setup(&d);
    unsigned char *copy = malloc(d.len);
    /* every single-bit flip of the size, and some absurd sizes */
    for (int bit = 0; bit < 64; bit++) {
        memcpy(copy, d.buf, d.len);
        copy[bit / 8] ^= (unsigned char)(1u << (bit % 8));
        tu_write_file(d.bad, copy, d.len);
        expect_refused(&d, NULL);
    }
    uint64_t sizes[] = {0, 1, d.n - 1, d.n + 1, (uint64_t)d.len, (uint64_t)200 << 20, UINT64_MAX};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        memcpy(copy, d.buf, d.len);
        for (int b = 0; b < 8; b++)
            copy[b] = (unsigned char)(sizes[i] >> (8 * b));
        tu_write_file(d.bad, copy, d.len);
        expect_refused(&d, NULL);
    }
    free(copy);
    damage_teardown(&d);
}

static void test_garbage_header(void **state)
{
    (void)state;
    Damage d;
    damage_setup(&d);
    unsigned char *copy = malloc(d.len);
    memcpy(copy, d.buf, d.len);
    memcpy(copy + 8, "{not json", 9);
    tu_write_file(d.bad, copy, d.len);
    expect_refused(&d, "not valid JSON");

    /* random bytes sprayed over the header: refused or, rarely, harmless
     * (inside a name the model does not use); never a crash */
    for (uint32_t trial = 0; trial < 300; trial++) {
        memcpy(copy, d.buf, d.len);
        float r[4];
        tu_fill_uniform(r, 4, 1000 + trial, 0, 1);
        for (int k = 0; k < 3; k++) {
            size_t at = 8 + (size_t)(r[k] * (float)d.n);
            if (at >= 8 + d.n)
                at = 8 + d.n - 1;
            copy[at] = (unsigned char)(r[3] * 256.0f) ^ (unsigned char)k;
        }
        tu_write_file(d.bad, copy, d.len);
        Err e = {{0}};
        CheckpointMeta meta = {0};
        if (checkpoint_load(d.bad, &d.net.m, d.net.params, d.net.state, d.net.momentum,
                            &meta, &e) == 0)
            checkpoint_meta_free(&meta);
        else
            assert_contains(e.msg, d.bad);
    }
    free(copy);
    damage_teardown(&d);
}

/* Edits the header as JSON, keeps the data buffer, and expects `part`. */
static void edit_and_refuse(Damage *d, const char *name, const char *field, json_t *value,
                            const char *part)
{
    uint64_t n;
    json_t *root = header_of(d->buf, d->len, &n);
    if (!field && value)
        json_object_set_new(root, name, value);
    else if (!field)
        json_object_del(root, name);
    else if (value)
        json_object_set_new(json_object_get(root, name), field, value);
    else
        json_object_del(json_object_get(root, name), field);
    write_with_header(d->bad, root, d->buf + 8 + n, d->len - 8 - n);
    json_decref(root);
    expect_refused(d, part);
}

static void test_bad_entries(void **state)
{
    (void)state;
    Damage d;
    damage_setup(&d);
    edit_and_refuse(&d, "fc.bias", "dtype", json_string("F16"), "'fc.bias' has dtype F16");
    edit_and_refuse(&d, "fc.bias", "dtype", NULL, "'fc.bias': no dtype");
    edit_and_refuse(&d, "fc.bias", NULL, json_integer(5), "'fc.bias': entry is not an object");
    edit_and_refuse(&d, "fc.bias", NULL, NULL, "missing tensor 'fc.bias'");
    edit_and_refuse(&d, "stem.bn.running_mean", NULL, NULL, "missing tensor 'stem.bn.running_mean'");
    edit_and_refuse(&d, "fc.bias", "shape", json_pack("[i]", 11),
                    "'fc.bias' has shape [11] in the file but the model expects [10]");
    edit_and_refuse(&d, "fc.weight", "shape", json_pack("[i,i,i]", 10, 16, 1),
                    "has shape [10, 16, 1] in the file but the model expects [10, 16]");
    edit_and_refuse(&d, "fc.bias", "shape", json_pack("[i]", -10), "shape");
    edit_and_refuse(&d, "fc.bias", "shape", json_string("10"), "shape is not an array");
    edit_and_refuse(&d, "fc.bias", "data_offsets", json_pack("[i,i]", 40, 0), "out of order");
    edit_and_refuse(&d, "fc.bias", "data_offsets", json_pack("[i,i]", -4, 36), "out of order");
    edit_and_refuse(&d, "fc.bias", "data_offsets", json_pack("[i,i]", 0, 36), "need 40");
    edit_and_refuse(&d, "fc.bias", "data_offsets", json_pack("[I,I]", (json_int_t)d.len,
                                                             (json_int_t)d.len + 40), "past the");
    edit_and_refuse(&d, "fc.bias", "data_offsets", json_pack("[i]", 0), "pair of integers");
    edit_and_refuse(&d, "fc.bias", "data_offsets", json_pack("[f,f]", 0.0, 40.0), "pair");
    edit_and_refuse(&d, "fc.bias", "data_offsets", NULL, "pair of integers");
    /* momentum for some parameters but not all */
    edit_and_refuse(&d, "momentum.fc.bias", NULL, NULL, "missing tensor 'momentum.fc.bias'");
    edit_and_refuse(&d, "momentum.fc.bias", "dtype", json_string("BF16"), "dtype BF16");

    /* metadata */
    edit_and_refuse(&d, "__metadata__", NULL, NULL, "__metadata__");
    edit_and_refuse(&d, "__metadata__", "step", json_string("12a"), "step '12a'");
    edit_and_refuse(&d, "__metadata__", "step", json_string("-1"), "step '-1'");
    edit_and_refuse(&d, "__metadata__", "step", json_string(""), "step ''");
    edit_and_refuse(&d, "__metadata__", "step", json_string("9223372036854775808"), "step");
    edit_and_refuse(&d, "__metadata__", "epoch", json_string(" 1"), "epoch ' 1'");
    edit_and_refuse(&d, "__metadata__", "epoch", NULL, "no 'epoch'");
    edit_and_refuse(&d, "__metadata__", "seed", json_string("18446744073709551616"), "seed");
    edit_and_refuse(&d, "__metadata__", "seed", json_integer(3), "'seed' is not a string");
    edit_and_refuse(&d, "__metadata__", "format", json_string("other"), "format is 'other'");
    edit_and_refuse(&d, "__metadata__", "version", json_string("2"), "version '2'");
    edit_and_refuse(&d, "__metadata__", "config", json_integer(1), "config is not a string");

    /* a header that is JSON but not an object */
    uint64_t n;
    json_t *arr = json_array();
    json_decref(header_of(d.buf, d.len, &n));
    write_with_header(d.bad, arr, d.buf + 8 + n, d.len - 8 - n);
    json_decref(arr);
    expect_refused(&d, "not an object");

    /* the entries must tile the data buffer: no overlap, no gap */
    json_t *root = header_of(d.buf, d.len, &n);
    json_t *fcb = json_object_get(json_object_get(root, "fc.bias"), "data_offsets");
    json_object_set(json_object_get(root, "momentum.fc.bias"), "data_offsets", fcb);
    write_with_header(d.bad, root, d.buf + 8 + n, d.len - 8 - n);
    json_decref(root);
    expect_refused(&d, "overlap");
    root = header_of(d.buf, d.len, &n);
    size_t data_len = d.len - 8 - n;
    unsigned char *data = malloc(data_len + 8);
    memcpy(data, d.buf + 8 + n, data_len);
    memset(data + data_len, 0, 8);
    write_with_header(d.bad, root, data, data_len + 8);
    expect_refused(&d, "the tensors cover");

    /* extra tensors are ignored, and without meta the metadata is not read */
    json_object_set_new(root, "extra.weight",
                        json_pack("{s:s,s:[i],s:[I,I]}", "dtype", "F64", "shape", 1,
                                  "data_offsets", (json_int_t)data_len,
                                  (json_int_t)data_len + 8));
    json_object_del(root, "__metadata__");
    write_with_header(d.bad, root, data, data_len + 8);
    json_decref(root);
    free(data);
    Err e = {{0}};
    Net b;
    net_make(&b, &TINY, 77);
    if (checkpoint_load(d.bad, &b.m, b.params, b.state, b.momentum, NULL, &e) != 0)
        fail_msg("%s", e.msg);
    Net orig;
    net_make(&orig, &TINY, 5); /* the values damage_setup saved */
    assert_memory_equal(b.params, orig.params, b.m.nparams * sizeof(float));
    assert_memory_equal(b.momentum, orig.momentum, b.m.nparams * sizeof(float));
    net_free(&orig);
    net_free(&b);
    damage_teardown(&d);
}

static void test_wrong_model(void **state)
{
    (void)state;
    Damage d;
    damage_setup(&d);
    /* a width-4 checkpoint into a width-8 model: the first block's conv differs */
    ModelSpec wide = TINY;
    wide.width = 8;
    Net w;
    net_make(&w, &wide, 1);
    net_poison(&w);
    Err e = {{0}};
    assert_int_equal(checkpoint_load(d.good, &w.m, w.params, w.state, NULL, NULL, &e), -1);
    assert_contains(e.msg, "stage1.block0.branch1.conv1.weight");
    assert_contains(e.msg, "[4, 16, 3, 3]");
    assert_contains(e.msg, "[8, 16, 3, 3]");
    assert_true(net_is_poisoned(&w));
    net_free(&w);
    /* a ResNet checkpoint into a ResNeXt: the stem has 64 channels there */
    Net x;
    net_make(&x, &TINY_NEXT, 1);
    assert_int_equal(checkpoint_load(d.good, &x.m, x.params, x.state, NULL, NULL, &e), -1);
    assert_contains(e.msg, "stem.conv.weight");
    net_free(&x);
    damage_teardown(&d);
}

/* ---- atomic replacement ---- */

static int count_entries(const char *dir)
{
    DIR *dp = opendir(dir);
    assert_non_null(dp);
    int n = 0;
    struct dirent *de;
    while ((de = readdir(dp)) != NULL)
        if (strcmp(de->d_name, ".") && strcmp(de->d_name, ".."))
            n++;
    closedir(dp);
    return n;
}

/* The file at path still holds exactly `n`'s values. */
static void assert_holds(const char *path, const Net *n)
{
    Net b;
    Err e = {{0}};
    net_make(&b, &n->m.spec, 1234);
    if (checkpoint_load(path, &b.m, b.params, b.state, b.momentum, NULL, &e) != 0)
        fail_msg("%s", e.msg);
    assert_memory_equal(b.params, n->params, n->m.nparams * sizeof(float));
    assert_memory_equal(b.state, n->state, n->m.nstate * sizeof(float));
    net_free(&b);
}

static void test_atomic(void **state)
{
    (void)state;
    char *dir = tu_tempdir("ckpt");
    char path[4096], tmp[4200], bad[4200];
    snprintf(path, sizeof path, "%s/ck.safetensors", dir);
    Net old, cur;
    net_make(&old, &TINY, 21);
    net_make(&cur, &TINY, 22);
    save_or_fail(path, &old, 1, NULL);
    save_or_fail(path, &old, 1, NULL); /* replacing works and leaves one file */
    assert_int_equal(count_entries(dir), 1);
    assert_holds(path, &old);
    Err e = {{0}};

    /* a folder that does not exist */
    snprintf(bad, sizeof bad, "%s/no/such/dir/ck.safetensors", dir);
    assert_int_equal(checkpoint_save(bad, &cur.m, cur.params, cur.state, NULL, NULL, &e), -1);
    assert_contains(e.msg, bad);
    assert_contains(e.msg, "No such file");

    /* the rename fails (a folder is in the way): no temporary file is left */
    snprintf(bad, sizeof bad, "%s/blocked", dir);
    assert_int_equal(mkdir(bad, 0755), 0);
    char inner[4300];
    snprintf(inner, sizeof inner, "%s/x", bad);
    tu_write_file(inner, "x", 1);
    assert_int_equal(checkpoint_save(bad, &cur.m, cur.params, cur.state, NULL, NULL, &e), -1);
    assert_contains(e.msg, bad);
    assert_int_equal(count_entries(dir), 2);
    tu_rmtree(bad);

    /* the temporary file cannot be created: the old checkpoint stays */
    snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid());
    assert_int_equal(mkdir(tmp, 0755), 0);
    assert_int_equal(checkpoint_save(path, &cur.m, cur.params, cur.state, NULL, NULL, &e), -1);
    assert_contains(e.msg, path);
    assert_int_equal(rmdir(tmp), 0);
    assert_holds(path, &old);

    /* the disk fills up mid-write (a file size limit stands in for it) */
    struct rlimit saved, small;
    assert_int_equal(getrlimit(RLIMIT_FSIZE, &saved), 0);
    void (*prev)(int) = signal(SIGXFSZ, SIG_IGN);
    small = saved;
    small.rlim_cur = 8192;
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &small), 0);
    int rc = checkpoint_save(path, &cur.m, cur.params, cur.state, cur.momentum, NULL, &e);
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &saved), 0);
    signal(SIGXFSZ, prev);
    assert_int_equal(rc, -1);
    assert_contains(e.msg, path);
    assert_contains(e.msg, strerror(EFBIG));
    assert_int_equal(count_entries(dir), 1);
    assert_holds(path, &old);

    /* a read-only folder (root ignores permissions, so only as a user) */
    if (geteuid() != 0) {
        assert_int_equal(chmod(dir, 0555), 0);
        assert_int_equal(checkpoint_save(path, &cur.m, cur.params, cur.state, NULL, NULL, &e), -1);
        assert_contains(e.msg, "Permission denied");
        assert_int_equal(chmod(dir, 0755), 0);
        assert_holds(path, &old);
    }

    /* metadata that JSON cannot carry */
    CheckpointMeta latin1 = {1, 1, 1, (char *)"{\"out\":\"caf\xe9\"}"};
    assert_int_equal(checkpoint_save(path, &cur.m, cur.params, cur.state, NULL, &latin1, &e), -1);
    assert_contains(e.msg, "UTF-8");
    assert_int_equal(count_entries(dir), 1);
    assert_holds(path, &old);

    /* and then a good save replaces it */
    save_or_fail(path, &cur, 1, NULL);
    assert_holds(path, &cur);
    assert_int_equal(count_entries(dir), 1);

    net_free(&old);
    net_free(&cur);
    tu_rmtree(dir);
    free(dir);
}

/*
 * The background writer: the same bytes as checkpoint_save, its metadata
 * copied at the start (the caller may free its own at once), a second start
 * waiting for the first, and a failed write reported by the wait (naming the
 * path) with the writer usable again.
 */
static void test_background_writer(void **state)
{
    (void)state;
    char *dir = tu_tempdir("ckpt-bg");
    char p1[4096], p2[4096], p3[4096], bad[4200];
    snprintf(p1, sizeof p1, "%s/a.safetensors", dir);
    snprintf(p2, sizeof p2, "%s/b.safetensors", dir);
    snprintf(p3, sizeof p3, "%s/c.safetensors", dir);
    snprintf(bad, sizeof bad, "%s/no/such/dir/ck.safetensors", dir);
    Net a, b;
    net_make(&a, &TINY, 31);
    net_make(&b, &TINY, 32);
    Err e = {{0}};
    CheckpointWriter w;
    memset(&w, 0, sizeof w);
    assert_int_equal(checkpoint_save_wait(&w, &e), 0);     /* nothing started */

    const char *config = "{\"depth\":8,\"width\":4}";
    CheckpointMeta meta = {40, 10, 7, strdup(config)};
    assert_int_equal(checkpoint_save_start(&w, p1, &a.m, a.params, a.state, a.momentum, &meta,
                                           &e), 0);
    memset(meta.config_json, 'x', strlen(config));          /* the caller's copy goes */
    free(meta.config_json);
    assert_int_equal(checkpoint_save_start(&w, p2, &b.m, b.params, b.state, NULL, NULL, &e), 0);
    if (checkpoint_save_wait(&w, &e))
        fail_msg("%s", e.msg);
    assert_false(w.running);
    assert_true(w.seconds > 0);
    assert_holds(p1, &a);
    assert_holds(p2, &b);
    CheckpointMeta got = {0};
    if (checkpoint_read_meta(p1, &got, &e))
        fail_msg("%s", e.msg);
    assert_true(got.step == 40 && got.epoch == 10 && got.seed == 7);
    assert_string_equal(got.config_json, config);
    checkpoint_meta_free(&got);

    /* byte for byte what checkpoint_save writes */
    CheckpointMeta same = {40, 10, 7, (char *)config};
    if (checkpoint_save(p3, &a.m, a.params, a.state, a.momentum, &same, &e))
        fail_msg("%s", e.msg);
    size_t n1 = 0, n3 = 0;
    char *f1 = tu_read_file(p1, &n1), *f3 = tu_read_file(p3, &n3);
    assert_non_null(f1);
    assert_non_null(f3);
    assert_int_equal(n1, n3);
    assert_memory_equal(f1, f3, n1);
    free(f1);
    free(f3);

    /* a write that fails: the start succeeds, the wait reports it; the
     * next start reports it too if nobody waited, and writes nothing */
    assert_int_equal(checkpoint_save_start(&w, bad, &a.m, a.params, a.state, NULL, NULL, &e), 0);
    assert_int_equal(checkpoint_save_wait(&w, &e), -1);
    assert_contains(e.msg, bad);
    assert_contains(e.msg, "No such file");
    assert_int_equal(checkpoint_save_wait(&w, &e), 0);     /* reported once */
    assert_int_equal(checkpoint_save_start(&w, bad, &a.m, a.params, a.state, NULL, NULL, &e), 0);
    assert_int_equal(checkpoint_save_start(&w, p2, &a.m, a.params, a.state, NULL, NULL, &e), -1);
    assert_contains(e.msg, bad);
    assert_holds(p2, &b);
    assert_int_equal(checkpoint_save_wait(&w, &e), 0);
    /* and then it writes again */
    assert_int_equal(checkpoint_save_start(&w, p2, &a.m, a.params, a.state, NULL, NULL, &e), 0);
    if (checkpoint_save_wait(&w, &e))
        fail_msg("%s", e.msg);
    assert_holds(p2, &a);
    assert_int_equal(count_entries(dir), 3);                /* no temporary file left */

    net_free(&a);
    net_free(&b);
    tu_rmtree(dir);
    free(dir);
}

/* A dead writer's temporary file goes; a live one's, our own, and files
 * of other names stay. */
static void test_remove_stale(void **state)
{
    (void)state;
    char *dir = tu_tempdir("ckpt-stale");
    char path[4096], f[4300];
    snprintf(path, sizeof path, "%s/ck.safetensors", dir);
    pid_t dead = fork();
    assert_true(dead >= 0);
    if (dead == 0)
        _exit(0);
    assert_int_equal(waitpid(dead, NULL, 0), dead);       /* reaped: no such process */
    const long pids[] = {(long)dead, (long)getppid(), (long)getpid()};
    for (int i = 0; i < 3; i++) {
        snprintf(f, sizeof f, "%s.tmp.%ld", path, pids[i]);
        tu_write_file(f, "x", 1);
    }
    const char *others[] = {"ck.safetensors", "ck.safetensors.tmp.12x", "ck.safetensors.tmp.",
                            "other.safetensors.tmp.1"};
    for (int i = 0; i < 4; i++) {
        snprintf(f, sizeof f, "%s/%s", dir, others[i]);
        tu_write_file(f, "x", 1);
    }
    snprintf(f, sizeof f, "%s/other.safetensors.tmp.%ld", dir, (long)dead);
    tu_write_file(f, "x", 1);
    assert_int_equal(count_entries(dir), 8);
    assert_int_equal(file_replace_stale(path), 1);
    assert_int_equal(count_entries(dir), 7);
    snprintf(f, sizeof f, "%s.tmp.%ld", path, (long)dead);
    assert_int_equal(access(f, F_OK), -1);
    assert_int_equal(file_replace_stale(path), 0);
    tu_rmtree(dir);
    free(dir);
}

/* ---- the file written by Python's safetensors ---- */

#define FIXTURE_LIST "tests/fixtures/tiny_tensors.txt"
#define FIXTURE_FILE "tests/fixtures/tiny.safetensors"

/* One line per tensor, "name d0 d1 ...", in model order: what the Python
 * script reads to lay out the fixture. */
static char *tensor_list(const Model *m)
{
    size_t cap = 64 * 1024, len = 0;
    char *s = malloc(cap);
    s[0] = 0;
    for (int i = 0; i < m->ntensors; i++) {
        const TensorInfo *t = &m->tensors[i];
        len += (size_t)snprintf(s + len, cap - len, "%s", t->name);
        for (int d = 0; d < t->ndim; d++)
            len += (size_t)snprintf(s + len, cap - len, " %d", t->shape[d]);
        len += (size_t)snprintf(s + len, cap - len, "\n");
        assert_true(len < cap);
    }
    return s;
}

static void test_fixture_list_current(void **state)
{
    (void)state;
    Net a;
    net_make(&a, &TINY, 1);
    char *want = tensor_list(&a.m);
    char *have = tu_read_file(tu_source_path(FIXTURE_LIST), NULL);
    if (!have || strcmp(have, want) != 0) {
        char *dir = tu_tempdir("fixture");
        char path[4200];
        snprintf(path, sizeof path, "%s/tiny_tensors.txt", dir);
        tu_write_file(path, want, strlen(want));
        fail_msg("%s is missing or no longer matches model.h's layout. Copy %s over it "
                 "and rerun tests/fixtures/make_safetensors_fixture.py", FIXTURE_LIST, path);
    }
    free(have);
    free(want);
    net_free(&a);
}

static void test_python_fixture(void **state)
{
    (void)state;
    Net a;
    net_make(&a, &TINY, 1);
    net_poison(&a);
    Err e = {{0}};
    CheckpointMeta meta = {0};
    if (checkpoint_load(tu_source_path(FIXTURE_FILE), &a.m, a.params, a.state, a.momentum,
                        &meta, &e) != 0)
        fail_msg("%s", e.msg);
    /* value = tensor index + element index * 1e-3, in double, then rounded
     * to float32 exactly as numpy's astype does: equal to the bit */
    for (int i = 0; i < a.m.ntensors; i++) {
        const TensorInfo *t = &a.m.tensors[i];
        const float *p = (t->arena == T_PARAM ? a.params : a.state) + t->offset;
        for (size_t k = 0; k < t->count; k++) {
            float want = (float)((double)i + (double)k * 1e-3);
            if (p[k] != want)
                fail_msg("%s[%zu] = %.9g, want %.9g", t->name, k, p[k], want);
        }
    }
    /* the fixture has no momentum: a requested momentum reads as zeros */
    for (size_t k = 0; k < a.m.nparams; k++)
        assert_true(a.momentum[k] == 0.0f);
    assert_true(meta.step == 390);
    assert_true(meta.epoch == 1);
    assert_true(meta.seed == UINT64_C(18446744073709551615));
    assert_string_equal(meta.config_json, "{\"depth\":8,\"width\":4}");
    checkpoint_meta_free(&meta);
    net_free(&a);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip_resnet),
        cmocka_unit_test(test_round_trip_resnext),
        cmocka_unit_test(test_layout),
        cmocka_unit_test(test_truncated),
        cmocka_unit_test(test_header_size_bytes),
        cmocka_unit_test(test_garbage_header),
        cmocka_unit_test(test_bad_entries),
        cmocka_unit_test(test_wrong_model),
        cmocka_unit_test(test_atomic),
        cmocka_unit_test(test_background_writer),
        cmocka_unit_test(test_remove_stale),
        cmocka_unit_test(test_fixture_list_current),
        cmocka_unit_test(test_python_fixture),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
