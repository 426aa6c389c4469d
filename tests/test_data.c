/*
 * Data loading and batching: fixtures in the real on-disk formats (CIFAR-10,
 * CIFAR-100, IDX plain and gzipped) written to a scratch folder, every bad
 * input the loaders must reject, the class-balanced subset, epoch order, and
 * the augmentation recomputed independently from its specified Philox keys.
 */
#include "testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <zlib.h>

#include "data.h"
#include "philox.h"

/* ---- fixture writers ---- */

static char *path_in(const char *dir, const char *name)
{
    static char buf[4][4096];
    static int k;
    k = (k + 1) % 4;
    snprintf(buf[k], sizeof buf[k], "%s/%s", dir, name);
    return buf[k];
}

/* Pixel (c, y, x) of CIFAR record g: distinct across records and planes so
 * that a wrong offset or plane order shows. */
static uint8_t cifar_px(int g, int c, int y, int x)
{
    return (uint8_t)(g * 7 + c * 85 + y * 3 + x);
}

static int c10_label(int g) { return (g * 3 + 1) % 10; }
/* Fine labels 20..99 and coarse = fine / 5 < fine: reading the wrong byte
 * cannot pass by accident. */
static int c100_fine(int g) { return 20 + (g * 37 + 5) % 80; }
static int c100_coarse(int g) { return c100_fine(g) / 5; }

/* n records starting at global record number g0; rec 3073 (CIFAR-10) or
 * 3074 (CIFAR-100: coarse, fine). */
static void write_cifar(const char *dir, const char *name, int g0, int n, int rec)
{
    uint8_t *buf = malloc((size_t)n * rec);
    for (int r = 0; r < n; r++) {
        int g = g0 + r;
        uint8_t *p = buf + (size_t)r * rec;
        if (rec == 3073) {
            *p++ = (uint8_t)c10_label(g);
        } else {
            *p++ = (uint8_t)c100_coarse(g);
            *p++ = (uint8_t)c100_fine(g);
        }
        for (int c = 0; c < 3; c++)
            for (int y = 0; y < 32; y++)
                for (int x = 0; x < 32; x++)
                    *p++ = cifar_px(g, c, y, x);
    }
    tu_write_file(path_in(dir, name), buf, (size_t)n * rec);
    free(buf);
}

static const int c10_counts[5] = {3, 2, 4, 1, 2};

static char *make_cifar10(const char *tag)
{
    char *dir = tu_tempdir(tag);
    char name[64];
    int g = 0;
    for (int b = 0; b < 5; b++) {
        snprintf(name, sizeof name, "data_batch_%d.bin", b + 1);
        write_cifar(dir, name, g, c10_counts[b], 3073);
        g += c10_counts[b];
    }
    write_cifar(dir, "test_batch.bin", 1000, 5, 3073);
    return dir;
}

static void put_be32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

static void write_maybe_gz(const char *path, const uint8_t *data, size_t len, int gz)
{
    if (!gz) {
        tu_write_file(path, data, len);
        return;
    }
    gzFile g = gzopen(path, "wb");
    assert_non_null(g);
    assert_int_equal(gzwrite(g, data, (unsigned)len), (int)len);
    assert_int_equal(gzclose(g), Z_OK);
}

static uint8_t idx_px(int i, int y, int x) { return (uint8_t)(i * 11 + y * 5 + x); }
static int idx_label(int i) { return (i * 7 + 2) % 10; }

/* IDX images (n x rows x cols) and labels (nl); trim cuts bytes off the end
 * of the image file; label_bump adds to every label. */
typedef struct {
    int n, nl, rows, cols, trim, gz;
    uint32_t img_magic;
    int label_bump;
} IdxSpec;

static void write_idx(const char *dir, const char *images, const char *labels, IdxSpec s)
{
    size_t ilen = 16 + (size_t)s.n * s.rows * s.cols, llen = 8 + (size_t)s.nl;
    uint8_t *ib = malloc(ilen), *lb = malloc(llen);
    put_be32(ib, s.img_magic ? s.img_magic : 0x803);
    put_be32(ib + 4, (uint32_t)s.n);
    put_be32(ib + 8, (uint32_t)s.rows);
    put_be32(ib + 12, (uint32_t)s.cols);
    for (int i = 0; i < s.n; i++)
        for (int y = 0; y < s.rows; y++)
            for (int x = 0; x < s.cols; x++)
                ib[16 + ((size_t)i * s.rows + y) * s.cols + x] = idx_px(i, y, x);
    put_be32(lb, 0x801);
    put_be32(lb + 4, (uint32_t)s.nl);
    for (int i = 0; i < s.nl; i++)
        lb[8 + i] = (uint8_t)(idx_label(i) + s.label_bump);
    char name[256];
    snprintf(name, sizeof name, "%s%s", images, s.gz ? ".gz" : "");
    write_maybe_gz(path_in(dir, name), ib, ilen - (size_t)s.trim, s.gz);
    snprintf(name, sizeof name, "%s%s", labels, s.gz ? ".gz" : "");
    write_maybe_gz(path_in(dir, name), lb, llen, s.gz);
    free(ib);
    free(lb);
}

