/*
 * The record of the convolution algorithms a run picked (core/algo_record.h):
 * entries stored and found again by their whole key, through the file;
 * written only when something changed, atomically, and never half; a file
 * or entries that are not of the record's form set aside with a warning
 * that names the file (and the first bad entry), not an error; another
 * run's record as the seed of a new one; a save that cannot be written is
 * an error naming the file.
 */
#define _GNU_SOURCE
#include "testutil.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>

#include "algo_record.h"

static AlgoKey key_of(const char *conv, int batch)
{
    return (AlgoKey){"NVIDIA H200 (sm_90)", "cuDNN 9.14.0", "bf16", "find", conv, batch};
}

/* Lists with n candidates a direction, made from tag so that two differ. */
static AlgoLists lists_of(int tag, int n)
{
    AlgoLists l;
    memset(&l, 0, sizeof l);
    for (int d = 0; d < ALGO_DIRS; d++) {
        l.count[d] = n;
        for (int i = 0; i < n; i++) {
            l.algo[d][i] = (tag + 3 * d + i) % 8;
            l.math[d][i] = (tag + d + i) % 4;
        }
    }
    return l;
}

static void assert_lists_equal(const AlgoLists *a, const AlgoLists *b)
{
    for (int d = 0; d < ALGO_DIRS; d++) {
        assert_int_equal(a->count[d], b->count[d]);
        for (int i = 0; i < a->count[d]; i++) {
            assert_int_equal(a->algo[d][i], b->algo[d][i]);
            assert_int_equal(a->math[d][i], b->math[d][i]);
        }
    }
}

static AlgoRecord *open_ok(const char *path, const char *seed)
{
    Err e = {{0}};
    AlgoRecord *r = algo_record_open(path, seed, &e);
    if (!r)
        fail_msg("open %s: %s", path, e.msg);
    return r;
}

static void save_ok(AlgoRecord *r)
{
    Err e = {{0}};
    if (algo_record_save(r, &e))
        fail_msg("save: %s", e.msg);
}

static void put_ok(AlgoRecord *r, const AlgoKey *k, const AlgoLists *l)
{
    Err e = {{0}};
    if (algo_record_put(r, k, l, &e))
        fail_msg("put: %s", e.msg);
}

/* No file but path itself in dir (no temporary file left behind). */
static void assert_only_file(const char *dir, const char *name)
{
    DIR *d = opendir(dir);
    assert_non_null(d);
    struct dirent *de;
    int n = 0;
    while ((de = readdir(d))) {
        if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
            continue;
        if (strcmp(de->d_name, name) != 0)
            fail_msg("%s holds %s besides %s", dir, de->d_name, name);
        n++;
    }
    closedir(d);
    assert_int_equal(n, 1);
}

/* Stored, found by the whole key and only by it, across a save and a
 * reopen; a changed entry replaces the old one. */
static void test_round_trip(void **ctx)
{
    (void)ctx;
    char *dir = tu_tempdir("algo-record");
    char path[600];
    snprintf(path, sizeof path, "%s/rec.json", dir);
    AlgoRecord *r = open_ok(path, NULL);
    assert_null(algo_record_warning(r));
    AlgoKey k1 = key_of("3x3 conv 16 -> 16", 128), k2 = key_of("3x3 conv 16 -> 16", 80);
    AlgoLists l1 = lists_of(1, ALGO_MAX), l2 = lists_of(2, 1), got;
    assert_int_equal(algo_record_get(r, &k1, &got), 0);
    put_ok(r, &k1, &l1);
    put_ok(r, &k2, &l2);
    save_ok(r);
    algo_record_close(r);
    assert_only_file(dir, "rec.json");

    r = open_ok(path, NULL);
    assert_null(algo_record_warning(r));
    assert_int_equal(algo_record_get(r, &k1, &got), 1);
    assert_lists_equal(&got, &l1);
    assert_int_equal(algo_record_get(r, &k2, &got), 1);
    assert_lists_equal(&got, &l2);
    /* every part of the key counts */
    for (int f = 0; f < 6; f++) {
        AlgoKey k = k1;
        switch (f) {
        case 0: k.gpu = "NVIDIA H100 80GB HBM3 (sm_90)"; break;
        case 1: k.library = "cuDNN 9.19.0"; break;
        case 2: k.precision = "fp32"; break;
        case 3: k.search = "heuristics"; break;
        case 4: k.conv = "3x3 conv 16 -> 32"; break;
        case 5: k.batch = 16; break;
        }
        if (algo_record_get(r, &k, &got))
            fail_msg("found an entry for a key that differs in field %d", f);
    }
    /* the same lists again: nothing to write (the file, removed, stays away) */
    put_ok(r, &k1, &l1);
    unlink(path);
    save_ok(r);
    struct stat st;
    assert_int_not_equal(stat(path, &st), 0);
    /* other lists replace the entry */
    AlgoLists l3 = lists_of(5, 3);
    put_ok(r, &k1, &l3);
    save_ok(r);
    algo_record_close(r);
    r = open_ok(path, NULL);
    assert_int_equal(algo_record_get(r, &k1, &got), 1);
    assert_lists_equal(&got, &l3);
    assert_int_equal(algo_record_get(r, &k2, &got), 1);
    json_t *root = json_load_file(path, 0, NULL);
    assert_non_null(root);
    assert_int_equal(json_array_size(json_object_get(root, "entries")), 2);
    json_decref(root);
    algo_record_close(r);
    tu_rmtree(dir);
    free(dir);
}

