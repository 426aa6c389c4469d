/* Shared test helpers; see testutil.h. */
#define _GNU_SOURCE
#include "testutil.h"

#include <ftw.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "philox.h"

char *tu_tempdir(const char *tag)
{
    const char *base = getenv("TMPDIR");
    char *path = NULL;
    if (asprintf(&path, "%s/shake-%s-XXXXXX", base ? base : "/tmp", tag) < 0)
        fail_msg("asprintf");
    if (!mkdtemp(path))
        fail_msg("mkdtemp %s failed", path);
    return path;
}

static int rm_one(const char *p, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb; (void)flag; (void)ftw;
    return remove(p);
}

void tu_rmtree(const char *path)
{
    nftw(path, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

void tu_fill_uniform(float *x, size_t n, uint64_t seed, float lo, float hi)
{
    for (size_t i = 0; i < n; i++)
        x[i] = lo + (hi - lo) * rng_uniform(seed, RNG_TEST, (uint32_t)i, (uint32_t)(i >> 32), 0);
}

double tu_max_abs(const float *a, size_t n)
{
    double m = 0;
    for (size_t i = 0; i < n; i++)
        if (fabs(a[i]) > m)
            m = fabs(a[i]);
    return m;
}

double tu_rel_err(const float *a, const float *b, size_t n)
{
    double scale = tu_max_abs(b, n), worst = 0;
    if (scale < 1e-30)
        scale = 1e-30;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - (double)b[i]);
        if (isnan(a[i]) || isnan(b[i]))
            return INFINITY;
        if (d > worst)
            worst = d;
    }
    return worst / scale;
}

double tu_xent(float *dlogits, const float *logits, const int *labels, int n, int classes)
{
    double total = 0.0;
    for (int i = 0; i < n; i++) {
        const float *z = logits + (size_t)i * classes;
        double zmax = z[0], sum = 0.0;
        for (int c = 1; c < classes; c++)
            zmax = z[c] > zmax ? z[c] : zmax;
        for (int c = 0; c < classes; c++)
            sum += exp(z[c] - zmax);
        const double lse = zmax + log(sum);
        total += lse - z[labels[i]];
        for (int c = 0; dlogits && c < classes; c++)
            dlogits[(size_t)i * classes + c] = (float)((exp(z[c] - lse) - (c == labels[i])) / n);
    }
    return total / n;
}

void tu_write_file(const char *path, const void *data, size_t len)
{
    FILE *f = fopen(path, "wb");
    if (!f)
        fail_msg("cannot write %s", path);
    if (len && fwrite(data, 1, len, f) != len)
        fail_msg("short write to %s", path);
    fclose(f);
}

void *tu_read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)n + 1);
    if (fread(buf, 1, (size_t)n, f) != (size_t)n) {
        fclose(f);
        free(buf);
        return NULL;
    }
    buf[n] = 0;
    fclose(f);
    if (len)
        *len = (size_t)n;
    return buf;
}

int tu_run_sweep(char **output, const char *fmt, ...)
{
    char *args = NULL, *cmd = NULL;
    va_list ap;
    va_start(ap, fmt);
    if (vasprintf(&args, fmt, ap) < 0)
        fail_msg("vasprintf");
    va_end(ap);
    if (asprintf(&cmd, "'%s' %s 2>&1", SHAKE_SWEEP_BIN, args) < 0)
        fail_msg("asprintf");
    FILE *p = popen(cmd, "r");
    if (!p)
        fail_msg("popen %s", cmd);
    size_t cap = 4096, len = 0;
    char *out = malloc(cap);
    size_t got;
    while ((got = fread(out + len, 1, cap - len - 1, p)) > 0) {
        len += got;
        if (cap - len < 2) {
            cap *= 2;
            out = realloc(out, cap);
        }
    }
    out[len] = 0;
    int status = pclose(p);
    free(args);
    free(cmd);
    if (output)
        *output = out;
    else
        free(out);
    if (WIFEXITED(status))
        return WEXITSTATUS(status);
    return -1;
}

static void cifar_record(unsigned char *rec, uint64_t seed, uint32_t index)
{
    rec[0] = (unsigned char)(rng_u32(seed, RNG_TEST, index, 0xffffffffu, 0) % 10);
    for (int k = 0; k < 3072; k++)
        rec[1 + k] = (unsigned char)(rng_u32(seed, RNG_TEST, index, (uint32_t)k, 1) >> 24);
}