static void write_idx_set(const char *dir, int ntrain, int ntest, int gz)
{
    IdxSpec tr = {.n = ntrain, .nl = ntrain, .rows = 28, .cols = 28, .gz = gz};
    IdxSpec te = {.n = ntest, .nl = ntest, .rows = 28, .cols = 28, .gz = gz};
    write_idx(dir, "train-images-idx3-ubyte", "train-labels-idx1-ubyte", tr);
    write_idx(dir, "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte", te);
}

/* ---- names ---- */

static void test_kind_names(void **state)
{
    (void)state;
    const char *names[] = {"cifar10", "cifar100", "fashion-mnist", "mnist", "synthetic"};
    for (int k = 0; k < 5; k++) {
        assert_int_equal(dataset_kind(names[k]), k);
        assert_string_equal(dataset_name((DatasetKind)k), names[k]);
    }
    assert_int_equal(dataset_kind("cifar-10"), -1);
    assert_int_equal(dataset_kind(""), -1);
    assert_string_equal(dataset_default_dir(DS_CIFAR10), "data/cifar-10-batches-bin");
    assert_string_equal(dataset_default_dir(DS_CIFAR100), "data/cifar-100-binary");
    assert_string_equal(dataset_default_dir(DS_FASHION_MNIST), "/usr/share/datasets/fashion-mnist");
    assert_string_equal(dataset_default_dir(DS_MNIST), "data/mnist");
    assert_string_equal(dataset_default_dir(DS_SYNTHETIC), "");
}

/* ---- CIFAR ---- */

static void check_cifar_pixels(const Dataset *d, int i, int g)
{
    for (int c = 0; c < 3; c++)
        for (int y = 0; y < 32; y++)
            for (int x = 0; x < 32; x++)
                if (d->pixels[(((size_t)i * 3 + c) * 32 + y) * 32 + x] != cifar_px(g, c, y, x))
                    fail_msg("image %d pixel (%d,%d,%d) differs", i, c, y, x);
}

static void test_cifar10_load(void **state)
{
    (void)state;
    char *dir = make_cifar10("c10");
    Dataset tr, te;
    Err e = {{0}};
    if (dataset_load(&tr, &te, DS_CIFAR10, dir, 0, &e))
        fail_msg("%s", e.msg);
    assert_int_equal(tr.n, 12);
    assert_int_equal(te.n, 5);
    assert_int_equal(tr.c, 3);
    assert_int_equal(tr.h, 32);
    assert_int_equal(tr.w, 32);
    assert_int_equal(tr.classes, 10);
    assert_int_equal(tr.flip, 1);
    assert_true(tr.kind == DS_CIFAR10);
    assert_float_equal(tr.mean[0], 125.3f, 0);
    assert_float_equal(tr.mean[2], 113.9f, 0);
    assert_float_equal(tr.std[1], 62.1f, 0);
    /* Files concatenate in batch order 1..5. */
    for (int i = 0; i < tr.n; i++) {
        assert_int_equal(tr.labels[i], c10_label(i));
        check_cifar_pixels(&tr, i, i);
    }
    for (int i = 0; i < te.n; i++) {
        assert_int_equal(te.labels[i], c10_label(1000 + i));
        check_cifar_pixels(&te, i, 1000 + i);
    }
    /* The R, G, B planes are where they should be (spot check by value). */
    assert_int_equal(tr.pixels[3072 * 4 + 1024 * 2 + 32 * 5 + 7], cifar_px(4, 2, 5, 7));
    dataset_free(&tr);
    dataset_free(&te);
    assert_null(tr.pixels);
    dataset_free(&tr);      /* twice is harmless */
    tu_rmtree(dir);
    free(dir);
}

static void test_cifar100_load(void **state)
{
    (void)state;
    char *dir = tu_tempdir("c100");
    write_cifar(dir, "train.bin", 0, 30, 3074);
    write_cifar(dir, "test.bin", 500, 7, 3074);
    Dataset tr, te;
    Err e = {{0}};
    if (dataset_load(&tr, &te, DS_CIFAR100, dir, 0, &e))
        fail_msg("%s", e.msg);
    assert_int_equal(tr.n, 30);
    assert_int_equal(te.n, 7);
    assert_int_equal(tr.classes, 100);
    assert_int_equal(tr.flip, 1);
    assert_float_equal(tr.mean[0], 129.3f, 0);
    assert_float_equal(tr.std[2], 70.4f, 0);
    for (int i = 0; i < tr.n; i++) {
        /* The fine label, not the coarse one that precedes it. */
        assert_int_equal(tr.labels[i], c100_fine(i));
        check_cifar_pixels(&tr, i, i);
    }
    for (int i = 0; i < te.n; i++) {
        assert_int_equal(te.labels[i], c100_fine(500 + i));
        check_cifar_pixels(&te, i, 500 + i);
    }
    dataset_free(&tr);
    dataset_free(&te);
    tu_rmtree(dir);
    free(dir);
}

/* ---- IDX ---- */

