/*
 * Data sets as stored bytes, and the per-batch conversion to floats.
 *
 * Invariants: a loaded Dataset owns pixels (n, c, h, w) and labels (n), both
 * from mem_alloc, every label < classes, c <= 3; a Dataset that failed to load is all
 * zeros, so dataset_free is always safe. Nothing here keeps state between
 * calls: every random choice is a pure function of Philox counters, written
 * out below so that another backend can reproduce it bit for bit.
 *
 * Key derivations (seed is the run's 64-bit seed, all counters uint32):
 *   epoch order   r = philox4x32(seed, RNG_SHUFFLE, epoch, i, 0),
 *                 key(i) = r.v[0] << 32 | r.v[1]; images sorted by (key, i).
 *   augmentation  r = philox4x32(seed, RNG_AUGMENT, epoch, i, 0), i the
 *                 image's index in the data set (not its batch slot):
 *                 flip = d->flip && r.v[0] >> 31,
 *                 dx = (r.v[1] * 9) >> 32, dy = (r.v[2] * 9) >> 32 (64-bit
 *                 products), each uniform in 0..8.
 *   subset        r = philox4x32(seed, RNG_SUBSET, class, i, 0),
 *                 key(i) = r.v[0] << 32 | r.v[1]; each class keeps its
 *                 images with the smallest (key, i).
 *   synthetic     pixels of image i, bytes 16k..16k+15 in (c, h, w) order:
 *                 the 16 little-endian bytes of philox4x32(seed, RNG_TEST,
 *                 split, i, k) with split 0 = train, 2 = test; label of
 *                 image i: (rng_u32(seed, RNG_TEST, split + 1, i, 0) * 10) >> 32.
 */
#define _GNU_SOURCE             /* qsort_r */
#include "data.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <zlib.h>

#include "philox.h"

#define CIFAR_PIXELS 3072       /* 3 x 32 x 32, planes R, G, B */
#define CIFAR_TRAIN_FILES 5
#define SYNTH_TRAIN 50000
#define SYNTH_TEST 10000
#define IDX_IMAGES_MAGIC 0x00000803u
#define IDX_LABELS_MAGIC 0x00000801u
/* Crop padding on each side, as in the paper's (and fb.resnet.torch's)
 * CIFAR augmentation; 2 * PAD + 1 crop offsets per axis. */
#define PAD 4

static const char *const kind_names[] = {"cifar10", "cifar100", "fashion-mnist", "mnist",
                                         "synthetic"};
#define NKINDS ((int)(sizeof kind_names / sizeof kind_names[0]))

int dataset_kind(const char *name)
{
    for (int k = 0; name && k < NKINDS; k++)
        if (strcmp(name, kind_names[k]) == 0)
            return k;
    return -1;
}

const char *dataset_name(DatasetKind kind)
{
    return (int)kind >= 0 && (int)kind < NKINDS ? kind_names[kind] : "unknown";
}

const char *dataset_default_dir(DatasetKind kind)
{
    switch (kind) {
    case DS_CIFAR10: return "data/cifar-10-batches-bin";
    case DS_CIFAR100: return "data/cifar-100-binary";
    case DS_FASHION_MNIST: return "/usr/share/datasets/fashion-mnist";
    case DS_MNIST: return "data/mnist";
    case DS_SYNTHETIC: return "";
    }
    return "";
}

void dataset_free(Dataset *d)
{
    if (!d)
        return;
    mem_free(d->pixels);
    mem_free(d->labels);
    memset(d, 0, sizeof *d);
}

/* Shape, class count and the normalization the literature uses for each set;
 * unused channels get mean 0, std 1 so that nothing divides by zero. */
static void dataset_init(Dataset *d, DatasetKind kind, int c, int h, int w, int classes)
{
    static const float stats[][2][3] = {
        [DS_CIFAR10] = {{125.3f, 123.0f, 113.9f}, {63.0f, 62.1f, 66.7f}},
        [DS_CIFAR100] = {{129.3f, 124.1f, 112.4f}, {68.2f, 65.4f, 70.4f}},
        [DS_FASHION_MNIST] = {{72.94f, 0, 0}, {90.02f, 1, 1}},
        [DS_MNIST] = {{33.32f, 0, 0}, {78.57f, 1, 1}},
        [DS_SYNTHETIC] = {{127.5f, 127.5f, 127.5f}, {73.6f, 73.6f, 73.6f}},
    };
    memset(d, 0, sizeof *d);
    d->kind = kind;
    d->c = c;
    d->h = h;
    d->w = w;
    d->classes = classes;
    for (int i = 0; i < 3; i++) {
        d->mean[i] = stats[kind][0][i];
        d->std[i] = stats[kind][1][i];
    }
    /* Handwritten digits change meaning when mirrored; clothes do not. */
    d->flip = kind != DS_MNIST;
}