void tu_write_cifar10(const char *dir, int n_train, int n_test, uint64_t seed,
                      int test_is_train)
{
    int most = n_train > n_test ? n_train : n_test;
    unsigned char *buf = malloc((size_t)3073 * (most > 0 ? most : 1));
    char path[4096];
    int at = 0;
    for (int b = 0; b < 5; b++) {
        int count = n_train / 5 + (b < n_train % 5);
        for (int i = 0; i < count; i++)
            cifar_record(buf + (size_t)3073 * i, seed, (uint32_t)(at + i));
        at += count;
        snprintf(path, sizeof path, "%s/data_batch_%d.bin", dir, b + 1);
        tu_write_file(path, buf, (size_t)3073 * count);
    }
    if (test_is_train && n_test != n_train)
        fail_msg("tu_write_cifar10: test_is_train needs n_test = n_train");
    for (int i = 0; i < n_test; i++)
        cifar_record(buf + (size_t)3073 * i, test_is_train ? seed : seed + 1, (uint32_t)i);
    snprintf(path, sizeof path, "%s/test_batch.bin", dir);
    tu_write_file(path, buf, (size_t)3073 * n_test);
    free(buf);
}

const char *tu_source_path(const char *rel)
{
    static char buf[4096];
    snprintf(buf, sizeof buf, "%s/%s", SHAKE_SOURCE_DIR, rel);
    return buf;
}

void tu_model(Model *m, const ModelSpec *spec)
{
    Err e = {{0}};
    if (model_build(m, spec, &e))
        fail_msg("%s", e.msg);
}

void tu_checkpoint_load(TuCheckpoint *l, const char *dir, const TrainConfig *c)
{
    char path[4096];
    Err e = {{0}};
    snprintf(path, sizeof path, "%s/checkpoint.safetensors", dir);
    ModelSpec spec;
    config_model_spec(c, 10, 3, 32, 32, &spec);
    tu_model(&l->m, &spec);
    l->params = malloc(l->m.nparams * sizeof(float));
    l->state = malloc(l->m.nstate * sizeof(float));
    l->mom = malloc(l->m.nparams * sizeof(float));
    if (checkpoint_load(path, &l->m, l->params, l->state, l->mom, &l->meta, &e))
        fail_msg("%s: %s", path, e.msg);
}

void tu_checkpoint_free(TuCheckpoint *l)
{
    free(l->params);
    free(l->state);
    free(l->mom);
    checkpoint_meta_free(&l->meta);
    model_free(&l->m);
}

void tu_assert_same_run(const char *a, const char *b, const TrainConfig *c)
{
    TuCheckpoint x, y;
    tu_checkpoint_load(&x, a, c);
    tu_checkpoint_load(&y, b, c);
    assert_int_equal(x.meta.step, y.meta.step);
    assert_int_equal(x.meta.epoch, y.meta.epoch);
    assert_memory_equal(x.params, y.params, x.m.nparams * sizeof(float));
    assert_memory_equal(x.state, y.state, x.m.nstate * sizeof(float));
    assert_memory_equal(x.mom, y.mom, x.m.nparams * sizeof(float));
    tu_checkpoint_free(&x);
    tu_checkpoint_free(&y);
}

void tu_train(const TrainConfig *c, int want)
{
    Err e = {{0}};
    int st = train_run(c, NULL, &e);
    if (st != want)
        fail_msg("train_run (backend %s) returned %d (want %d): %s", c->backend, st, want,
                 e.msg);
}

void tu_resume_case(const TrainConfig *base, const char *root, int64_t stop_step)
{
    /* run folders fit TrainConfig's out (512) */
    char straight[480], part[480], cont[480], ck[520];
    if (strlen(root) > 400)
        fail_msg("tu_resume_case: folder name too long: %s", root);
    snprintf(straight, sizeof straight, "%.400s/straight", root);
    snprintf(part, sizeof part, "%.400s/part", root);
    snprintf(cont, sizeof cont, "%.400s/cont", root);
    TrainConfig c = *base;
    snprintf(c.out, sizeof c.out, "%s", straight);
    tu_train(&c, TRAIN_DONE);

    c = *base;
    snprintf(c.out, sizeof c.out, "%s", part);
    c.steps = stop_step;
    tu_train(&c, TRAIN_STOPPED);

    snprintf(ck, sizeof ck, "%s/checkpoint.safetensors", part);
    Err e = {{0}};
    char outkv[500];
    snprintf(outkv, sizeof outkv, "out=%s", cont);
    char *assign[] = {outkv};
    if (train_resume_config(&c, ck, assign, 1, &e))
        fail_msg("%s", e.msg);
    assert_int_equal(c.epochs, base->epochs);
    assert_int_equal(c.steps, stop_step); /* kept from the checkpoint: override it */
    c.steps = 0;
    tu_train(&c, TRAIN_DONE);
    tu_assert_same_run(straight, cont, &c);
}