static void check_idx(const Dataset *d, int n)
{
    assert_int_equal(d->n, n);
    assert_int_equal(d->c, 1);
    assert_int_equal(d->h, 28);
    assert_int_equal(d->w, 28);
    assert_int_equal(d->classes, 10);
    for (int i = 0; i < n; i++) {
        assert_int_equal(d->labels[i], idx_label(i));
        for (int y = 0; y < 28; y++)
            for (int x = 0; x < 28; x++)
                if (d->pixels[((size_t)i * 28 + y) * 28 + x] != idx_px(i, y, x))
                    fail_msg("IDX image %d pixel (%d,%d) differs", i, y, x);
    }
}

static void test_idx_plain_and_gz(void **state)
{
    (void)state;
    Err e = {{0}};
    for (int gz = 0; gz < 2; gz++) {
        char *dir = tu_tempdir(gz ? "idxgz" : "idx");
        write_idx_set(dir, 23, 9, gz);
        Dataset tr, te;
        if (dataset_load(&tr, &te, DS_MNIST, dir, 0, &e))
            fail_msg("gz=%d: %s", gz, e.msg);
        check_idx(&tr, 23);
        check_idx(&te, 9);
        assert_int_equal(tr.flip, 0);   /* digits are not mirror-symmetric */
        assert_float_equal(tr.mean[0], 33.32f, 0);
        assert_float_equal(tr.std[0], 78.57f, 0);
        dataset_free(&tr);
        dataset_free(&te);
        if (dataset_load(&tr, &te, DS_FASHION_MNIST, dir, 0, &e))
            fail_msg("gz=%d: %s", gz, e.msg);
        check_idx(&tr, 23);
        assert_int_equal(tr.flip, 1);
        assert_float_equal(tr.mean[0], 72.94f, 0);
        assert_float_equal(tr.std[0], 90.02f, 0);
        dataset_free(&tr);
        dataset_free(&te);
        tu_rmtree(dir);
        free(dir);
    }
    /* Mixed: the plain name wins where both exist, .gz is the fallback. */
    char *dir = tu_tempdir("idxmix");
    write_idx_set(dir, 23, 9, 0);
    IdxSpec other = {.n = 4, .nl = 4, .rows = 28, .cols = 28, .gz = 1};
    write_idx(dir, "train-images-idx3-ubyte", "train-labels-idx1-ubyte", other);
    remove(path_in(dir, "t10k-labels-idx1-ubyte"));
    IdxSpec te = {.n = 9, .nl = 9, .rows = 28, .cols = 28, .gz = 1};
    write_idx(dir, "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte", te);
    Dataset tr, ts;
    if (dataset_load(&tr, &ts, DS_MNIST, dir, 0, &e))
        fail_msg("%s", e.msg);
    check_idx(&tr, 23);
    check_idx(&ts, 9);
    dataset_free(&tr);
    dataset_free(&ts);
    tu_rmtree(dir);
    free(dir);
}

static void test_fashion_mnist_real(void **state)
{
    (void)state;
    const char *dir = "/usr/share/datasets/fashion-mnist";
    struct stat st;
    if (stat(dir, &st) != 0)
        skip();
    Dataset tr, te;
    Err e = {{0}};
    if (dataset_load(&tr, &te, DS_FASHION_MNIST, dir, 0, &e))
        fail_msg("%s", e.msg);
    assert_int_equal(tr.n, 60000);
    assert_int_equal(te.n, 10000);
    assert_int_equal(tr.h, 28);
    assert_int_equal(tr.w, 28);
    assert_int_equal(tr.c, 1);
    /* Fashion-MNIST has exactly 6000 training and 1000 test images per class. */
    int count[10] = {0}, tcount[10] = {0};
    for (int i = 0; i < tr.n; i++) {
        assert_true(tr.labels[i] < 10);
        count[tr.labels[i]]++;
    }
    for (int i = 0; i < te.n; i++) {
        assert_true(te.labels[i] < 10);
        tcount[te.labels[i]]++;
    }
    for (int k = 0; k < 10; k++) {
        assert_int_equal(count[k], 6000);
        assert_int_equal(tcount[k], 1000);
    }
    /* The stated normalization matches the data: pixel mean 72.94 on 0..255
     * (0.2860); 0.5 allows for rounding of the published constant. */
    double sum = 0;
    size_t np = (size_t)tr.n * 784;
    for (size_t k = 0; k < np; k++)
        sum += tr.pixels[k];
    assert_true(fabs(sum / (double)np - 72.94) < 0.5);
    dataset_free(&tr);
    dataset_free(&te);
}

/* ---- bad inputs ---- */

/* Loads and expects failure with a message containing `want` (and, when
 * want2 is given, that too), and both outputs left empty. */
static void expect_fail(DatasetKind kind, const char *dir, const char *want, const char *want2)
{
    Dataset tr, te;
    Err e = {{0}};
    memset(&tr, 0x5a, sizeof tr);
    memset(&te, 0x5a, sizeof te);
    assert_int_equal(dataset_load(&tr, &te, kind, dir, 0, &e), -1);
    if (!strstr(e.msg, want) || (want2 && !strstr(e.msg, want2)))
        fail_msg("message \"%s\" lacks \"%s\"%s%s", e.msg, want, want2 ? " or " : "",
                 want2 ? want2 : "");
    assert_null(tr.pixels);
    assert_null(te.pixels);
    assert_null(tr.labels);
    assert_int_equal(tr.n, 0);
}

