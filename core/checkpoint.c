/*
 * Checkpoints as safetensors files, so PyTorch (safetensors.torch.load_file)
 * reads them and we read its files. Layout: u64 little-endian header size N,
 * N bytes of JSON padded with spaces to make 8 + N a multiple of 8, then the
 * data buffer that every "data_offsets" pair indexes from its start.
 *
 * Writing: every tensor of the model in model order, contiguous, then
 * "momentum.<name>" for each parameter; the temporary file is fsynced before
 * it is renamed over the target and the folder is fsynced after, so at every
 * moment PATH holds either the old checkpoint or the new one, complete.
 *
 * Reading trusts nothing in the file: every size, offset, shape and dtype is
 * checked against the file's length and the model before any byte lands in
 * the caller's arrays, and metadata numbers are parsed strictly.
 */
#define _GNU_SOURCE
#include "checkpoint.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>

/* The data buffer is little-endian float32 and we copy it to and from memory
 * as is; a big-endian port would need byte swaps in tensor_write/read. */
_Static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
               "checkpoint.c copies little-endian float32 data as it lies in memory");
_Static_assert(sizeof(float) == 4, "safetensors F32 is 4 bytes");

/* The safetensors reference implementation refuses larger headers too. */
#define HEADER_MAX ((uint64_t)100 << 20)
#define FORMAT_NAME "shakeshake-checkpoint"
#define FORMAT_VERSION "1"

static void le64_put(unsigned char b[8], uint64_t v)
{
    for (int i = 0; i < 8; i++)
        b[i] = (unsigned char)(v >> (8 * i));
}

static uint64_t le64_get(const unsigned char b[8])
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v |= (uint64_t)b[i] << (8 * i);
    return v;
}

static const float *tensor_src(const TensorInfo *t, const float *params, const float *state)
{
    return (t->arena == T_PARAM ? params : state) + t->offset;
}

static float *tensor_dst(const TensorInfo *t, float *params, float *state)
{
    return (t->arena == T_PARAM ? params : state) + t->offset;
}

/* ---- writing ---- */

static int json_add_tensor(json_t *root, const char *name, const TensorInfo *t, uint64_t *at)
{
    json_t *shape = json_array();
    for (int d = 0; d < t->ndim; d++)
        json_array_append_new(shape, json_integer(t->shape[d]));
    uint64_t end = *at + 4 * (uint64_t)t->count;
    json_t *entry = json_pack("{s:s, s:o, s:[I, I]}", "dtype", "F32", "shape", shape,
                              "data_offsets", (json_int_t)*at, (json_int_t)end);
    *at = end;
    /* set_new takes ownership even on failure */
    return entry ? json_object_set_new(root, name, entry) : -1;
}

/* The JSON header; insertion order (metadata, model order, momentum) is kept
 * by jansson, so the file reads in the same order as the model. */
static char *header_build(const Model *m, int with_momentum, const CheckpointMeta *meta)
{
    char step[32], epoch[32], seed[32];
    snprintf(step, sizeof step, "%" PRId64, meta ? meta->step : 0);
    snprintf(epoch, sizeof epoch, "%" PRId64, meta ? meta->epoch : 0);
    snprintf(seed, sizeof seed, "%" PRIu64, meta ? meta->seed : 0);
    json_t *md = json_pack("{s:s, s:s, s:s, s:s, s:s}", "format", FORMAT_NAME,
                           "version", FORMAT_VERSION, "step", step, "epoch", epoch,
                           "seed", seed);
    json_t *root = json_object();
    char *out = NULL;
    if (!md || !root)
        goto done;
    if (meta && meta->config_json &&
        json_object_set_new(md, "config", json_string(meta->config_json)) != 0)
        goto done;
    if (json_object_set(root, "__metadata__", md) != 0)
        goto done;
    uint64_t at = 0;
    for (int i = 0; i < m->ntensors; i++)
        if (json_add_tensor(root, m->tensors[i].name, &m->tensors[i], &at) != 0)
            goto done;
    for (int i = 0; with_momentum && i < m->ntensors; i++) {
        const TensorInfo *t = &m->tensors[i];
        char name[sizeof "momentum." + sizeof t->name];
        if (t->arena != T_PARAM)
            continue;
        snprintf(name, sizeof name, "momentum.%s", t->name);
        if (json_add_tensor(root, name, t, &at) != 0)
            goto done;
    }
    out = json_dumps(root, JSON_COMPACT);
done:
    json_decref(md);
    json_decref(root);
    return out;
}