static int dataset_alloc(Dataset *d, int n, const char *what, Err *e)
{
    d->n = n;
    d->pixels = mem_alloc((size_t)n * (size_t)(d->c * d->h * d->w), what, e);
    d->labels = mem_alloc((size_t)n, what, e);
    if (!d->pixels || !d->labels) {
        dataset_free(d);
        return -1;
    }
    return 0;
}

/* ---- CIFAR binary ---- */

typedef struct {
    FILE *f;
    char path[4096];
    long n;                     /* records */
} CifarFile;

static int cifar_open(CifarFile *cf, const char *dir, const char *name, size_t rec, Err *e)
{
    snprintf(cf->path, sizeof cf->path, "%s/%s", dir, name);
    cf->f = fopen(cf->path, "rb");
    if (!cf->f)
        return err_set(e, "cannot open %s: %s", cf->path, strerror(errno));
    struct stat st;
    if (fstat(fileno(cf->f), &st) != 0)
        return err_set(e, "cannot stat %s: %s", cf->path, strerror(errno));
    if (!S_ISREG(st.st_mode))
        return err_set(e, "%s is not a regular file", cf->path);
    /* A CIFAR-100 file read as CIFAR-10 (or the reverse) fails here too:
     * 3073 and 3074 share no multiple below 3073 * 3074 bytes. */
    if (st.st_size <= 0 || (size_t)st.st_size % rec != 0)
        return err_set(e, "%s (%lld bytes) is not a whole number of %zu-byte CIFAR-%s records "
                       "(truncated or not a CIFAR-%s file?)", cf->path, (long long)st.st_size,
                       rec, rec == 3073 ? "10" : "100", rec == 3073 ? "10" : "100");
    cf->n = (long)((size_t)st.st_size / rec);
    return 0;
}

/* Reads one file's records into pixels/labels (its share of the set).
 * label_at: offset of the label byte used (1 for CIFAR-100's fine label). */
static int cifar_read(CifarFile *cf, uint8_t *pixels, uint8_t *labels, size_t rec,
                      size_t label_at, int classes, Err *e)
{
    enum { CHUNK = 1024 };      /* records per fread: 3 MB, bounded memory */
    uint8_t *buf = mem_alloc(CHUNK * rec, "CIFAR read buffer", e);
    if (!buf)
        return -1;
    int rc = -1;
    for (long r0 = 0; r0 < cf->n; r0 += CHUNK) {
        size_t m = (size_t)(cf->n - r0 < CHUNK ? cf->n - r0 : CHUNK);
        if (fread(buf, rec, m, cf->f) != m) {
            err_set(e, "error reading %s: %s", cf->path,
                    ferror(cf->f) ? strerror(errno) : "file shrank while reading");
            goto out;
        }
        for (size_t j = 0; j < m; j++) {
            const uint8_t *r = buf + j * rec;
            if (r[label_at] >= classes) {
                err_set(e, "%s: record %ld has label %d, expected 0..%d", cf->path,
                        r0 + (long)j, r[label_at], classes - 1);
                goto out;
            }
            labels[r0 + (long)j] = r[label_at];
            memcpy(pixels + (size_t)(r0 + (long)j) * CIFAR_PIXELS, r + (rec - CIFAR_PIXELS),
                   CIFAR_PIXELS);
        }
    }
    rc = 0;
out:
    mem_free(buf);
    return rc;
}

/* One split from nfiles files, concatenated in the order given. All files
 * are opened and sized before anything is read, so a missing or truncated
 * file is reported without reading 150 MB first. */