static void test_bad_cifar(void **state)
{
    (void)state;
    /* Missing file (a train batch; then the test file, after train loaded). */
    char *dir = make_cifar10("badc");
    remove(path_in(dir, "data_batch_3.bin"));
    expect_fail(DS_CIFAR10, dir, "cannot open", "data_batch_3.bin");
    write_cifar(dir, "data_batch_3.bin", 5, 4, 3073);
    remove(path_in(dir, "test_batch.bin"));
    expect_fail(DS_CIFAR10, dir, "cannot open", "test_batch.bin");
    write_cifar(dir, "test_batch.bin", 1000, 5, 3073);

    /* Truncated: size not a multiple of the record. */
    size_t len;
    char *buf = tu_read_file(path_in(dir, "data_batch_2.bin"), &len);
    assert_non_null(buf);
    tu_write_file(path_in(dir, "data_batch_2.bin"), buf, len - 100);
    expect_fail(DS_CIFAR10, dir, "data_batch_2.bin", "3073-byte");
    tu_write_file(path_in(dir, "data_batch_2.bin"), buf, 0);
    expect_fail(DS_CIFAR10, dir, "data_batch_2.bin", "3073-byte");
    tu_write_file(path_in(dir, "data_batch_2.bin"), buf, len);
    free(buf);

    /* A CIFAR-100 file where a CIFAR-10 file should be. */
    write_cifar(dir, "data_batch_4.bin", 0, 10, 3074);
    expect_fail(DS_CIFAR10, dir, "data_batch_4.bin", "not a CIFAR-10 file");
    write_cifar(dir, "data_batch_4.bin", 0, 1, 3073);

    /* Label out of range: record 1 of test_batch.bin says 10. */
    buf = tu_read_file(path_in(dir, "test_batch.bin"), &len);
    buf[3073] = 10;
    tu_write_file(path_in(dir, "test_batch.bin"), buf, len);
    expect_fail(DS_CIFAR10, dir, "test_batch.bin", "record 1 ");
    free(buf);
    tu_rmtree(dir);
    free(dir);

    /* CIFAR-100: the fine label must be < 100; a CIFAR-10 file is rejected. */
    dir = tu_tempdir("badc100");
    write_cifar(dir, "train.bin", 0, 4, 3074);
    write_cifar(dir, "test.bin", 0, 3, 3073);
    expect_fail(DS_CIFAR100, dir, "test.bin", "3074-byte");
    write_cifar(dir, "test.bin", 0, 3, 3074);
    buf = tu_read_file(path_in(dir, "train.bin"), &len);
    buf[2 * 3074 + 1] = 100;
    tu_write_file(path_in(dir, "train.bin"), buf, len);
    expect_fail(DS_CIFAR100, dir, "train.bin", "record 2 ");
    free(buf);
    tu_rmtree(dir);
    free(dir);

    /* A folder that does not exist. */
    expect_fail(DS_CIFAR10, "/nonexistent/shake-data", "cannot open",
                "/nonexistent/shake-data/data_batch_1.bin");
}

static void test_bad_idx(void **state)
{
    (void)state;
    const char *ti = "train-images-idx3-ubyte", *tl = "train-labels-idx1-ubyte";
    for (int gz = 0; gz < 2; gz++) {
        char *dir = tu_tempdir("badidx");
        write_idx_set(dir, 12, 5, gz);
        char tiname[64];
        snprintf(tiname, sizeof tiname, "%s%s", ti, gz ? ".gz" : "");

        IdxSpec s = {.n = 12, .nl = 12, .rows = 28, .cols = 28, .gz = gz};
        s.img_magic = 0x801;
        write_idx(dir, ti, tl, s);
        expect_fail(DS_MNIST, dir, tiname, "magic");

        s.img_magic = 0;
        s.nl = 11;
        write_idx(dir, ti, tl, s);
        expect_fail(DS_MNIST, dir, tiname, "11 labels");

        s.nl = 12;
        s.trim = 30;
        write_idx(dir, ti, tl, s);
        expect_fail(DS_MNIST, dir, tiname, "truncated");

        s.trim = 0;
        s.label_bump = 1;       /* idx_label reaches 9: one label becomes 10 */
        write_idx(dir, ti, tl, s);
        expect_fail(DS_MNIST, dir, "train-labels-idx1-ubyte", "out of range");

        s.label_bump = 0;
        write_idx(dir, ti, tl, s);
        remove(path_in(dir, tiname));
        expect_fail(DS_MNIST, dir, "cannot open", ti);
        tu_rmtree(dir);
        free(dir);
    }

    /* A gzip stream cut short is truncated, not silently short. */
    char *dir = tu_tempdir("badgz");
    write_idx_set(dir, 12, 5, 1);
    char *p = path_in(dir, "t10k-images-idx3-ubyte.gz");
    size_t len;
    char *buf = tu_read_file(p, &len);
    tu_write_file(p, buf, len / 2);
    free(buf);
    expect_fail(DS_MNIST, dir, "t10k-images-idx3-ubyte.gz", NULL);
    tu_rmtree(dir);
    free(dir);

    /* Trailing bytes beyond what the header says are an error too. */
    dir = tu_tempdir("longidx");
    write_idx_set(dir, 12, 5, 0);
    p = path_in(dir, "t10k-labels-idx1-ubyte");
    buf = tu_read_file(p, &len);
    buf = realloc(buf, len + 3);
    memset(buf + len, 0, 3);
    tu_write_file(p, buf, len + 3);
    free(buf);
    expect_fail(DS_FASHION_MNIST, dir, "t10k-labels-idx1-ubyte", "longer");
    tu_rmtree(dir);
    free(dir);
}