/* A list of no candidates or of more than ALGO_MAX is refused by name. */
static void test_bad_lists(void **ctx)
{
    (void)ctx;
    char *dir = tu_tempdir("algo-record");
    char path[600];
    snprintf(path, sizeof path, "%s/rec.json", dir);
    AlgoRecord *r = open_ok(path, NULL);
    AlgoKey k = key_of("1x1 conv 32 -> 64", 128);
    for (int bad = 0; bad < 2; bad++) {
        AlgoLists l = lists_of(1, 2);
        l.count[2] = bad ? ALGO_MAX + 1 : 0;
        Err e = {{0}};
        assert_int_equal(algo_record_put(r, &k, &l, &e), -1);
        if (!strstr(e.msg, "backward_filter") || !strstr(e.msg, path))
            fail_msg("the error names neither the direction nor the file: %s", e.msg);
        AlgoLists got;
        assert_int_equal(algo_record_get(r, &k, &got), 0);
    }
    algo_record_close(r);
    tu_rmtree(dir);
    free(dir);
}

/* Files that are not the record, or entries that are not of its form: a
 * warning naming the file, the good entries kept, the file rewritten
 * whole at the next save. */
static void test_damaged(void **ctx)
{
    (void)ctx;
    char *dir = tu_tempdir("algo-record");
    char path[600];
    snprintf(path, sizeof path, "%s/rec.json", dir);
    const char *bad_files[] = {
        "",
        "{\"format\": \"shakeshake convolution algorithms\", \"version\": 1, \"entries\": [",
        "[1, 2, 3]",
        "{\"format\": \"something else\", \"version\": 1, \"entries\": []}",
        "{\"format\": \"shakeshake convolution algorithms\", \"version\": 2, \"entries\": []}",
        "{\"format\": \"shakeshake convolution algorithms\", \"version\": 1, \"entries\": {}}",
    };
    AlgoKey k = key_of("3x3 conv 64 -> 64", 128);
    AlgoLists l = lists_of(3, 2), got;
    for (size_t i = 0; i < sizeof bad_files / sizeof bad_files[0]; i++) {
        tu_write_file(path, bad_files[i], strlen(bad_files[i]));
        AlgoRecord *r = open_ok(path, NULL);
        const char *w = algo_record_warning(r);
        if (!w || !strstr(w, path))
            fail_msg("file %zu (%s): no warning naming the file: %s", i, bad_files[i],
                     w ? w : "(none)");
        assert_int_equal(algo_record_get(r, &k, &got), 0);
        put_ok(r, &k, &l);
        save_ok(r);
        algo_record_close(r);
        r = open_ok(path, NULL);
        assert_null(algo_record_warning(r));
        assert_int_equal(algo_record_get(r, &k, &got), 1);
        algo_record_close(r);
    }

    /* one good entry among bad ones: the good one is kept */
    AlgoRecord *r = open_ok(path, NULL);
    save_ok(r);
    algo_record_close(r);
    json_t *root = json_load_file(path, 0, NULL);
    assert_non_null(root);
    json_t *entries = json_object_get(root, "entries");
    json_t *good = json_array_get(entries, 0);
    const char *breakers[] = {"batch=0", "batch=str", "gpu=int", "forward=empty",
                              "forward=long", "forward=pair3", "forward=negative", "conv=none"};
    for (size_t i = 0; i < sizeof breakers / sizeof breakers[0]; i++) {
        json_t *en = json_deep_copy(good);
        const char *b = breakers[i];
        if (!strcmp(b, "batch=0"))
            json_object_set_new(en, "batch", json_integer(0));
        else if (!strcmp(b, "batch=str"))
            json_object_set_new(en, "batch", json_string("128"));
        else if (!strcmp(b, "gpu=int"))
            json_object_set_new(en, "gpu", json_integer(9));
        else if (!strcmp(b, "forward=empty"))
            json_object_set_new(en, "forward", json_array());
        else if (!strcmp(b, "forward=long")) {
            json_t *l9 = json_array();
            for (int j = 0; j <= ALGO_MAX; j++)
                json_array_append_new(l9, json_pack("[ii]", 1, 0));
            json_object_set_new(en, "forward", l9);
        } else if (!strcmp(b, "forward=pair3"))
            json_object_set_new(en, "forward", json_pack("[[iii]]", 1, 0, 0));
        else if (!strcmp(b, "forward=negative"))
            json_object_set_new(en, "forward", json_pack("[[ii]]", -1, 0));
        json_object_set_new(en, "conv", json_string(b));
        if (!strcmp(b, "conv=none"))
            json_object_del(en, "conv");
        json_array_append_new(entries, en);
    }
    if (json_dump_file(root, path, 0))
        fail_msg("cannot write %s", path);
    json_decref(root);
    r = open_ok(path, NULL);
    const char *w = algo_record_warning(r);
    char want[64];
    snprintf(want, sizeof want, "%zu of %zu entries", sizeof breakers / sizeof breakers[0],
             sizeof breakers / sizeof breakers[0] + 1);
    if (!w || !strstr(w, path) || !strstr(w, want) || !strstr(w, "entries[1]"))
        fail_msg("the warning does not name the file, the count (%s) and the first bad "
                 "entry: %s", want, w ? w : "(none)");
    assert_int_equal(algo_record_get(r, &k, &got), 1);
    assert_lists_equal(&got, &l);
    for (size_t i = 0; i < sizeof breakers / sizeof breakers[0]; i++) {
        AlgoKey kb = k;
        kb.conv = breakers[i];
        assert_int_equal(algo_record_get(r, &kb, &got), 0);
    }
    /* the bad entries leave the file at the next save */
    save_ok(r);
    algo_record_close(r);
    root = json_load_file(path, 0, NULL);
    assert_non_null(root);
    assert_int_equal(json_array_size(json_object_get(root, "entries")), 1);
    json_decref(root);
    tu_rmtree(dir);
    free(dir);
}

