/* The record of the convolution algorithms a run picked (algo_record.h). */
#define _GNU_SOURCE
#include "algo_record.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <jansson.h>

#define RECORD_FORMAT "shakeshake convolution algorithms"
#define RECORD_VERSION 1

const char *const algo_dir_names[ALGO_DIRS] = {"forward", "backward_data", "backward_filter"};

static const char *const key_fields[] = {"gpu", "library", "precision", "search", "conv"};
enum { KEY_FIELDS = sizeof key_fields / sizeof key_fields[0] };

struct AlgoRecord {
    char *path;
    json_t *entries;            /* array of entries of the form entry_valid accepts */
    int dirty;                  /* changed since read or written */
    char warning[600];
};

static const char *key_field(const AlgoKey *k, int i)
{
    const char *v[KEY_FIELDS] = {k->gpu, k->library, k->precision, k->search, k->conv};
    return v[i];
}

/* A list: 1..ALGO_MAX pairs [algo, math] of non-negative integers. */
static int list_valid(const json_t *l)
{
    if (!json_is_array(l) || json_array_size(l) < 1 || json_array_size(l) > ALGO_MAX)
        return 0;
    size_t i;
    const json_t *p;
    json_array_foreach(l, i, p)
    {
        if (!json_is_array(p) || json_array_size(p) != 2)
            return 0;
        for (size_t j = 0; j < 2; j++) {
            const json_t *v = json_array_get(p, j);
            if (!json_is_integer(v) || json_integer_value(v) < 0 ||
                json_integer_value(v) > 1000000)
                return 0;
        }
    }
    return 1;
}

static int entry_valid(const json_t *en)
{
    if (!json_is_object(en))
        return 0;
    for (int i = 0; i < KEY_FIELDS; i++)
        if (!json_is_string(json_object_get(en, key_fields[i])))
            return 0;
    const json_t *b = json_object_get(en, "batch");
    if (!json_is_integer(b) || json_integer_value(b) < 1 || json_integer_value(b) > 1 << 30)
        return 0;
    for (int d = 0; d < ALGO_DIRS; d++)
        if (!list_valid(json_object_get(en, algo_dir_names[d])))
            return 0;
    return 1;
}

static int entry_matches(const json_t *en, const AlgoKey *k)
{
    for (int i = 0; i < KEY_FIELDS; i++)
        if (strcmp(json_string_value(json_object_get(en, key_fields[i])), key_field(k, i)) != 0)
            return 0;
    return json_integer_value(json_object_get(en, "batch")) == k->batch;
}

/* The entries of the file at path into r; 1 if there was a file (read or
 * not), 0 if there was none. Problems go to r->warning. */
static int record_read(AlgoRecord *r, const char *path)
{
    struct stat st;
    if (stat(path, &st) != 0 && errno == ENOENT)
        return 0;
    json_error_t je;
    json_t *root = json_load_file(path, 0, &je);
    if (!root) {
        snprintf(r->warning, sizeof r->warning,
                 "%s: not read (%s, line %d); its algorithms are chosen afresh and the file "
                 "rewritten",
                 path, je.text, je.line);
        return 1;
    }
    const json_t *fmt = json_object_get(root, "format");
    const json_t *ver = json_object_get(root, "version");
    const json_t *entries = json_object_get(root, "entries");
    if (!json_is_string(fmt) || strcmp(json_string_value(fmt), RECORD_FORMAT) != 0 ||
        !json_is_integer(ver) || json_integer_value(ver) != RECORD_VERSION ||
        !json_is_array(entries)) {
        snprintf(r->warning, sizeof r->warning,
                 "%s: not a record of this form (\"format\": \"%s\", \"version\": %d, "
                 "\"entries\": [...]); its algorithms are chosen afresh and the file rewritten",
                 path, RECORD_FORMAT, RECORD_VERSION);
        json_decref(root);
        return 1;
    }
    size_t i, bad = 0, first_bad = 0;
    json_t *en;
    json_array_foreach(entries, i, en)
    {
        if (entry_valid(en))
            json_array_append(r->entries, en);
        else if (bad++ == 0)
            first_bad = i;
    }
    if (bad) {
        snprintf(r->warning, sizeof r->warning,
                 "%s: %zu of %zu entries not of the expected form (the first: entries[%zu]) "
                 "were dropped",
                 path, bad, json_array_size(entries), first_bad);
        r->dirty = 1;
    }
    json_decref(root);
    return 1;
}