/* ---- synthetic ---- */

static uint64_t fnv(const uint8_t *p, size_t n)
{
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++)
        h = (h ^ p[i]) * 1099511628211ull;
    return h;
}

static void test_synthetic(void **state)
{
    (void)state;
    Dataset tr, te;
    Err e = {{0}};
    uint64_t h[3];
    for (int k = 0; k < 3; k++) {
        if (dataset_load(&tr, &te, DS_SYNTHETIC, NULL, k == 2 ? 8 : 7, &e))
            fail_msg("%s", e.msg);
        assert_int_equal(tr.n, 50000);
        assert_int_equal(te.n, 10000);
        assert_int_equal(tr.c * tr.h * tr.w, 3 * 32 * 32);
        assert_int_equal(tr.classes, 10);
        h[k] = fnv(tr.pixels, (size_t)tr.n * 3072) ^ fnv(tr.labels, (size_t)tr.n);
        if (k == 0) {
            int count[10] = {0};
            double sum = 0;
            for (int i = 0; i < tr.n; i++) {
                assert_true(tr.labels[i] < 10);
                count[tr.labels[i]]++;
            }
            /* Uniform labels: 5000 per class, binomial sd ~67; 400 is 6 sd. */
            for (int c = 0; c < 10; c++)
                assert_true(abs(count[c] - 5000) < 400);
            for (size_t i = 0; i < (size_t)tr.n * 3072; i++)
                sum += tr.pixels[i];
            /* Uniform bytes: mean 127.5, sd of the mean over 1.5e8 draws < 0.01. */
            assert_true(fabs(sum / ((double)tr.n * 3072) - 127.5) < 0.1);
            /* The spec'd derivation, first word of image 3 and its label. */
            Philox4 r = philox4x32(7, RNG_TEST, 0, 3, 0);
            assert_int_equal(tr.pixels[3 * 3072 + 5], (uint8_t)(r.v[1] >> 8));
            uint32_t u = rng_u32(7, RNG_TEST, 1, 3, 0);
            assert_int_equal(tr.labels[3], (int)(((uint64_t)u * 10) >> 32));
            /* The test split is not the training split again. */
            assert_true(memcmp(te.pixels, tr.pixels, 3072) != 0);
        }
        dataset_free(&tr);
        dataset_free(&te);
    }
    assert_true(h[0] == h[1]);
    assert_true(h[0] != h[2]);
}

/* ---- subset ---- */

/* A 2x2 grey set whose pixels spell each image's original index, so that a
 * subset shows which images it kept and in which order. */
static Dataset make_indexed(int n, int classes, uint64_t label_seed, int starve_class,
                            int starve_to)
{
    Dataset d;
    Err e = {{0}};
    memset(&d, 0, sizeof d);
    d.kind = DS_SYNTHETIC;
    d.n = n;
    d.c = 1;
    d.h = d.w = 2;
    d.classes = classes;
    d.mean[0] = 0;
    d.std[0] = 1;
    d.pixels = mem_alloc((size_t)n * 4, "test", &e);
    d.labels = mem_alloc((size_t)n, "test", &e);
    assert_non_null(d.pixels);
    int starved = 0;
    for (int i = 0; i < n; i++) {
        int lab = (int)(rng_u32(label_seed, RNG_TEST, 99, (uint32_t)i, 0) % (uint32_t)classes);
        if (lab == starve_class && starved++ >= starve_to)
            lab = (lab + 1) % classes;
        d.labels[i] = (uint8_t)lab;
        memcpy(d.pixels + 4 * (size_t)i, &i, 4);
    }
    return d;
}

static int orig_index(const Dataset *d, int j)
{
    int i;
    memcpy(&i, d->pixels + 4 * (size_t)j, 4);
    return i;
}

static uint64_t subset_key(uint64_t seed, int cls, int i)
{
    Philox4 r = philox4x32(seed, RNG_SUBSET, (uint32_t)cls, (uint32_t)i, 0);
    return (uint64_t)r.v[0] << 32 | r.v[1];
}

/* Checks counts, order, labels and that each class kept exactly its
 * smallest-key images; returns a fingerprint of the selection. */