static int write_all(FILE *f, const void *p, size_t n)
{
    return n == 0 || fwrite(p, 1, n, f) == n ? 0 : -1;
}

/* What a checkpoint file holds: the header's JSON, the model's tensors and
 * (if not NULL) the momentum of its parameters. */
typedef struct {
    const char *json;
    const Model *m;
    const float *params, *state, *momentum;
} Body;

/* The whole file (header length, header, tensors): file_replace's body. */
static int write_body(FILE *f, void *ctx)
{
    const Body *b = ctx;
    const Model *m = b->m;
    size_t n = strlen(b->json);
    size_t padded = (8 + n + 7) / 8 * 8 - 8;
    unsigned char size[8];
    le64_put(size, padded);
    if (write_all(f, size, 8) || write_all(f, b->json, n))
        return -1;
    for (size_t i = n; i < padded; i++)
        if (fputc(' ', f) == EOF)
            return -1;
    for (int i = 0; i < m->ntensors; i++) {
        const TensorInfo *t = &m->tensors[i];
        if (write_all(f, tensor_src(t, b->params, b->state), t->count * sizeof(float)))
            return -1;
    }
    for (int i = 0; b->momentum && i < m->ntensors; i++) {
        const TensorInfo *t = &m->tensors[i];
        if (t->arena == T_PARAM &&
            write_all(f, b->momentum + t->offset, t->count * sizeof(float)))
            return -1;
    }
    return 0;
}

int checkpoint_save(const char *path, const Model *m, const float *params,
                    const float *state, const float *momentum,
                    const CheckpointMeta *meta, Err *e)
{
    char *json = header_build(m, momentum != NULL, meta);
    if (!json)
        return err_set(e, "saving checkpoint %s: cannot build the header (out of memory, "
                       "or the config is not valid UTF-8)", path);
    Body b = {json, m, params, state, momentum};
    int rc = file_replace(path, "saving checkpoint", write_body, &b, e);
    free(json);
    return rc;
}

static void writer_clear(CheckpointWriter *w)
{
    free(w->path);
    free(w->meta.config_json);
    w->path = NULL;
    w->meta.config_json = NULL;
}

/* After the write: the writer's copies go, its status returned once. */
static int writer_finish(CheckpointWriter *w, Err *e)
{
    writer_clear(w);
    if (w->rc)
        return err_set(e, "%s", w->err.msg);
    return 0;
}

static void *writer_main(void *arg)
{
    CheckpointWriter *w = arg;
    const double t0 = time_now();
    w->rc = checkpoint_save(w->path, w->m, w->params, w->state, w->momentum,
                            w->has_meta ? &w->meta : NULL, &w->err);
    w->seconds = time_now() - t0;
    return NULL;
}

int checkpoint_save_start(CheckpointWriter *w, const char *path, const Model *m,
                          const float *params, const float *state, const float *momentum,
                          const CheckpointMeta *meta, Err *e)
{
    if (checkpoint_save_wait(w, e))
        return -1;
    w->path = strdup(path);
    w->has_meta = meta != NULL;
    if (meta) {
        w->meta = *meta;
        w->meta.config_json = meta->config_json ? strdup(meta->config_json) : NULL;
    }
    if (!w->path || (meta && meta->config_json && !w->meta.config_json)) {
        writer_clear(w);
        return err_set(e, "saving checkpoint %s: out of memory", path);
    }
    w->m = m;
    w->params = params;
    w->state = state;
    w->momentum = momentum;
    w->rc = 0;
    w->err.msg[0] = '\0';
    /* signals (Ctrl-C, SIGTERM) go to the training thread, whose handler
     * stops the loop, not to the writer: it starts with all blocked */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    const int started = pthread_create(&w->thread, NULL, writer_main, w) == 0;
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (started) {
        w->running = 1;
        return 0;
    }
    /* no thread (resource limits): write here, as checkpoint_save would */
    writer_main(w);
    return writer_finish(w, e);
}