static int cifar_load(Dataset *d, DatasetKind kind, const char *dir,
                      const char *const *names, int nfiles, Err *e)
{
    int cifar100 = kind == DS_CIFAR100;
    size_t rec = cifar100 ? 3074 : 3073;
    size_t label_at = cifar100 ? 1 : 0;
    CifarFile files[CIFAR_TRAIN_FILES];
    memset(files, 0, sizeof files);
    dataset_init(d, kind, 3, 32, 32, cifar100 ? 100 : 10);
    int rc = -1;
    long total = 0;
    for (int i = 0; i < nfiles; i++) {
        if (cifar_open(&files[i], dir, names[i], rec, e))
            goto out;
        total += files[i].n;
    }
    if (total > INT_MAX) {
        err_set(e, "%s: %ld records is more than this loader supports", dir, total);
        goto out;
    }
    if (dataset_alloc(d, (int)total, "CIFAR images", e))
        goto out;
    long at = 0;
    for (int i = 0; i < nfiles; i++) {
        if (cifar_read(&files[i], d->pixels + (size_t)at * CIFAR_PIXELS, d->labels + at, rec,
                       label_at, d->classes, e))
            goto out;
        at += files[i].n;
    }
    rc = 0;
out:
    for (int i = 0; i < nfiles; i++)
        if (files[i].f)
            fclose(files[i].f);
    if (rc)
        dataset_free(d);
    return rc;
}

/* ---- IDX (MNIST, Fashion-MNIST) ---- */

/* Opens dir/name, else dir/name.gz. gzopen reads plain files unchanged, so
 * one reader serves both. */
static gzFile idx_open(char *path, size_t cap, const char *dir, const char *name, Err *e)
{
    snprintf(path, cap, "%s/%s", dir, name);
    gzFile g = gzopen(path, "rb");
    if (!g && errno == ENOENT) {
        snprintf(path, cap, "%s/%s.gz", dir, name);
        g = gzopen(path, "rb");
        if (!g && errno == ENOENT)
            snprintf(path, cap, "%s/%s", dir, name);
    }
    if (!g) {
        err_set(e, "cannot open %s: %s", path, strerror(errno ? errno : ENOMEM));
        return NULL;
    }
    gzbuffer(g, 1 << 17);
    return g;
}

/* Reads up to len bytes; *got is how many came. -1 only on a read error
 * (a short file is the caller's to judge, with its own message). */
static int idx_read(gzFile g, const char *path, void *buf, size_t len, size_t *got, Err *e)
{
    *got = 0;
    while (*got < len) {
        size_t want = len - *got;
        int r = gzread(g, (char *)buf + *got, want > (1u << 30) ? (1u << 30) : (unsigned)want);
        if (r < 0) {
            int zerr;
            const char *msg = gzerror(g, &zerr);
            return err_set(e, "error reading %s: %s", path,
                           zerr == Z_ERRNO ? strerror(errno) : msg);
        }
        if (r == 0)
            break;
        *got += (size_t)r;
    }
    return 0;
}

static uint32_t be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* Reads exactly len bytes that must end the file: short is "truncated", more
 * is "longer than its header says". */
static int idx_read_body(gzFile g, const char *path, void *buf, size_t len, Err *e)
{
    size_t got;
    uint8_t extra;
    if (idx_read(g, path, buf, len, &got, e))
        return -1;
    if (got < len) {
        int zerr;
        const char *msg = gzerror(g, &zerr);
        return err_set(e, "%s is truncated: its header promises %zu bytes of data, "
                       "found %zu%s%s", path, len, got, zerr != Z_OK ? ": " : "",
                       zerr != Z_OK ? msg : "");
    }
    if (idx_read(g, path, &extra, 1, &got, e))
        return -1;
    if (got)
        return err_set(e, "%s is longer than its IDX header says (%zu bytes of data)", path, len);
    return 0;
}