static uint64_t check_subset(const Dataset *orig, const Dataset *s, int n, uint64_t seed)
{
    int classes = orig->classes;
    assert_int_equal(s->n, n);
    int *count = calloc((size_t)classes, sizeof *count);
    uint8_t *kept = calloc((size_t)orig->n, 1);
    uint64_t fp = 0;
    for (int j = 0; j < s->n; j++) {
        int i = orig_index(s, j);
        assert_true(i >= 0 && i < orig->n);
        if (j > 0)
            assert_true(i > orig_index(s, j - 1));      /* original order kept */
        assert_int_equal(s->labels[j], orig->labels[i]);
        count[s->labels[j]]++;
        kept[i] = 1;
        fp = fp * 1000003u + (uint64_t)i;
    }
    for (int c = 0; c < classes; c++)
        assert_int_equal(count[c], n / classes + (c < n % classes));
    /* Every kept image's key is below every dropped image's key, per class. */
    for (int c = 0; c < classes; c++) {
        uint64_t max_kept = 0, min_dropped = UINT64_MAX;
        for (int i = 0; i < orig->n; i++) {
            if (orig->labels[i] != c)
                continue;
            uint64_t k = subset_key(seed, c, i);
            if (kept[i] && k > max_kept)
                max_kept = k;
            if (!kept[i] && k < min_dropped)
                min_dropped = k;
        }
        assert_true(max_kept < min_dropped);
    }
    free(count);
    free(kept);
    return fp;
}

static Dataset copy_dataset(const Dataset *d)
{
    Dataset c = *d;
    Err e = {{0}};
    size_t img = (size_t)(d->c * d->h * d->w);
    c.pixels = mem_alloc((size_t)d->n * img, "test", &e);
    c.labels = mem_alloc((size_t)d->n, "test", &e);
    memcpy(c.pixels, d->pixels, (size_t)d->n * img);
    memcpy(c.labels, d->labels, (size_t)d->n);
    return c;
}

static void test_subset(void **state)
{
    (void)state;
    Err e = {{0}};
    Dataset orig = make_indexed(6000, 10, 1, -1, 0);
    uint64_t fp[4];
    const int sizes[4] = {4000, 4000, 4000, 4003};
    const uint64_t seeds[4] = {5, 5, 6, 5};
    for (int k = 0; k < 4; k++) {
        Dataset s = copy_dataset(&orig);
        if (dataset_subset(&s, sizes[k], seeds[k], &e))
            fail_msg("%s", e.msg);
        fp[k] = check_subset(&orig, &s, sizes[k], seeds[k]);
        dataset_free(&s);
    }
    assert_true(fp[0] == fp[1]);       /* same seed, same images */
    assert_true(fp[0] != fp[2]);       /* another seed, others */

    /* All of a balanced set: the identity. */
    Dataset bal = copy_dataset(&orig), s = copy_dataset(&orig);
    for (int i = 0; i < 6000; i++)
        bal.labels[i] = s.labels[i] = (uint8_t)(i % 10);
    if (dataset_subset(&s, 6000, 5, &e))
        fail_msg("%s", e.msg);
    assert_memory_equal(s.pixels, bal.pixels, 6000 * 4);
    assert_memory_equal(s.labels, bal.labels, 6000);
    dataset_free(&s);
    dataset_free(&bal);
    /* ...but not of an unbalanced one: some class falls short of 600. */
    s = copy_dataset(&orig);
    assert_int_equal(dataset_subset(&s, 6000, 5, &e), -1);
    dataset_free(&s);

    /* Bad sizes leave the set as it was. */
    s = copy_dataset(&orig);
    assert_int_equal(dataset_subset(&s, 0, 5, &e), -1);
    assert_int_equal(dataset_subset(&s, 6001, 5, &e), -1);
    assert_non_null(strstr(e.msg, "6001"));
    assert_int_equal(s.n, 6000);
    dataset_free(&s);
    dataset_free(&orig);

    /* Class 7 has only 50 images; 100 per class cannot be met. */
    orig = make_indexed(6000, 10, 1, 7, 50);
    s = copy_dataset(&orig);
    assert_int_equal(dataset_subset(&s, 1000, 5, &e), -1);
    if (!strstr(e.msg, "class 7") || !strstr(e.msg, "50") || !strstr(e.msg, "100"))
        fail_msg("message \"%s\" should name class 7, 100 needed and 50 present", e.msg);
    assert_int_equal(s.n, 6000);
    assert_memory_equal(s.pixels, orig.pixels, 6000 * 4);
    /* 500 images (50 per class) still fit. */
    if (dataset_subset(&s, 500, 5, &e))
        fail_msg("%s", e.msg);
    check_subset(&orig, &s, 500, 5);
    dataset_free(&s);
    dataset_free(&orig);
}

/* ---- epoch order ---- */

static uint64_t shuffle_key(uint64_t seed, int epoch, int i)
{
    Philox4 r = philox4x32(seed, RNG_SHUFFLE, (uint32_t)epoch, (uint32_t)i, 0);
    return (uint64_t)r.v[0] << 32 | r.v[1];
}