int checkpoint_save_wait(CheckpointWriter *w, Err *e)
{
    if (!w->running)
        return 0;
    pthread_join(w->thread, NULL);
    w->running = 0;
    return writer_finish(w, e);
}

/* ---- reading ---- */

typedef struct {
    int fd;
    uint64_t file_size;
    uint64_t data_start;        /* 8 + N */
    uint64_t data_len;          /* bytes after the header */
    json_t *root;
} Header;

static void header_close(Header *h)
{
    if (h->fd >= 0)
        close(h->fd);
    json_decref(h->root);
    h->fd = -1;
    h->root = NULL;
}

static int read_at(int fd, void *buf, size_t n, uint64_t at)
{
    char *p = buf;
    while (n > 0) {
        ssize_t got = pread(fd, p, n, (off_t)at);
        if (got < 0 && errno == EINTR)
            continue;
        if (got <= 0) {
            if (got == 0)
                errno = EIO; /* the file shrank under us */
            return -1;
        }
        p += got;
        n -= (size_t)got;
        at += (uint64_t)got;
    }
    return 0;
}

/* Opens path and parses its header; on failure h holds nothing to close. */
static int header_open(const char *path, Header *h, Err *e)
{
    memset(h, 0, sizeof *h);
    h->fd = open(path, O_RDONLY | O_CLOEXEC);
    if (h->fd < 0)
        return err_set(e, "cannot open: %s", strerror(errno));
    struct stat st;
    if (fstat(h->fd, &st) != 0) {
        err_set(e, "cannot stat: %s", strerror(errno));
        goto fail;
    }
    if (!S_ISREG(st.st_mode)) {
        err_set(e, "not a regular file");
        goto fail;
    }
    h->file_size = (uint64_t)st.st_size;
    if (h->file_size < 8) {
        err_set(e, "file is %" PRIu64 " bytes, too short for the 8-byte header size",
                h->file_size);
        goto fail;
    }
    unsigned char b[8];
    if (read_at(h->fd, b, 8, 0) != 0) {
        err_set(e, "reading the header size: %s", strerror(errno));
        goto fail;
    }
    uint64_t n = le64_get(b);
    if (n > HEADER_MAX || n > h->file_size - 8) {
        err_set(e, "header size %" PRIu64 " is impossible for a file of %" PRIu64
                " bytes (truncated or not a safetensors file)", n, h->file_size);
        goto fail;
    }
    char *text = malloc(n ? n : 1);
    if (!text) {
        err_set(e, "out of memory for a %" PRIu64 "-byte header", n);
        goto fail;
    }
    if (read_at(h->fd, text, n, 8) != 0) {
        err_set(e, "reading the header: %s", strerror(errno));
        free(text);
        goto fail;
    }
    json_error_t jerr;
    h->root = json_loadb(text, n, JSON_REJECT_DUPLICATES, &jerr);
    free(text);
    if (!h->root) {
        err_set(e, "header is not valid JSON (byte %d: %s)", jerr.position, jerr.text);
        goto fail;
    }
    if (!json_is_object(h->root)) {
        err_set(e, "header JSON is not an object");
        goto fail;
    }
    h->data_start = 8 + n;
    h->data_len = h->file_size - h->data_start;
    return 0;
fail:
    header_close(h);
    return -1;
}

static void shape_format(char *buf, size_t len, const json_t *shape, const TensorInfo *t)
{
    size_t at = (size_t)snprintf(buf, len, "[");
    size_t n = shape ? json_array_size(shape) : (size_t)t->ndim;
    for (size_t d = 0; d < n && at < len; d++) {
        long long v = shape ? (long long)json_integer_value(json_array_get(shape, d))
                            : (long long)t->shape[d];
        at += (size_t)snprintf(buf + at, len - at, "%s%lld", d ? ", " : "", v);
    }
    if (at < len)
        snprintf(buf + at, len - at, "]");
}