static int idx_load(Dataset *d, DatasetKind kind, const char *dir, const char *images,
                    const char *labels, Err *e)
{
    char ipath[4096], lpath[4096];
    uint8_t ih[16], lh[8];
    size_t got;
    int rc = -1;
    gzFile gl = NULL, gi = idx_open(ipath, sizeof ipath, dir, images, e);
    memset(d, 0, sizeof *d);
    if (!gi)
        return -1;
    gl = idx_open(lpath, sizeof lpath, dir, labels, e);
    if (!gl)
        goto out;

    if (idx_read(gi, ipath, ih, sizeof ih, &got, e))
        goto out;
    if (got < sizeof ih) {
        err_set(e, "%s is truncated: %zu bytes, shorter than an IDX image header", ipath, got);
        goto out;
    }
    if (be32(ih) != IDX_IMAGES_MAGIC) {
        err_set(e, "%s: IDX magic is 0x%08x, expected 0x%08x (unsigned bytes, 3 dimensions)",
                ipath, be32(ih), IDX_IMAGES_MAGIC);
        goto out;
    }
    uint32_t n = be32(ih + 4), rows = be32(ih + 8), cols = be32(ih + 12);
    /* Bounds keep every size product inside int and size_t. */
    if (n == 0 || n > (uint32_t)INT_MAX || rows == 0 || cols == 0 || rows > 4096 ||
        cols > 4096) {
        err_set(e, "%s: implausible IDX image header (%u images of %u x %u)", ipath, n, rows,
                cols);
        goto out;
    }

    if (idx_read(gl, lpath, lh, sizeof lh, &got, e))
        goto out;
    if (got < sizeof lh) {
        err_set(e, "%s is truncated: %zu bytes, shorter than an IDX label header", lpath, got);
        goto out;
    }
    if (be32(lh) != IDX_LABELS_MAGIC) {
        err_set(e, "%s: IDX magic is 0x%08x, expected 0x%08x (unsigned bytes, 1 dimension)",
                lpath, be32(lh), IDX_LABELS_MAGIC);
        goto out;
    }
    if (be32(lh + 4) != n) {
        err_set(e, "%s has %u labels but %s has %u images", lpath, be32(lh + 4), ipath, n);
        goto out;
    }

    dataset_init(d, kind, 1, (int)rows, (int)cols, 10);
    if (dataset_alloc(d, (int)n, "IDX images", e))
        goto out;
    if (idx_read_body(gi, ipath, d->pixels, (size_t)n * rows * cols, e) ||
        idx_read_body(gl, lpath, d->labels, n, e))
        goto out;
    for (uint32_t i = 0; i < n; i++)
        if (d->labels[i] >= d->classes) {
            err_set(e, "%s: label %u of item %u is out of range (0..%d)", lpath, d->labels[i], i,
                    d->classes - 1);
            goto out;
        }
    rc = 0;
out:
    if (gi)
        gzclose(gi);
    if (gl)
        gzclose(gl);
    if (rc)
        dataset_free(d);
    return rc;
}

/* ---- synthetic ---- */

static int synthetic_make(Dataset *d, int n, uint32_t split, uint64_t seed, Err *e)
{
    dataset_init(d, DS_SYNTHETIC, 3, 32, 32, 10);
    if (dataset_alloc(d, n, "synthetic images", e))
        return -1;
    const int words = CIFAR_PIXELS / 16;
#pragma omp parallel for schedule(static)
    for (int i = 0; i < n; i++) {
        uint8_t *p = d->pixels + (size_t)i * CIFAR_PIXELS;
        for (int k = 0; k < words; k++) {
            Philox4 r = philox4x32(seed, RNG_TEST, split, (uint32_t)i, (uint32_t)k);
            for (int b = 0; b < 16; b++)
                p[16 * k + b] = (uint8_t)(r.v[b / 4] >> (8 * (b % 4)));
        }
        uint32_t u = rng_u32(seed, RNG_TEST, split + 1, (uint32_t)i, 0);
        d->labels[i] = (uint8_t)(((uint64_t)u * 10) >> 32);
    }
    return 0;
}

const char *dataset_source(DatasetKind kind)
{
    switch (kind) {
    case DS_CIFAR10:
        return "the files of the CIFAR-10 binary version, "
               "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz";
    case DS_CIFAR100:
        return "the files of the CIFAR-100 binary version, "
               "https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz";
    case DS_FASHION_MNIST:
        return "the Fashion-MNIST IDX files (Debian: apt-get install dataset-fashion-mnist)";
    case DS_MNIST:
        return "the MNIST IDX files (train-images-idx3-ubyte[.gz] and the other three)";
    case DS_SYNTHETIC:
        break;
    }
    return "";
}

