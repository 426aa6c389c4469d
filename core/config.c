/*
 * The keys of a training run, driven by one table. Every key has exactly one
 * row in KEYS below: its name, type, field, default (as text, applied by
 * config_defaults through the same parser a user's "key=value" goes through)
 * and, for integers, the least valid value. Parsing, validation, the text
 * form and the canonical JSON all walk that table, so a key added there is
 * settable, printed and round-tripped everywhere at once.
 *
 * Invariants: config_set/config_set_kv change at most the one field named and
 * only when the whole value parsed; config_from_json changes nothing unless
 * every key of the object applied. The JSON form is canonical (keys sorted,
 * compact, doubles with 17 significant digits) so equal configs give equal
 * strings and every double reads back bit-exact.
 */
#include "config.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <jansson.h>

typedef enum { K_INT, K_INT64, K_DOUBLE, K_BOOL, K_STRING, K_CHOICE } KeyType;

typedef struct {
    const char *name;
    KeyType type;
    size_t off;                 /* offsetof(TrainConfig, field) */
    size_t size;                /* K_STRING: the field's buffer size */
    /* K_CHOICE: the names, indexed by the enum value; NULL means the data
     * set names, which data.c owns (dataset_name), so they live in one place */
    const char *const *choices;
    int nchoices;
    long long min;              /* K_INT, K_INT64: least valid value */
    const char *dflt;
} KeyDef;

static const char *const ARCH_NAMES[] = {"resnet", "resnext"};
/* Shared by forward and backward so that a config holding forward=keep can
 * still be printed; config_validate rejects it. */
static const char *const SHAKE_NAMES[] = {"even", "shake", "keep"};
static const char *const LEVEL_NAMES[] = {"batch", "image"};
static const char *const SHIFT_NAMES[] = {"original", "reimpl"};
static const char *const PRECISION_NAMES[] = {"auto", "fp32", "bf16"};