/*
 * Checks the entry `name` against t's shape and the data buffer's length.
 * Returns 0 with *begin set, 1 if the file has no such entry, -1 on error.
 */
static int entry_check(const Header *h, const char *name, const TensorInfo *t,
                       uint64_t *begin, Err *e)
{
    json_t *ent = json_object_get(h->root, name);
    if (!ent)
        return 1;
    if (!json_is_object(ent))
        return err_set(e, "tensor '%s': entry is not an object", name);
    json_t *dtype = json_object_get(ent, "dtype");
    if (!json_is_string(dtype))
        return err_set(e, "tensor '%s': no dtype", name);
    if (strcmp(json_string_value(dtype), "F32") != 0)
        return err_set(e, "tensor '%s' has dtype %s; only F32 is supported", name,
                       json_string_value(dtype));

    json_t *shape = json_object_get(ent, "shape");
    if (!json_is_array(shape))
        return err_set(e, "tensor '%s': shape is not an array", name);
    int same = json_array_size(shape) == (size_t)t->ndim;
    for (size_t d = 0; d < json_array_size(shape); d++) {
        json_t *v = json_array_get(shape, d);
        if (!json_is_integer(v) || json_integer_value(v) < 0)
            return err_set(e, "tensor '%s': shape holds something other than sizes", name);
        if (same && json_integer_value(v) != t->shape[d])
            same = 0;
    }
    if (!same) {
        char found[128], expected[128];
        shape_format(found, sizeof found, shape, t);
        shape_format(expected, sizeof expected, NULL, t);
        return err_set(e, "tensor '%s' has shape %s in the file but the model expects %s",
                       name, found, expected);
    }

    json_t *off = json_object_get(ent, "data_offsets");
    json_t *b = json_array_get(off, 0), *en = json_array_get(off, 1);
    if (!json_is_array(off) || json_array_size(off) != 2 || !json_is_integer(b) ||
        !json_is_integer(en))
        return err_set(e, "tensor '%s': data_offsets is not a pair of integers", name);
    json_int_t lo = json_integer_value(b), hi = json_integer_value(en);
    if (lo < 0 || hi < lo)
        return err_set(e, "tensor '%s': data_offsets [%lld, %lld] are negative or out of order", name,
                       (long long)lo, (long long)hi);
    if ((uint64_t)(hi - lo) != 4 * (uint64_t)t->count)
        return err_set(e, "tensor '%s': data_offsets [%lld, %lld] span %lld bytes, but "
                       "%zu float32 values need %zu", name, (long long)lo, (long long)hi,
                       (long long)(hi - lo), t->count, 4 * t->count);
    if ((uint64_t)hi > h->data_len)
        return err_set(e, "tensor '%s': data_offsets end at %lld, past the %" PRIu64
                       " bytes of data in the file (truncated?)", name, (long long)hi,
                       h->data_len);
    *begin = (uint64_t)lo;
    return 0;
}

/* Strict decimal: digits only, no sign, blanks or overflow. */
static int parse_u64(const char *s, uint64_t *out)
{
    uint64_t v = 0;
    if (!*s)
        return -1;
    for (; *s; s++) {
        if (*s < '0' || *s > '9')
            return -1;
        unsigned d = (unsigned)(*s - '0');
        if (v > (UINT64_MAX - d) / 10)
            return -1;
        v = v * 10 + d;
    }
    *out = v;
    return 0;
}

static int meta_string(json_t *md, const char *key, const char **out, Err *e)
{
    json_t *v = json_object_get(md, key);
    if (!v)
        return err_set(e, "metadata has no '%s'", key);
    if (!json_is_string(v))
        return err_set(e, "metadata '%s' is not a string", key);
    *out = json_string_value(v);
    return 0;
}