int dataset_load(Dataset *train, Dataset *test, DatasetKind kind, const char *dir,
                 uint64_t seed, Err *e)
{
    static const char *const c10_train[CIFAR_TRAIN_FILES] = {
        "data_batch_1.bin", "data_batch_2.bin", "data_batch_3.bin", "data_batch_4.bin",
        "data_batch_5.bin"};
    static const char *const c10_test[] = {"test_batch.bin"};
    static const char *const c100_train[] = {"train.bin"};
    static const char *const c100_test[] = {"test.bin"};
    int rc = -1;
    memset(train, 0, sizeof *train);
    memset(test, 0, sizeof *test);
    if (kind != DS_SYNTHETIC && (!dir || !dir[0]))
        return err_set(e, "no data directory given for %s", dataset_name(kind));
    switch (kind) {
    case DS_CIFAR10:
        rc = cifar_load(train, kind, dir, c10_train, CIFAR_TRAIN_FILES, e) ||
             cifar_load(test, kind, dir, c10_test, 1, e) ? -1 : 0;
        break;
    case DS_CIFAR100:
        rc = cifar_load(train, kind, dir, c100_train, 1, e) ||
             cifar_load(test, kind, dir, c100_test, 1, e) ? -1 : 0;
        break;
    case DS_FASHION_MNIST:
    case DS_MNIST:
        rc = idx_load(train, kind, dir, "train-images-idx3-ubyte", "train-labels-idx1-ubyte", e) ||
             idx_load(test, kind, dir, "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte", e)
             ? -1 : 0;
        break;
    case DS_SYNTHETIC:
        rc = synthetic_make(train, SYNTH_TRAIN, 0, seed, e) ||
             synthetic_make(test, SYNTH_TEST, 2, seed, e) ? -1 : 0;
        break;
    default:
        return err_set(e, "unknown data set kind %d", (int)kind);
    }
    if (rc) {
        dataset_free(train);
        dataset_free(test);
    }
    return rc;
}

/* ---- subset ---- */

typedef struct {
    uint64_t key;
    int index;
    int label;
} KeyedImage;

static int keyed_cmp(const void *pa, const void *pb)
{
    const KeyedImage *a = pa, *b = pb;
    if (a->label != b->label)
        return a->label < b->label ? -1 : 1;
    if (a->key != b->key)
        return a->key < b->key ? -1 : 1;
    return (a->index > b->index) - (a->index < b->index);
}

static uint64_t philox_key(uint64_t seed, uint32_t stream, uint32_t a, uint32_t b)
{
    Philox4 r = philox4x32(seed, stream, a, b, 0);
    return (uint64_t)r.v[0] << 32 | r.v[1];
}

int dataset_subset(Dataset *d, int n, uint64_t seed, Err *e)
{
    if (n <= 0 || n > d->n)
        return err_set(e, "subset of %d images asked of a %s set of %d", n,
                       dataset_name(d->kind), d->n);
    int classes = d->classes;
    int *have = calloc((size_t)classes, sizeof *have);
    KeyedImage *keyed = malloc((size_t)d->n * sizeof *keyed);
    uint8_t *keep = calloc((size_t)d->n, 1);
    Dataset out = *d;
    out.pixels = out.labels = NULL;
    int rc = -1;
    if (!have || !keyed || !keep) {
        err_set(e, "out of memory choosing a subset of %d images", n);
        goto done;
    }
    for (int i = 0; i < d->n; i++)
        have[d->labels[i]]++;
    for (int c = 0; c < classes; c++) {
        int need = n / classes + (c < n % classes);
        if (have[c] < need) {
            err_set(e, "subset of %d images needs %d of class %d, the %s set has only %d", n,
                    need, c, dataset_name(d->kind), have[c]);
            goto done;
        }
    }

    /* Sorting by (class, key, index) lines each class up in selection order;
     * the first `need` of each run are kept. */
    for (int i = 0; i < d->n; i++) {
        keyed[i].key = philox_key(seed, RNG_SUBSET, d->labels[i], (uint32_t)i);
        keyed[i].index = i;
        keyed[i].label = d->labels[i];
    }
    qsort(keyed, (size_t)d->n, sizeof *keyed, keyed_cmp);
    for (int i = 0, run = 0; i < d->n; i++) {
        run = i > 0 && keyed[i].label == keyed[i - 1].label ? run + 1 : 0;
        int c = keyed[i].label;
        if (run < n / classes + (c < n % classes))
            keep[keyed[i].index] = 1;
    }

    /* Fresh arrays rather than compacting in place: the point of a subset is
     * usually to use less memory, and on failure d is left untouched. */
    size_t img = (size_t)(d->c * d->h * d->w);
    if (dataset_alloc(&out, n, "subset images", e))
        goto done;
    for (int i = 0, j = 0; i < d->n; i++)
        if (keep[i]) {
            memcpy(out.pixels + (size_t)j * img, d->pixels + (size_t)i * img, img);
            out.labels[j++] = d->labels[i];
        }
    dataset_free(d);
    *d = out;
    rc = 0;
done:
    free(have);
    free(keyed);
    free(keep);
    return rc;
}

/* ---- epoch order ---- */

typedef struct {
    uint64_t key;
    int index;
} OrderKey;

static int order_cmp(const void *pa, const void *pb)
{
    const OrderKey *a = pa, *b = pb;
    if (a->key != b->key)
        return a->key < b->key ? -1 : 1;
    return (a->index > b->index) - (a->index < b->index);
}