#define F(field) offsetof(TrainConfig, field)
#define INT(name, min, d)   {#name, K_INT, F(name), 0, NULL, 0, min, d}
#define INT64(name, min, d) {#name, K_INT64, F(name), 0, NULL, 0, min, d}
#define DBL(name, d)        {#name, K_DOUBLE, F(name), 0, NULL, 0, 0, d}
#define BOOL(name, d)       {#name, K_BOOL, F(name), 0, NULL, 0, 0, d}
#define STR(name, d)        {#name, K_STRING, F(name), sizeof(((TrainConfig *)0)->name), NULL, 0, 0, d}
#define CHOICE(name, names, d) \
    {#name, K_CHOICE, F(name), 0, names, (int)(sizeof names / sizeof names[0]), 0, d}

/* Integer minimums that hold whatever the other keys say live here; checks
 * that depend on other keys (depth against arch, ...) are in config_validate. */
static const KeyDef KEYS[] = {
    {"dataset", K_CHOICE, F(dataset), 0, NULL, DS_SYNTHETIC + 1, 0, "cifar10"},
    STR(data_dir, ""),
    CHOICE(arch, ARCH_NAMES, "resnet"),
    INT(depth, 1, "26"),
    INT(width, 1, "32"),
    INT(groups, 1, "4"),
    CHOICE(forward, SHAKE_NAMES, "shake"),
    CHOICE(backward, SHAKE_NAMES, "shake"),
    CHOICE(level, LEVEL_NAMES, "image"),
    CHOICE(shift, SHIFT_NAMES, "original"),
    INT(epochs, 1, "1800"),
    INT(batch, 1, "128"),
    DBL(lr, "0.2"),
    DBL(wd, "1e-4"),
    DBL(momentum, "0.9"),
    INT64(seed, 0, "1"),
    INT(train_subset, 0, "0"),
    INT64(subset_seed, 0, "0"),
    STR(backend, "cpu"),
    INT(threads, 0, "0"),
    INT(device, 0, "0"),
    CHOICE(precision, PRECISION_NAMES, "auto"),
    STR(out, "results/train"),
    STR(init, ""),
    STR(resume, ""),
    BOOL(augment, "1"),
    BOOL(shuffle, "1"),
    INT64(steps, 0, "0"),
};

#undef F
#undef INT
#undef INT64
#undef DBL
#undef BOOL
#undef STR
#undef CHOICE

#define NKEYS ((int)(sizeof KEYS / sizeof KEYS[0]))

static const KeyDef *key_find(const char *name)
{
    for (int i = 0; i < NKEYS; i++)
        if (strcmp(KEYS[i].name, name) == 0)
            return &KEYS[i];
    return NULL;
}

static const char *choice_name(const KeyDef *k, int v)
{
    if (v < 0 || v >= k->nchoices)
        return NULL;
    return k->choices ? k->choices[v] : dataset_name((DatasetKind)v);
}

static void *field(TrainConfig *c, const KeyDef *k)
{
    return (char *)c + k->off;
}

static const void *field_const(const TrainConfig *c, const KeyDef *k)
{
    return (const char *)c + k->off;
}

static int err_unknown_key(Err *e, const char *key)
{
    const char *s = config_suggest(key);
    if (s)
        return err_set(e, "unknown key '%s' (did you mean '%s'?)", key, s);
    return err_set(e, "unknown key '%s'", key);
}

/* ---- typed setters: shared by the text and JSON paths ---- */

static int set_integer(TrainConfig *c, const KeyDef *k, long long v, const char *text, Err *e)
{
    if (k->type == K_INT) {
        if (v < INT_MIN || v > INT_MAX)
            return err_set(e, "bad value '%s' for key '%s': out of range for an integer",
                           text, k->name);
        *(int *)field(c, k) = (int)v;
    } else {
        *(int64_t *)field(c, k) = (int64_t)v;
    }
    return 0;
}

static int set_double(TrainConfig *c, const KeyDef *k, double v, const char *text, Err *e)
{
    if (!isfinite(v))
        return err_set(e, "bad value '%s' for key '%s': expected a finite number",
                       text, k->name);
    *(double *)field(c, k) = v;
    return 0;
}

static int set_string(TrainConfig *c, const KeyDef *k, const char *v, Err *e)
{
    size_t n = strlen(v);
    if (n >= k->size)
        return err_set(e, "value for key '%s' is %zu characters long; at most %zu fit",
                       k->name, n, k->size - 1);
    memcpy(field(c, k), v, n + 1);
    return 0;
}

static int set_choice(TrainConfig *c, const KeyDef *k, const char *v, Err *e)
{
    for (int i = 0; i < k->nchoices; i++) {
        const char *name = choice_name(k, i);
        if (name && strcmp(name, v) == 0) {
            *(int *)field(c, k) = i;
            return 0;
        }
    }
    char list[256] = "";
    size_t len = 0;
    for (int i = 0; i < k->nchoices && len < sizeof list; i++)
        len += (size_t)snprintf(list + len, sizeof list - len, "%s%s",
                                i ? ", " : "", choice_name(k, i) ? choice_name(k, i) : "?");
    return err_set(e, "bad value '%s' for key '%s': expected one of %s", v, k->name, list);
}

/* ---- text values ---- */

/* strtoll accepts leading blanks and a lone sign; a value is all of the text. */
static int parse_ll(const char *s, long long *out)
{
    if (!*s || isspace((unsigned char)*s))
        return -1;
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || *end)
        return -1;
    *out = v;
    return 0;
}

static int parse_double(const char *s, double *out)
{
    if (!*s || isspace((unsigned char)*s))
        return -1;
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    /* ERANGE on underflow still yields a usable (tiny) value; only overflow
     * and trailing text are errors, and isfinite catches "inf"/"nan". */
    if (*end || (errno == ERANGE && fabs(v) > 1.0))
        return -1;
    *out = v;
    return 0;
}

static int parse_bool(const char *s, int *out)
{
    static const char *const yes[] = {"1", "true", "yes", "on"};
    static const char *const no[] = {"0", "false", "no", "off"};
    for (int i = 0; i < 4; i++) {
        if (strcasecmp(s, yes[i]) == 0)
            return *out = 1, 0;
        if (strcasecmp(s, no[i]) == 0)
            return *out = 0, 0;
    }
    return -1;
}