static void test_epoch_order(void **state)
{
    (void)state;
    enum { N = 5000 };
    int *a = malloc(N * sizeof *a), *b = malloc(N * sizeof *b), *seen = calloc(N, sizeof *seen);
    data_epoch_order(a, N, 42, 3, 1);
    for (int j = 0; j < N; j++) {
        assert_true(a[j] >= 0 && a[j] < N);
        assert_int_equal(seen[a[j]]++, 0);
        /* Sorted by the specified key: what another backend must reproduce. */
        if (j > 0)
            assert_true(shuffle_key(42, 3, a[j - 1]) < shuffle_key(42, 3, a[j]));
    }
    data_epoch_order(b, N, 42, 3, 1);
    assert_memory_equal(a, b, N * sizeof *a);
    data_epoch_order(b, N, 42, 4, 1);
    assert_memory_not_equal(a, b, N * sizeof *a);
    data_epoch_order(b, N, 43, 3, 1);
    assert_memory_not_equal(a, b, N * sizeof *a);
    /* A shuffle moves almost everything: expected fixed points ~1. */
    int fixed = 0;
    for (int j = 0; j < N; j++)
        fixed += a[j] == j;
    assert_true(fixed < 10);
    data_epoch_order(b, N, 42, 3, 0);
    for (int j = 0; j < N; j++)
        assert_int_equal(b[j], j);
    free(a);
    free(b);
    free(seen);
}

/* ---- batches ---- */

static Dataset make_random_cifar(int n, uint64_t seed)
{
    Dataset d;
    Err e = {{0}};
    memset(&d, 0, sizeof d);
    d.kind = DS_CIFAR10;
    d.n = n;
    d.c = 3;
    d.h = d.w = 32;
    d.classes = 10;
    d.flip = 1;
    const float mean[3] = {125.3f, 123.0f, 113.9f}, sd[3] = {63.0f, 62.1f, 66.7f};
    memcpy(d.mean, mean, sizeof mean);
    memcpy(d.std, sd, sizeof sd);
    d.pixels = mem_alloc((size_t)n * 3072, "test", &e);
    d.labels = mem_alloc((size_t)n, "test", &e);
    for (size_t k = 0; k < (size_t)n * 3072; k++)
        d.pixels[k] = (uint8_t)rng_u32(seed, RNG_TEST, 1, (uint32_t)k, (uint32_t)(k >> 32));
    for (int i = 0; i < n; i++)
        d.labels[i] = (uint8_t)(i % 10);
    return d;
}

static void test_batch_normalize(void **state)
{
    (void)state;
    Dataset d = make_random_cifar(50, 3);
    int idx[7] = {49, 0, 13, 13, 2, 31, 7};
    float *x = malloc(7 * 3072 * sizeof *x);
    int labels[7];
    data_batch(x, labels, &d, idx, 7, 11, 5, 0);
    for (int j = 0; j < 7; j++) {
        assert_int_equal(labels[j], idx[j] % 10);
        for (int c = 0; c < 3; c++)
            for (int k = 0; k < 1024; k++) {
                float want = ((float)d.pixels[(size_t)idx[j] * 3072 + c * 1024 + k] - d.mean[c]) /
                             d.std[c];
                /* Exact: the same float32 expression, no tolerance needed. */
                if (x[j * 3072 + c * 1024 + k] != want)
                    fail_msg("image %d ch %d px %d: %g != %g", j, c, k,
                             x[j * 3072 + c * 1024 + k], want);
            }
    }
    free(x);
    dataset_free(&d);
}

/* The augmentation written the long way: normalize, flip, pad into a 40x40
 * canvas of zeros, cut the 32x32 window at (dy, dx). */
static void augment_reference(float *out, const Dataset *d, int i, uint64_t seed, int epoch)
{
    Philox4 r = philox4x32(seed, RNG_AUGMENT, (uint32_t)epoch, (uint32_t)i, 0);
    int flip = d->flip && (r.v[0] >> 31);
    int dx = (int)(((uint64_t)r.v[1] * 9) >> 32), dy = (int)(((uint64_t)r.v[2] * 9) >> 32);
    static float canvas[3][40][40];
    memset(canvas, 0, sizeof canvas);
    for (int c = 0; c < 3; c++)
        for (int y = 0; y < 32; y++)
            for (int x = 0; x < 32; x++) {
                int sx = flip ? 31 - x : x;
                uint8_t p = d->pixels[(size_t)i * 3072 + c * 1024 + y * 32 + sx];
                canvas[c][y + 4][x + 4] = ((float)p - d->mean[c]) / d->std[c];
            }
    for (int c = 0; c < 3; c++)
        for (int y = 0; y < 32; y++)
            for (int x = 0; x < 32; x++)
                out[c * 1024 + y * 32 + x] = canvas[c][y + dy][x + dx];
}

static void test_batch_augment_reference(void **state)
{
    (void)state;
    Dataset d = make_random_cifar(64, 4);
    enum { B = 40 };
    int idx[B];
    for (int j = 0; j < B; j++)
        idx[j] = (j * 13 + 5) % 64;
    float *x = malloc(B * 3072 * sizeof *x), want[3072];
    int labels[B];
    data_batch(x, labels, &d, idx, B, 77, 2, 1);
    for (int j = 0; j < B; j++) {
        augment_reference(want, &d, idx[j], 77, 2);
        assert_int_equal(labels[j], idx[j] % 10);
        assert_memory_equal(x + j * 3072, want, sizeof want);
    }
    /* Another epoch draws other crops for the same images. */
    float *y = malloc(B * 3072 * sizeof *y);
    data_batch(y, labels, &d, idx, B, 77, 3, 1);
    assert_memory_not_equal(x, y, B * 3072 * sizeof *x);
    free(x);
    free(y);
    dataset_free(&d);
}