typedef struct {
    uint64_t seed;
    uint32_t epoch;
} OrderCtx;

static int order_cmp_slow(const void *pa, const void *pb, void *pctx)
{
    const OrderCtx *ctx = pctx;
    OrderKey a = {philox_key(ctx->seed, RNG_SHUFFLE, ctx->epoch, (uint32_t)*(const int *)pa),
                  *(const int *)pa};
    OrderKey b = {philox_key(ctx->seed, RNG_SHUFFLE, ctx->epoch, (uint32_t)*(const int *)pb),
                  *(const int *)pb};
    return order_cmp(&a, &b);
}

void data_epoch_order(int *order, int n, uint64_t seed, int epoch, int shuffle)
{
    for (int i = 0; i < n; i++)
        order[i] = i;
    if (!shuffle || n < 2)
        return;
    OrderKey *keys = malloc((size_t)n * sizeof *keys);
    if (!keys) {
        /* The API has no error path, and the order must not depend on
         * memory: sort in place recomputing keys (same order, ~10x slower). */
        OrderCtx ctx = {seed, (uint32_t)epoch};
        qsort_r(order, (size_t)n, sizeof *order, order_cmp_slow, &ctx);
        return;
    }
    for (int i = 0; i < n; i++) {
        keys[i].key = philox_key(seed, RNG_SHUFFLE, (uint32_t)epoch, (uint32_t)i);
        keys[i].index = i;
    }
    qsort(keys, (size_t)n, sizeof *keys, order_cmp);
    for (int i = 0; i < n; i++)
        order[i] = keys[i].index;
    free(keys);
}

/* ---- batches ---- */

void data_batch(float *x, int *labels, const Dataset *d, const int *idx, int count,
                uint64_t seed, int epoch, int augment)
{
    const int C = d->c, H = d->h, W = d->w;
    const size_t plane = (size_t)H * W, img = (size_t)C * plane;
    /* A byte has 256 values: normalizing through a table costs 256 divisions
     * per channel per batch instead of one per pixel, and gives exactly
     * ((float)p - mean) / std, the float32 expression other backends use.
     * C <= 3: Dataset carries three channels' statistics. */
    float lut[3][256];
    for (int c = 0; c < C; c++)
        for (int p = 0; p < 256; p++)
            lut[c][p] = ((float)p - d->mean[c]) / d->std[c];

#pragma omp parallel for schedule(static)
    for (int j = 0; j < count; j++) {
        const int i = idx[j];
        const uint8_t *src = d->pixels + (size_t)i * img;
        float *out = x + (size_t)j * img;
        labels[j] = d->labels[i];
        int flip = 0, dx = PAD, dy = PAD;       /* PAD, PAD: the identity crop */
        if (augment) {
            Philox4 r = philox4x32(seed, RNG_AUGMENT, (uint32_t)epoch, (uint32_t)i, 0);
            flip = d->flip && (r.v[0] >> 31);
            dx = (int)(((uint64_t)r.v[1] * (2 * PAD + 1)) >> 32);
            dy = (int)(((uint64_t)r.v[2] * (2 * PAD + 1)) >> 32);
        }
        /* out[y][x] = flipped[y + dy - PAD][x + dx - PAD], zero (the mean,
         * after normalization) where that falls outside the image. Columns
         * [x0, x1) of the output have a source column. */
        const int ox = dx - PAD, oy = dy - PAD;
        const int x0 = ox < 0 ? -ox : 0, x1 = ox > 0 ? W - ox : W;
        for (int c = 0; c < C; c++) {
            const float *t = lut[c];
            for (int y = 0; y < H; y++) {
                float *o = out + c * plane + (size_t)y * W;
                int sy = y + oy;
                if (sy < 0 || sy >= H) {
                    memset(o, 0, (size_t)W * sizeof *o);
                    continue;
                }
                const uint8_t *s = src + c * plane + (size_t)sy * W;
                for (int xx = 0; xx < x0; xx++)
                    o[xx] = 0.0f;
                if (flip)
                    for (int xx = x0; xx < x1; xx++)
                        o[xx] = t[s[W - 1 - (xx + ox)]];
                else
                    for (int xx = x0; xx < x1; xx++)
                        o[xx] = t[s[xx + ox]];
                for (int xx = x1; xx < W; xx++)
                    o[xx] = 0.0f;
            }
        }
    }
}