int config_set_kv(TrainConfig *c, const char *key, const char *value, Err *e)
{
    const KeyDef *k = key_find(key);
    if (!k)
        return err_unknown_key(e, key);
    switch (k->type) {
    case K_INT:
    case K_INT64: {
        long long v;
        if (parse_ll(value, &v) != 0)
            return err_set(e, "bad value '%s' for key '%s': expected an integer", value, key);
        return set_integer(c, k, v, value, e);
    }
    case K_DOUBLE: {
        double v;
        if (parse_double(value, &v) != 0)
            return err_set(e, "bad value '%s' for key '%s': expected a number", value, key);
        return set_double(c, k, v, value, e);
    }
    case K_BOOL: {
        int v;
        if (parse_bool(value, &v) != 0)
            return err_set(e, "bad value '%s' for key '%s': expected a boolean "
                           "(1, 0, true, false, yes, no, on, off)", value, key);
        *(int *)field(c, k) = v;
        return 0;
    }
    case K_STRING:
        return set_string(c, k, value, e);
    case K_CHOICE:
        return set_choice(c, k, value, e);
    }
    return err_set(e, "key '%s' has an unknown type", key);
}

int config_set(TrainConfig *c, const char *assignment, Err *e)
{
    const char *eq = strchr(assignment, '=');
    if (!eq)
        return err_set(e, "'%s' is not of the form key=value", assignment);
    size_t n = (size_t)(eq - assignment);
    if (n == 0)
        return err_set(e, "'%s' has no key before '='", assignment);
    char key[64];
    if (n >= sizeof key) {
        /* Longer than any key: unknown, but name it without overflowing. */
        return err_set(e, "unknown key '%.*s'", (int)n, assignment);
    }
    memcpy(key, assignment, n);
    key[n] = 0;
    return config_set_kv(c, key, eq + 1, e);
}

void config_defaults(TrainConfig *c)
{
    memset(c, 0, sizeof *c);
    /* The defaults are literals in KEYS and cannot fail at run time;
     * test_config checks that each one parses and that they validate. */
    for (int i = 0; i < NKEYS; i++)
        config_set_kv(c, KEYS[i].name, KEYS[i].dflt, NULL);
}

/* ---- validation ---- */

int config_validate(const TrainConfig *c, Err *e)
{
    for (int i = 0; i < NKEYS; i++) {
        const KeyDef *k = &KEYS[i];
        const void *p = field_const(c, k);
        if (k->type == K_INT && *(const int *)p < k->min)
            return err_set(e, "%s=%d: must be at least %lld", k->name, *(const int *)p, k->min);
        if (k->type == K_INT64 && *(const int64_t *)p < k->min)
            return err_set(e, "%s=%lld: must be at least %lld", k->name,
                           (long long)*(const int64_t *)p, k->min);
        if (k->type == K_CHOICE && !choice_name(k, *(const int *)p))
            return err_set(e, "%s=%d: not a valid choice", k->name, *(const int *)p);
    }
    if (c->arch == ARCH_RESNET) {
        if (c->depth < 8 || (c->depth - 2) % 6 != 0)
            return err_set(e, "depth=%d: a Shake-Shake ResNet needs depth 6n+2 with n >= 1 "
                           "(8, 14, 20, 26, ...)", c->depth);
        if (c->width < 2 || c->width % 2 != 0)
            return err_set(e, "width=%d: a Shake-Shake ResNet needs an even width of at "
                           "least 2 (its shortcut splits the width in two)", c->width);
    } else {
        if (c->depth < 11 || (c->depth - 2) % 9 != 0)
            return err_set(e, "depth=%d: a Shake ResNeXt needs depth 9n+2 with n >= 1 "
                           "(11, 20, 29, ...)", c->depth);
    }
    if (c->forward == SHAKE_KEEP)
        return err_set(e, "forward=keep: keep is only a backward mode (use even or shake)");
    if (!(c->lr > 0))
        return err_set(e, "lr=%g: must be greater than 0", c->lr);
    if (!(c->wd >= 0))
        return err_set(e, "wd=%g: must be at least 0", c->wd);
    if (!(c->momentum >= 0 && c->momentum < 1))
        return err_set(e, "momentum=%g: must be in [0, 1)", c->momentum);
    if (c->precision == CFG_PRECISION_BF16 && strcmp(c->backend, "cuda") != 0)
        return err_set(e, "precision=bf16: only backend=cuda computes in bf16 (backend=%s is "
                       "float32; use precision=fp32 or auto)", c->backend);
    if (c->init[0] && c->resume[0])
        return err_set(e, "init and resume are both set: init starts from weights with a "
                       "fresh optimizer, resume continues a run; choose one");
    return 0;
}