/* Another run's record seeds a new one, which is written to its own path
 * (the seed untouched); an existing record wins over the seed. */
static void test_seed(void **ctx)
{
    (void)ctx;
    char *dir = tu_tempdir("algo-record");
    char a[600], b[600];
    snprintf(a, sizeof a, "%s/a.json", dir);
    snprintf(b, sizeof b, "%s/b.json", dir);
    AlgoKey k = key_of("3x3 conv 3 -> 16", 128);
    AlgoLists la = lists_of(1, 2), lb = lists_of(6, 4), got;
    AlgoRecord *r = open_ok(a, NULL);
    put_ok(r, &k, &la);
    save_ok(r);
    algo_record_close(r);
    size_t len_a0, len_a1;
    char *a0 = tu_read_file(a, &len_a0);

    r = open_ok(b, a);
    assert_int_equal(algo_record_get(r, &k, &got), 1);
    assert_lists_equal(&got, &la);
    save_ok(r);             /* nothing new, but b has no file yet */
    algo_record_close(r);
    r = open_ok(b, NULL);
    assert_int_equal(algo_record_get(r, &k, &got), 1);
    put_ok(r, &k, &lb);
    save_ok(r);
    algo_record_close(r);
    char *a1 = tu_read_file(a, &len_a1);
    assert_true(len_a0 == len_a1 && memcmp(a0, a1, len_a0) == 0);
    free(a0);
    free(a1);
    /* b exists now: it, not the seed, is read */
    r = open_ok(b, a);
    assert_int_equal(algo_record_get(r, &k, &got), 1);
    assert_lists_equal(&got, &lb);
    algo_record_close(r);
    /* a seed that does not exist is no error */
    char none[700];
    snprintf(none, sizeof none, "%s/c.json", dir);
    r = open_ok(none, "/nonexistent/record.json");
    assert_null(algo_record_warning(r));
    assert_int_equal(algo_record_get(r, &k, &got), 0);
    algo_record_close(r);
    tu_rmtree(dir);
    free(dir);
}

/* A save where the file cannot be written: an error naming the file, and
 * the record keeps its entries for a later save that can. */
static void test_unwritable(void **ctx)
{
    (void)ctx;
    char *dir = tu_tempdir("algo-record");
    char path[700], sub[600];
    snprintf(sub, sizeof sub, "%s/later", dir);
    snprintf(path, sizeof path, "%s/rec.json", sub);
    AlgoRecord *r = open_ok(path, NULL);
    AlgoKey k = key_of("3x3 conv 16 -> 32", 64);
    AlgoLists l = lists_of(2, 3), got;
    put_ok(r, &k, &l);
    Err e = {{0}};
    assert_int_equal(algo_record_save(r, &e), -1);
    if (!strstr(e.msg, path))
        fail_msg("the error does not name the file: %s", e.msg);
    Err me = {{0}};
    if (mkdir_p(sub, &me))
        fail_msg("%s", me.msg);
    save_ok(r);
    algo_record_close(r);
    r = open_ok(path, NULL);
    assert_int_equal(algo_record_get(r, &k, &got), 1);
    assert_lists_equal(&got, &l);
    algo_record_close(r);
    assert_only_file(sub, "rec.json");
    tu_rmtree(dir);
    free(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip), cmocka_unit_test(test_bad_lists),
        cmocka_unit_test(test_damaged),    cmocka_unit_test(test_seed),
        cmocka_unit_test(test_unwritable),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