static int meta_parse(const Header *h, CheckpointMeta *out, Err *e)
{
    memset(out, 0, sizeof *out);
    json_t *md = json_object_get(h->root, "__metadata__");
    if (!json_is_object(md))
        return err_set(e, "no __metadata__ object (not a checkpoint written by this program)");
    const char *format = "", *version = "", *s = "";
    if (meta_string(md, "format", &format, e) || meta_string(md, "version", &version, e))
        return -1;
    if (strcmp(format, FORMAT_NAME) != 0)
        return err_set(e, "metadata format is '%s', not '%s'", format, FORMAT_NAME);
    if (strcmp(version, FORMAT_VERSION) != 0)
        return err_set(e, "checkpoint version '%s'; this program reads version %s",
                       version, FORMAT_VERSION);
    uint64_t v;
    if (meta_string(md, "step", &s, e))
        return -1;
    if (parse_u64(s, &v) != 0 || v > INT64_MAX)
        return err_set(e, "metadata step '%s' is not a non-negative integer", s);
    out->step = (int64_t)v;
    if (meta_string(md, "epoch", &s, e))
        return -1;
    if (parse_u64(s, &v) != 0 || v > INT64_MAX)
        return err_set(e, "metadata epoch '%s' is not a non-negative integer", s);
    out->epoch = (int64_t)v;
    if (meta_string(md, "seed", &s, e))
        return -1;
    if (parse_u64(s, &out->seed) != 0)
        return err_set(e, "metadata seed '%s' is not an unsigned 64-bit integer", s);
    json_t *cfg = json_object_get(md, "config");
    if (cfg) {
        if (!json_is_string(cfg))
            return err_set(e, "metadata config is not a string");
        out->config_json = strdup(json_string_value(cfg));
        if (!out->config_json)
            return err_set(e, "out of memory copying the config");
    }
    return 0;
}

typedef struct {
    uint64_t begin, end;
    const char *name;
} Span;

static int span_cmp(const void *a, const void *b)
{
    const Span *x = a, *y = b;
    if (x->begin != y->begin)
        return x->begin < y->begin ? -1 : 1;
    return x->end < y->end ? -1 : x->end > y->end;
}

/*
 * The entries must tile the data buffer exactly, as the safetensors spec
 * requires. This is what catches a header size that is off by a few bytes
 * of padding: every tensor would still fit, shifted, and load as garbage.
 */
static int buffer_check(const Header *h, Err *e)
{
    size_t cap = json_object_size(h->root), n = 0;
    Span *s = malloc((cap ? cap : 1) * sizeof *s);
    if (!s)
        return err_set(e, "out of memory");
    int rc = -1;
    const char *key;
    json_t *ent;
    json_object_foreach(h->root, key, ent) {
        if (strcmp(key, "__metadata__") == 0)
            continue;
        json_t *off = json_object_get(ent, "data_offsets");
        json_t *b = json_array_get(off, 0), *en = json_array_get(off, 1);
        if (!json_is_object(ent) || json_array_size(off) != 2 || !json_is_integer(b) ||
            !json_is_integer(en) || json_integer_value(b) < 0 ||
            json_integer_value(en) < json_integer_value(b)) {
            err_set(e, "tensor '%s': not an entry with valid data_offsets", key);
            goto done;
        }
        s[n++] = (Span){(uint64_t)json_integer_value(b), (uint64_t)json_integer_value(en), key};
    }
    qsort(s, n, sizeof *s, span_cmp);
    uint64_t at = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i].begin < at) {
            err_set(e, "tensors '%s' and '%s' overlap in the data buffer", s[i - 1].name,
                    s[i].name);
            goto done;
        }
        if (s[i].begin > at) {
            err_set(e, "%" PRIu64 " bytes of the data buffer before tensor '%s' belong "
                    "to no tensor", s[i].begin - at, s[i].name);
            goto done;
        }
        at = s[i].end;
    }
    if (at != h->data_len) {
        err_set(e, "the tensors cover %" PRIu64 " bytes but the file holds %" PRIu64
                " bytes of data (wrong header size?)", at, h->data_len);
        goto done;
    }
    rc = 0;
done:
    free(s);
    return rc;
}