/* ---- text form and JSON ---- */

int config_nkeys(void)
{
    return NKEYS;
}

const char *config_key_name(int i)
{
    return i >= 0 && i < NKEYS ? KEYS[i].name : NULL;
}

/* The shortest "%.Ng" that reads back to the same double: 0.1 prints as
 * "0.1", not "0.10000000000000001", and still round-trips exactly. */
static void format_double(double v, char *buf, int len)
{
    for (int prec = 1; prec <= 17; prec++) {
        snprintf(buf, (size_t)len, "%.*g", prec, v);
        if (strtod(buf, NULL) == v)
            return;
    }
}

void config_key_value(const TrainConfig *c, int i, char *buf, int len)
{
    if (len <= 0)
        return;
    buf[0] = 0;
    if (i < 0 || i >= NKEYS)
        return;
    const KeyDef *k = &KEYS[i];
    const void *p = field_const(c, k);
    switch (k->type) {
    case K_INT:
        snprintf(buf, (size_t)len, "%d", *(const int *)p);
        break;
    case K_INT64:
        snprintf(buf, (size_t)len, "%lld", (long long)*(const int64_t *)p);
        break;
    case K_DOUBLE:
        format_double(*(const double *)p, buf, len);
        break;
    case K_BOOL:
        snprintf(buf, (size_t)len, "%d", *(const int *)p ? 1 : 0);
        break;
    case K_STRING:
        snprintf(buf, (size_t)len, "%s", (const char *)p);
        break;
    case K_CHOICE: {
        const char *name = choice_name(k, *(const int *)p);
        snprintf(buf, (size_t)len, "%s", name ? name : "?");
        break;
    }
    }
}

static json_t *key_to_json(const TrainConfig *c, const KeyDef *k)
{
    const void *p = field_const(c, k);
    switch (k->type) {
    case K_INT:
        return json_integer(*(const int *)p);
    case K_INT64:
        return json_integer((json_int_t)*(const int64_t *)p);
    case K_DOUBLE:
        return json_real(*(const double *)p);
    case K_BOOL:
        return json_boolean(*(const int *)p);
    case K_STRING:
        return json_string((const char *)p);
    case K_CHOICE: {
        const char *name = choice_name(k, *(const int *)p);
        return name ? json_string(name) : json_integer(*(const int *)p);
    }
    }
    return NULL;
}

char *config_to_json(const TrainConfig *c)
{
    json_t *o = json_object();
    if (!o)
        return NULL;
    for (int i = 0; i < NKEYS; i++) {
        /* json_object_set_new takes ownership even when it fails */
        if (json_object_set_new(o, KEYS[i].name, key_to_json(c, &KEYS[i])) != 0) {
            json_decref(o);
            return NULL;
        }
    }
    /* 17 significant digits is what makes every double read back exactly. */
    char *s = json_dumps(o, JSON_COMPACT | JSON_SORT_KEYS | JSON_REAL_PRECISION(17));
    json_decref(o);
    return s;
}

static const char *json_type_name(const json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_OBJECT: return "an object";
    case JSON_ARRAY: return "an array";
    case JSON_STRING: return "a string";
    case JSON_INTEGER: return "an integer";
    case JSON_REAL: return "a real number";
    case JSON_TRUE:
    case JSON_FALSE: return "a boolean";
    case JSON_NULL: return "null";
    }
    return "?";
}