/* Images whose channels 0 and 1 hold x + 1 and y + 1 and channel 2 holds
 * 200: from any output pixel one can read where it came from. mean 0, std 1
 * keeps values integral; padding reads 0, which no source pixel has. */
static Dataset make_coordinate_set(int n, int flip)
{
    Dataset d;
    Err e = {{0}};
    memset(&d, 0, sizeof d);
    d.n = n;
    d.c = 3;
    d.h = d.w = 32;
    d.classes = 10;
    d.flip = flip;
    for (int c = 0; c < 3; c++) {
        d.mean[c] = 0;
        d.std[c] = 1;
    }
    d.pixels = mem_alloc((size_t)n * 3072, "test", &e);
    d.labels = mem_alloc((size_t)n, "test", &e);
    for (int i = 0; i < n; i++)
        for (int y = 0; y < 32; y++)
            for (int x = 0; x < 32; x++) {
                uint8_t *p = d.pixels + (size_t)i * 3072 + y * 32 + x;
                p[0] = (uint8_t)(x + 1);
                p[1024] = (uint8_t)(y + 1);
                p[2048] = 200;
            }
    return d;
}

static void test_batch_augment_coverage(void **state)
{
    (void)state;
    enum { N = 2000 };
    for (int allow_flip = 1; allow_flip >= 0; allow_flip--) {
        Dataset d = make_coordinate_set(N, allow_flip);
        int *idx = malloc(N * sizeof *idx), *labels = malloc(N * sizeof *labels);
        for (int j = 0; j < N; j++)
            idx[j] = j;
        float *x = malloc((size_t)N * 3072 * sizeof *x);
        data_batch(x, labels, &d, idx, N, 2024, 1, 1);
        int flips = 0, dxs[9] = {0}, dys[9] = {0};
        for (int j = 0; j < N; j++) {
            const float *o = x + (size_t)j * 3072;
            /* The centre is never padding: source column 12..20. */
            int sx16 = (int)o[16 * 32 + 16] - 1, sx17 = (int)o[16 * 32 + 17] - 1;
            int sy16 = (int)o[1024 + 16 * 32 + 16] - 1;
            int flip = sx17 < sx16;
            int dx = (flip ? 31 - sx16 : sx16) - 12, dy = sy16 - 12;
            assert_true(dx >= 0 && dx <= 8 && dy >= 0 && dy <= 8);
            flips += flip;
            dxs[dx]++;
            dys[dy]++;
            /* What the output says matches the specified Philox derivation. */
            Philox4 r = philox4x32(2024, RNG_AUGMENT, 1, (uint32_t)j, 0);
            assert_int_equal(flip, allow_flip && (r.v[0] >> 31));
            assert_int_equal(dx, (int)(((uint64_t)r.v[1] * 9) >> 32));
            assert_int_equal(dy, (int)(((uint64_t)r.v[2] * 9) >> 32));
            /* Every pixel is either padding (0 in all channels) or the
             * shifted, possibly mirrored source. */
            for (int yy = 0; yy < 32; yy++)
                for (int xx = 0; xx < 32; xx++) {
                    int sy = yy + dy - 4, fx = xx + dx - 4;
                    int inside = sy >= 0 && sy < 32 && fx >= 0 && fx < 32;
                    int sx = flip ? 31 - fx : fx;
                    float c0 = o[yy * 32 + xx], c1 = o[1024 + yy * 32 + xx],
                          c2 = o[2048 + yy * 32 + xx];
                    if (inside) {
                        if (c0 != sx + 1 || c1 != sy + 1 || c2 != 200)
                            fail_msg("image %d (%d,%d): got %g %g %g", j, yy, xx, c0, c1, c2);
                    } else if (c0 != 0 || c1 != 0 || c2 != 0) {
                        fail_msg("image %d (%d,%d) should be padding", j, yy, xx);
                    }
                }
        }
        if (allow_flip) {
            /* Binomial(2000, 1/2): sd ~22; 150 is nearly 7 sd. */
            assert_true(abs(flips - N / 2) < 150);
        } else {
            assert_int_equal(flips, 0);
        }
        /* Each offset expects ~222 of 2000; fewer than 100 would be >8 sd. */
        for (int k = 0; k < 9; k++) {
            assert_true(dxs[k] > 100);
            assert_true(dys[k] > 100);
        }
        free(idx);
        free(labels);
        free(x);
        dataset_free(&d);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_kind_names),
        cmocka_unit_test(test_cifar10_load),
        cmocka_unit_test(test_cifar100_load),
        cmocka_unit_test(test_idx_plain_and_gz),
        cmocka_unit_test(test_fashion_mnist_real),
        cmocka_unit_test(test_bad_cifar),
        cmocka_unit_test(test_bad_idx),
        cmocka_unit_test(test_synthetic),
        cmocka_unit_test(test_subset),
        cmocka_unit_test(test_epoch_order),
        cmocka_unit_test(test_batch_normalize),
        cmocka_unit_test(test_batch_augment_reference),
        cmocka_unit_test(test_batch_augment_coverage),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