static int load_tensors(const Header *h, const Model *m, float *params, float *state,
                        float *momentum, Err *e)
{
    int rc = -1, nmom = 0, nparam = 0;
    /* begin offsets: model tensors, then momentum in the same slots + ntensors */
    uint64_t *begin = calloc(2 * (size_t)m->ntensors, sizeof *begin);
    char *have_mom = calloc((size_t)m->ntensors, 1);
    if (!begin || !have_mom) {
        err_set(e, "out of memory");
        goto done;
    }
    /* Pass 1: check every entry, so a bad file leaves the arrays untouched. */
    for (int i = 0; i < m->ntensors; i++) {
        const TensorInfo *t = &m->tensors[i];
        int r = entry_check(h, t->name, t, &begin[i], e);
        if (r < 0)
            goto done;
        if (r > 0) {
            err_set(e, "missing tensor '%s'", t->name);
            goto done;
        }
        if (!momentum || t->arena != T_PARAM)
            continue;
        char name[sizeof "momentum." + sizeof t->name];
        snprintf(name, sizeof name, "momentum.%s", t->name);
        nparam++;
        r = entry_check(h, name, t, &begin[m->ntensors + i], e);
        if (r < 0)
            goto done;
        have_mom[i] = r == 0;
        nmom += r == 0;
    }
    /* All momentum or none (a run saved without it starts from zeros); part
     * of it means a damaged file. */
    if (nmom > 0 && nmom < nparam) {
        for (int i = 0; i < m->ntensors; i++)
            if (m->tensors[i].arena == T_PARAM && !have_mom[i]) {
                err_set(e, "missing tensor 'momentum.%s' (the file has momentum for "
                        "%d of %d parameters)", m->tensors[i].name, nmom, nparam);
                goto done;
            }
    }
    if (buffer_check(h, e) != 0)
        goto done;
    /* Pass 2: the bytes. */
    for (int i = 0; i < m->ntensors; i++) {
        const TensorInfo *t = &m->tensors[i];
        if (read_at(h->fd, tensor_dst(t, params, state), 4 * t->count,
                    h->data_start + begin[i]) != 0) {
            err_set(e, "reading tensor '%s': %s", t->name, strerror(errno));
            goto done;
        }
        if (!momentum || t->arena != T_PARAM)
            continue;
        float *dst = momentum + t->offset;
        if (!have_mom[i]) {
            memset(dst, 0, 4 * t->count);
        } else if (read_at(h->fd, dst, 4 * t->count,
                           h->data_start + begin[m->ntensors + i]) != 0) {
            err_set(e, "reading tensor 'momentum.%s': %s", t->name, strerror(errno));
            goto done;
        }
    }
    rc = 0;
done:
    free(begin);
    free(have_mom);
    return rc;
}

int checkpoint_load(const char *path, const Model *m, float *params,
                    float *state, float *momentum, CheckpointMeta *meta, Err *e)
{
    Header h;
    CheckpointMeta got = {0};
    if (header_open(path, &h, e) != 0)
        return err_wrap(e, "checkpoint %s", path);
    int rc = -1;
    if (meta && meta_parse(&h, &got, e) != 0)
        goto done;
    if (load_tensors(&h, m, params, state, momentum, e) != 0)
        goto done;
    if (meta) {
        *meta = got;
        got.config_json = NULL;
    }
    rc = 0;
done:
    checkpoint_meta_free(&got);
    header_close(&h);
    return rc ? err_wrap(e, "checkpoint %s", path) : 0;
}

int checkpoint_read_meta(const char *path, CheckpointMeta *meta, Err *e)
{
    Header h;
    if (header_open(path, &h, e) != 0)
        return err_wrap(e, "checkpoint %s", path);
    int rc = meta_parse(&h, meta, e);
    header_close(&h);
    return rc ? err_wrap(e, "checkpoint %s", path) : 0;
}

void checkpoint_meta_free(CheckpointMeta *meta)
{
    if (!meta)
        return;
    free(meta->config_json);
    meta->config_json = NULL;
}