AlgoRecord *algo_record_open(const char *path, const char *seed, Err *e)
{
    AlgoRecord *r = calloc(1, sizeof *r);
    if (!r || !(r->path = strdup(path)) || !(r->entries = json_array())) {
        algo_record_close(r);
        err_set(e, "algorithm record %s: out of memory", path);
        return NULL;
    }
    if (!record_read(r, path) && seed && seed[0] && strcmp(seed, path) != 0 &&
        record_read(r, seed))
        r->dirty = 1;           /* written to path at the next save */
    return r;
}

void algo_record_close(AlgoRecord *r)
{
    if (!r)
        return;
    json_decref(r->entries);
    free(r->path);
    free(r);
}

const char *algo_record_warning(const AlgoRecord *r)
{
    return r->warning[0] ? r->warning : NULL;
}

int algo_record_get(const AlgoRecord *r, const AlgoKey *k, AlgoLists *out)
{
    size_t i;
    const json_t *en;
    json_array_foreach(r->entries, i, en)
    {
        if (!entry_matches(en, k))
            continue;
        for (int d = 0; d < ALGO_DIRS; d++) {
            const json_t *l = json_object_get(en, algo_dir_names[d]);
            out->count[d] = (int)json_array_size(l);
            for (int c = 0; c < out->count[d]; c++) {
                const json_t *p = json_array_get(l, c);
                out->algo[d][c] = (int)json_integer_value(json_array_get(p, 0));
                out->math[d][c] = (int)json_integer_value(json_array_get(p, 1));
            }
        }
        return 1;
    }
    return 0;
}

int algo_record_put(AlgoRecord *r, const AlgoKey *k, const AlgoLists *l, Err *e)
{
    json_t *en = json_object();
    int ok = en != NULL;
    for (int i = 0; ok && i < KEY_FIELDS; i++)
        ok = json_object_set_new(en, key_fields[i], json_string(key_field(k, i))) == 0;
    ok = ok && json_object_set_new(en, "batch", json_integer(k->batch)) == 0;
    for (int d = 0; ok && d < ALGO_DIRS; d++) {
        if (l->count[d] < 1 || l->count[d] > ALGO_MAX) {
            json_decref(en);
            return err_set(e, "algorithm record %s: %d %s candidates for %s at batch %d "
                              "(1..%d)",
                           r->path, l->count[d], algo_dir_names[d], k->conv, k->batch,
                           (int)ALGO_MAX);
        }
        json_t *list = json_array();
        ok = list && json_object_set_new(en, algo_dir_names[d], list) == 0;
        for (int c = 0; ok && c < l->count[d]; c++)
            ok = json_array_append_new(list, json_pack("[ii]", l->algo[d][c],
                                                       l->math[d][c])) == 0;
    }
    if (!ok || !entry_valid(en)) {
        json_decref(en);
        return err_set(e, "algorithm record %s: cannot store the entry for %s at batch %d "
                          "(out of memory, or a field is not valid UTF-8)",
                       r->path, k->conv, k->batch);
    }
    size_t i;
    json_t *old;
    json_array_foreach(r->entries, i, old)
    {
        if (entry_matches(old, k)) {
            if (json_equal(old, en)) {
                json_decref(en);
                return 0;
            }
            r->dirty = 1;
            return json_array_set_new(r->entries, i, en) == 0
                       ? 0
                       : err_set(e, "algorithm record %s: out of memory", r->path);
        }
    }
    r->dirty = 1;
    return json_array_append_new(r->entries, en) == 0
               ? 0
               : err_set(e, "algorithm record %s: out of memory", r->path);
}

/* the record's text and a newline */
static int text_write(FILE *f, void *ctx)
{
    const char *text = ctx;
    const size_t len = strlen(text);
    return fwrite(text, 1, len, f) == len && fputc('\n', f) != EOF ? 0 : -1;
}

int algo_record_save(AlgoRecord *r, Err *e)
{
    if (!r->dirty)
        return 0;
    json_t *root = json_pack("{s:s, s:i, s:O}", "format", RECORD_FORMAT, "version",
                             RECORD_VERSION, "entries", r->entries);
    char *text = root ? json_dumps(root, JSON_INDENT(1)) : NULL;
    json_decref(root);
    if (!text)
        return err_set(e, "algorithm record %s: out of memory", r->path);
    const int rc = file_replace(r->path, "algorithm record", text_write, text, e);
    free(text);
    if (rc == 0)
        r->dirty = 0;
    return rc;
}