static int set_from_json(TrainConfig *c, const KeyDef *k, json_t *v, Err *e)
{
    char text[64];
    switch (k->type) {
    case K_INT:
    case K_INT64:
        if (!json_is_integer(v))
            return err_set(e, "key '%s': expected an integer, found %s", k->name, json_type_name(v));
        snprintf(text, sizeof text, "%lld", (long long)json_integer_value(v));
        return set_integer(c, k, json_integer_value(v), text, e);
    case K_DOUBLE:
        if (!json_is_number(v))
            return err_set(e, "key '%s': expected a number, found %s", k->name, json_type_name(v));
        snprintf(text, sizeof text, "%g", json_number_value(v));
        return set_double(c, k, json_number_value(v), text, e);
    case K_BOOL:
        if (!json_is_boolean(v))
            return err_set(e, "key '%s': expected true or false, found %s", k->name,
                           json_type_name(v));
        *(int *)field(c, k) = json_is_true(v);
        return 0;
    case K_STRING:
    case K_CHOICE:
        if (!json_is_string(v))
            return err_set(e, "key '%s': expected a string, found %s", k->name, json_type_name(v));
        if (k->type == K_STRING)
            return set_string(c, k, json_string_value(v), e);
        return set_choice(c, k, json_string_value(v), e);
    }
    return err_set(e, "key '%s' has an unknown type", k->name);
}

int config_from_json(TrainConfig *c, const char *json, Err *e)
{
    json_error_t jerr;
    json_t *root = json_loads(json, JSON_REJECT_DUPLICATES, &jerr);
    if (!root)
        return err_set(e, "config JSON, line %d column %d: %s", jerr.line, jerr.column, jerr.text);
    int rc = 0;
    if (!json_is_object(root)) {
        rc = err_set(e, "config JSON is %s, not an object", json_type_name(root));
        goto done;
    }
    /* Work on a copy so a bad key leaves *c as it was. */
    TrainConfig tmp = *c;
    const char *key;
    json_t *v;
    json_object_foreach(root, key, v) {
        const KeyDef *k = key_find(key);
        if (!k) {
            rc = err_unknown_key(e, key);
            goto done;
        }
        if ((rc = set_from_json(&tmp, k, v, e)) != 0)
            goto done;
    }
    *c = tmp;
done:
    json_decref(root);
    return rc;
}

/* ---- suggestions ---- */

/* Levenshtein distance; b is a key (short), a is whatever the user typed. */
static int edit_distance(const char *a, const char *b)
{
    int nb = (int)strlen(b);
    int row[64], prev[64];
    if (nb >= 64)
        return INT_MAX;
    for (int j = 0; j <= nb; j++)
        prev[j] = j;
    for (int i = 1; a[i - 1]; i++) {
        row[0] = i;
        for (int j = 1; j <= nb; j++) {
            int sub = prev[j - 1] + (a[i - 1] != b[j - 1]);
            int del = prev[j] + 1, ins = row[j - 1] + 1;
            row[j] = sub < del ? (sub < ins ? sub : ins) : (del < ins ? del : ins);
        }
        memcpy(prev, row, (size_t)(nb + 1) * sizeof *row);
    }
    return prev[nb];
}

const char *config_suggest(const char *key)
{
    int len = (int)strlen(key);
    int limit = len / 3 > 2 ? len / 3 : 2;
    const char *best = NULL;
    int best_d = INT_MAX;
    for (int i = 0; i < NKEYS; i++) {
        int d = edit_distance(key, KEYS[i].name);
        int klen = (int)strlen(KEYS[i].name);
        /* A distance as long as both words is a replacement, not a typo
         * ("x" is two edits from "lr" but nothing like it). */
        if (d < best_d && d <= limit && d < (len > klen ? len : klen)) {
            best = KEYS[i].name;
            best_d = d;
        }
    }
    return best;
}

void config_model_spec(const TrainConfig *c, int classes, int in_c, int in_h,
                       int in_w, ModelSpec *spec)
{
    memset(spec, 0, sizeof *spec);
    spec->arch = (Arch)c->arch;
    spec->depth = c->depth;
    spec->width = c->width;
    spec->groups = c->arch == ARCH_RESNEXT ? c->groups : 1;
    spec->classes = classes;
    spec->in_c = in_c;
    spec->in_h = in_h;
    spec->in_w = in_w;
    spec->shift = (ShiftMode)c->shift;
}
