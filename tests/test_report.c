/*
 * `sweep report` rendering: statistics, the four table formats read back
 * (text by column position, Markdown by cell, CSV by an RFC 4180 parser,
 * JSON through jansson), partial and failed cells, code-version selection,
 * empty and misplaced cells, and the learning-curve files.
 */
#define _GNU_SOURCE
#include "testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <cairo.h>
#include <jansson.h>

#include "report.h"

/* cmocka 1.1's assert_float_equal works in float; these checks need double. */
#define assert_near(a, b, tol) assert_near_at((a), (b), (tol), #a, __FILE__, __LINE__)
static void assert_near_at(double a, double b, double tol, const char *what, const char *file,
                           int line)
{
    if (!(fabs(a - b) <= tol))
        fail_msg("%s:%d: %s = %.17g, expected %.17g within %g", file, line, what, a, b, tol);
}

/* ---------- fixtures ---------- */

static char *ROWS[] = {"Even-Even n/a", "Shake-Shake Image"};
static char *COLS[] = {"26 2x32d", "26 2x64d"};

static ReportRun run_of(int64_t id, int repeat, RunState st, double err, const char *code,
                        double ended)
{
    ReportRun r;
    memset(&r, 0, sizeof r);
    r.id = id;
    r.repeat = repeat;
    r.seed = 100 + repeat;
    r.state = st;
    snprintf(r.code, sizeof r.code, "%s", code);
    r.ended = ended;
    r.has_result = st == RUN_DONE;
    r.test_err = st == RUN_DONE ? err : 0.0;
    r.test_loss = 0.2;
    return r;
}

static ReportCell cell_of(const char *label, const char *row, const char *col, double ref,
                          int repeats, const ReportRun *runs, int nruns)
{
    ReportCell c = {label, row, col, ref > 0, ref, repeats, nruns, runs};
    return c;
}

/* Table 1's shape, one code version, known numbers:
 *   Even-Even n/a     x 2x32d: 4.2 4.3 4.4    -> 4.30 +- 0.10, paper 4.27
 *   Even-Even n/a     x 2x64d: 3.74 3.80 3.86 -> 3.80 +- 0.06, paper 3.76
 *   Shake-Shake Image x 2x32d: 3.5 3.6 3.7    -> 3.60 +- 0.10, paper 3.55
 *   Shake-Shake Image x 2x64d: 2.9 3.1        -> 3.00 +- 0.14, paper 2.98 */
typedef struct {
    ReportRun runs[4][3];
    ReportCell cells[4];
    ReportInput in;
} Table;

static void table_init(Table *t)
{
    static const double err[4][3] = {{4.2, 4.3, 4.4}, {3.74, 3.80, 3.86}, {3.5, 3.6, 3.7},
                                      {2.9, 3.1, 0}};
    static const double ref[4] = {4.27, 3.76, 3.55, 2.98};
    static const char *labels[4] = {"Even-Even n/a 26 2x32d", "Even-Even, \"n/a\" 26 2x64d",
                                    "Shake-Shake Image 26 2x32d", "Shake-Shake Image 26 2x64d"};
    memset(t, 0, sizeof *t);
    for (int i = 0; i < 4; i++) {
        int n = i == 3 ? 2 : 3;
        for (int k = 0; k < n; k++)
            t->runs[i][k] = run_of(10 * i + k + 1, k, RUN_DONE, err[i][k], "abc1234",
                                   1000 + 10 * i + k);
        t->cells[i] = cell_of(labels[i], ROWS[i / 2], COLS[i % 2], ref[i], n, t->runs[i], n);
    }
    t->in = (ReportInput){"table1[epochs=30]", "Table 1 (CIFAR-10, 30 epochs)", 2, 2, ROWS, COLS,
                          4, t->cells, NULL};
}

/* ---------- reading outputs back ---------- */

static char *render(const ReportInput *in, ReportFormat fmt)
{
    char *s = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&s, &len);
    assert_non_null(f);
    Err e = {{0}};
    int rc = report_render(f, in, fmt, &e);
    fclose(f);
    if (rc != 0)
        fail_msg("report_render: %s", e.msg);
    return s;
}

static void assert_contains(const char *haystack, const char *needle)
{
    if (!strstr(haystack, needle))
        fail_msg("expected \"%s\" in:\n%s", needle, haystack);
}

static void assert_lacks(const char *haystack, const char *needle)
{
    if (strstr(haystack, needle))
        fail_msg("did not expect \"%s\" in:\n%s", needle, haystack);
}

/* The line after the one that starts with prefix (skip = 0: that line). */
static char *line_at(const char *text, const char *prefix, int skip)
{
    const char *p = text;
    while (p && *p && strncmp(p, prefix, strlen(prefix)) != 0) {
        p = strchr(p, '\n');
        p = p ? p + 1 : NULL;
    }
    if (!p || !*p)
        fail_msg("no line starting with \"%s\" in:\n%s", prefix, text);
    for (; skip > 0; skip--) {
        p = strchr(p, '\n');
        if (!p)
            fail_msg("text ends after \"%s\"", prefix);
        p++;
    }
    const char *end = strchr(p, '\n');
    return strndup(p, end ? (size_t)(end - p) : strlen(p));
}

/* Terminal columns of UTF-8 text: one per code point. */
static int width_of(const char *s)
{
    int w = 0;
    for (; *s; s++)
        w += ((unsigned char)*s & 0xC0) != 0x80;
    return w;
}

/* Terminal column of needle in line, -1 when absent. */
static int column_of(const char *line, const char *needle)
{
    const char *hit = strstr(line, needle);
    if (!hit)
        return -1;
    char *head = strndup(line, (size_t)(hit - line));
    int col = width_of(head);
    free(head);
    return col;
}

static void expect_at(const char *text, const char *prefix, int skip, const char *needle, int col)
{
    char *line = line_at(text, prefix, skip);
    int got = column_of(line, needle);
    if (got != col)
        fail_msg("\"%s\" at column %d, expected %d, in line \"%s\" of:\n%s", needle, got, col, line,
                 text);
    free(line);
}

/* Markdown row split on unescaped pipes; cells trimmed. Returns the count. */
static int md_split(const char *line, char cells[][256], int max)
{
    int n = -1, len = 0;
    for (const char *p = line; *p; p++) {
        if (*p == '|' && (p == line || p[-1] != '\\')) {
            if (n >= 0 && n < max) {
                while (len > 0 && cells[n][len - 1] == ' ')
                    len--;
                cells[n][len] = '\0';
            }
            n++;
            len = 0;
            continue;
        }
        if (n >= 0 && n < max && len < 255 && !(len == 0 && *p == ' '))
            cells[n][len++] = *p;
    }
    return n;
}

/* RFC 4180 records: fields[r][f], each field malloc'ed. Returns the record count. */
enum { CSV_MAXREC = 16, CSV_MAXF = 24 };
static int csv_parse(const char *s, char *fields[CSV_MAXREC][CSV_MAXF], int *nfields)
{
    int r = 0;
    while (*s && r < CSV_MAXREC) {
        int f = 0;
        for (;;) {
            char buf[512];
            int len = 0;
            if (*s == '"') {
                for (s++;; s++) {
                    if (*s == '\0')
                        fail_msg("unterminated quoted CSV field");
                    if (*s == '"' && s[1] == '"') {
                        buf[len++] = '"';
                        s++;
                    } else if (*s == '"') {
                        s++;
                        break;
                    } else {
                        buf[len++] = *s;
                    }
                }
            } else {
                while (*s && *s != ',' && *s != '\n')
                    buf[len++] = *s++;
            }
            buf[len] = '\0';
            assert_true(f < CSV_MAXF);
            fields[r][f++] = strdup(buf);
            if (*s == ',') {
                s++;
                continue;
            }
            if (*s == '\n')
                s++;
            else if (*s != '\0')
                fail_msg("junk after a quoted CSV field: \"%.20s\"", s);
            break;
        }
        nfields[r++] = f;
    }
    return r;
}

static void csv_free(char *fields[CSV_MAXREC][CSV_MAXF], const int *nfields, int n)
{
    for (int r = 0; r < n; r++)
        for (int f = 0; f < nfields[r]; f++)
            free(fields[r][f]);
}

static json_t *render_json(const ReportInput *in)
{
    char *s = render(in, REPORT_JSON);
    json_error_t je;
    json_t *root = json_loads(s, 0, &je);
    if (!root)
        fail_msg("JSON does not parse (%s, line %d):\n%s", je.text, je.line, s);
    free(s);
    return root;
}

static json_t *json_cell_at(json_t *root, const char *row, const char *col)
{
    size_t i;
    json_t *c;
    json_array_foreach(json_object_get(root, "cells"), i, c)
        if (strcmp(json_string_value(json_object_get(c, "row")), row) == 0 &&
            strcmp(json_string_value(json_object_get(c, "col")), col) == 0)
            return c;
    fail_msg("no JSON cell at %s, %s", row, col);
    return NULL;
}

/* JSON reals are printed with 10 significant digits: 1e-9 is well above
 * that rounding for values below 100 and far below any shown difference. */
#define JSON_TOL 1e-9

static double jreal(json_t *obj, const char *key)
{
    json_t *v = json_object_get(obj, key);
    if (!json_is_number(v))
        fail_msg("\"%s\" is not a number", key);
    return json_number_value(v);
}

/* ---------- tests ---------- */

static void test_stats(void **state)
{
    (void)state;
    double mean, sd;
    /* tolerances: a few ulps of the values; the formulas are exact otherwise */
    const double x[3] = {3.5, 3.6, 3.7};
    report_stats(x, 3, &mean, &sd);
    assert_near(mean, 3.6, 1e-12);
    assert_near(sd, 0.1, 1e-12);
    const double one[1] = {3.55};
    report_stats(one, 1, &mean, &sd);
    assert_near(mean, 3.55, 1e-15);
    assert_near(sd, 0.0, 0.0);
    const double two[2] = {2.9, 3.1};
    report_stats(two, 2, &mean, &sd);
    assert_near(mean, 3.0, 1e-12);
    assert_near(sd, sqrt(0.02), 1e-12);
    /* far from zero: a one-pass sum of squares would lose the spread */
    const double big[3] = {1e9 + 1, 1e9 + 2, 1e9 + 3};
    report_stats(big, 3, &mean, &sd);
    assert_near(mean, 1e9 + 2, 1e-6);
    assert_near(sd, 1.0, 1e-6);
    report_stats(x, 0, &mean, &sd);
    assert_near(sd, 0.0, 0.0);
}

static void test_format_parse(void **state)
{
    (void)state;
    assert_int_equal(report_format_parse("text"), REPORT_TEXT);
    assert_int_equal(report_format_parse("markdown"), REPORT_MARKDOWN);
    assert_int_equal(report_format_parse("csv"), REPORT_CSV);
    assert_int_equal(report_format_parse("json"), REPORT_JSON);
    assert_int_equal(report_format_parse("xml"), -1);
    assert_int_equal(report_format_parse("TEXT"), -1);
    assert_int_equal(report_format_parse(""), -1);
    assert_int_equal(report_format_parse(NULL), -1);

    Table t;
    table_init(&t);
    char *s = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&s, &len);
    Err e = {{0}};
    assert_int_equal(report_render(f, &t.in, (ReportFormat)7, &e), -1);
    fclose(f);
    assert_contains(e.msg, "format");
    free(s);
}

static void test_text(void **state)
{
    (void)state;
    Table t;
    table_init(&t);
    char *s = render(&t.in, REPORT_TEXT);
    char *header = line_at(s, " ", 0);
    int c32 = column_of(header, "26 2x32d"), c64 = column_of(header, "26 2x64d");
    assert_true(c32 > 0 && c64 > c32);
    free(header);
    expect_at(s, "Even-Even n/a", 0, "4.30 ± 0.10 (n=3)", c32);
    expect_at(s, "Even-Even n/a", 0, "3.80 ± 0.06 (n=3)", c64);
    expect_at(s, "Even-Even n/a", 1, "paper 4.27 (+0.03)", c32);
    expect_at(s, "Even-Even n/a", 1, "paper 3.76 (+0.04)", c64);
    expect_at(s, "Shake-Shake Image", 0, "3.60 ± 0.10 (n=3)", c32);
    expect_at(s, "Shake-Shake Image", 0, "3.00 ± 0.14 (n=2)", c64);
    expect_at(s, "Shake-Shake Image", 1, "paper 3.55 (+0.05)", c32);
    expect_at(s, "Shake-Shake Image", 1, "paper 2.98 (+0.02)", c64);
    assert_contains(s, "Table 1 (CIFAR-10, 30 epochs)");
    assert_contains(s, "table1[epochs=30]");
    /* complete, one version: no status, no notes */
    assert_lacks(s, "done");
    assert_lacks(s, "not shown");
    assert_lacks(s, "code versions");
    /* fits a 120-column terminal */
    for (const char *p = s; *p;) {
        const char *end = strchr(p, '\n');
        char *line = strndup(p, end ? (size_t)(end - p) : strlen(p));
        if (width_of(line) > 120)
            fail_msg("line wider than 120 columns: %s", line);
        free(line);
        p = end ? end + 1 : p + strlen(p);
    }
    free(s);
}

static void test_markdown(void **state)
{
    (void)state;
    Table t;
    table_init(&t);
    char *s = render(&t.in, REPORT_MARKDOWN);
    char cells[4][256];
    char *line = line_at(s, "| |", 0);
    assert_int_equal(md_split(line, cells, 4), 3);
    assert_string_equal(cells[1], "26 2x32d");
    assert_string_equal(cells[2], "26 2x64d");
    free(line);
    line = line_at(s, "| |", 1);
    assert_string_equal(line, "|---|---|---|");
    free(line);
    line = line_at(s, "| Even-Even n/a |", 0);
    assert_int_equal(md_split(line, cells, 4), 3);
    assert_contains(cells[1], "4.30 ± 0.10 (n=3)");
    assert_contains(cells[1], "paper 4.27 (+0.03)");
    assert_contains(cells[2], "3.80 ± 0.06 (n=3)");
    assert_lacks(cells[2], "4.30");
    free(line);
    line = line_at(s, "| Shake-Shake Image |", 0);
    assert_int_equal(md_split(line, cells, 4), 3);
    assert_contains(cells[1], "3.60 ± 0.10 (n=3)");
    assert_contains(cells[2], "3.00 ± 0.14 (n=2)<br>paper 2.98 (+0.02)");
    free(line);
    free(s);

    /* a pipe in a label is escaped and does not add a column */
    char *rows[2] = {"Even|Even n/a", ROWS[1]};
    t.in.rows = rows;
    t.cells[0].row = t.cells[1].row = rows[0];
    s = render(&t.in, REPORT_MARKDOWN);
    line = line_at(s, "| Even\\|Even n/a |", 0);
    assert_int_equal(md_split(line, cells, 4), 3);
    assert_contains(cells[1], "4.30 ± 0.10 (n=3)");
    free(line);
    free(s);
}

static void test_csv(void **state)
{
    (void)state;
    Table t;
    table_init(&t);
    char *s = render(&t.in, REPORT_CSV);
    char *f[CSV_MAXREC][CSV_MAXF];
    int nf[CSV_MAXREC];
    int n = csv_parse(s, f, nf);
    assert_int_equal(n, 5);
    static const char *head[] = {"sweep", "row", "col", "label", "n", "planned", "mean", "sd",
                                 "min", "max", "ref", "code", "done", "failed", "running",
                                 "pending", "interrupted", "not_shown"};
    assert_int_equal(nf[0], 18);
    for (int i = 0; i < 18; i++)
        assert_string_equal(f[0][i], head[i]);
    int seen = 0;
    for (int r = 1; r < n; r++) {
        assert_int_equal(nf[r], 18);
        assert_string_equal(f[r][0], "table1[epochs=30]");
        assert_string_equal(f[r][11], "abc1234");
        if (strcmp(f[r][1], "Shake-Shake Image") == 0 && strcmp(f[r][2], "26 2x32d") == 0) {
            seen |= 1;
            assert_string_equal(f[r][3], "Shake-Shake Image 26 2x32d");
            assert_string_equal(f[r][4], "3");
            assert_string_equal(f[r][5], "3");
            assert_string_equal(f[r][6], "3.6000");
            assert_string_equal(f[r][7], "0.1000");
            assert_string_equal(f[r][8], "3.5000");
            assert_string_equal(f[r][9], "3.7000");
            assert_string_equal(f[r][10], "3.5500");
            assert_string_equal(f[r][12], "3");
            assert_string_equal(f[r][13], "0");
        }
        if (strcmp(f[r][1], "Shake-Shake Image") == 0 && strcmp(f[r][2], "26 2x64d") == 0) {
            seen |= 2;
            assert_string_equal(f[r][4], "2");
            assert_string_equal(f[r][6], "3.0000");
            assert_string_equal(f[r][7], "0.1414");
        }
        if (strcmp(f[r][1], "Even-Even n/a") == 0 && strcmp(f[r][2], "26 2x64d") == 0) {
            seen |= 4;
            /* the comma and quotes survive RFC 4180 quoting */
            assert_string_equal(f[r][3], "Even-Even, \"n/a\" 26 2x64d");
            assert_string_equal(f[r][6], "3.8000");
        }
    }
    assert_int_equal(seen, 7);
    csv_free(f, nf, n);
    free(s);
}

static void test_json(void **state)
{
    (void)state;
    Table t;
    table_init(&t);
    json_t *root = render_json(&t.in);
    assert_string_equal(json_string_value(json_object_get(root, "sweep")), "table1[epochs=30]");
    assert_string_equal(json_string_value(json_object_get(root, "title")),
                        "Table 1 (CIFAR-10, 30 epochs)");
    json_t *versions = json_object_get(root, "code_versions");
    assert_int_equal(json_array_size(versions), 1);
    assert_string_equal(json_string_value(json_object_get(json_array_get(versions, 0), "code")),
                        "abc1234");
    assert_int_equal(json_integer_value(json_object_get(json_array_get(versions, 0), "cells")), 4);
    assert_int_equal(json_array_size(json_object_get(root, "cells")), 4);
    assert_int_equal(json_array_size(json_object_get(root, "notes")), 0);

    json_t *c = json_cell_at(root, "Shake-Shake Image", "26 2x32d");
    assert_string_equal(json_string_value(json_object_get(c, "label")),
                        "Shake-Shake Image 26 2x32d");
    assert_int_equal(json_integer_value(json_object_get(c, "n")), 3);
    assert_int_equal(json_integer_value(json_object_get(c, "planned")), 3);
    assert_near(jreal(c, "mean"), 3.6, JSON_TOL);
    assert_near(jreal(c, "sd"), 0.1, JSON_TOL);
    assert_near(jreal(c, "ref"), 3.55, JSON_TOL);
    assert_string_equal(json_string_value(json_object_get(c, "code")), "abc1234");
    json_t *runs = json_object_get(c, "runs");
    assert_int_equal(json_array_size(runs), 3);
    for (size_t k = 0; k < 3; k++) {
        json_t *r = json_array_get(runs, k);
        assert_int_equal(json_integer_value(json_object_get(r, "id")), 21 + (int)k);
        assert_int_equal(json_integer_value(json_object_get(r, "repeat")), (int)k);
        assert_int_equal(json_integer_value(json_object_get(r, "seed")), 100 + (int)k);
        assert_string_equal(json_string_value(json_object_get(r, "state")), "done");
        assert_string_equal(json_string_value(json_object_get(r, "code")), "abc1234");
        assert_near(jreal(r, "test_err"), 3.5 + 0.1 * (double)k, JSON_TOL);
    }
    assert_int_equal(json_array_size(json_object_get(c, "notes")), 0);

    c = json_cell_at(root, "Shake-Shake Image", "26 2x64d");
    assert_int_equal(json_integer_value(json_object_get(c, "n")), 2);
    assert_near(jreal(c, "sd"), sqrt(0.02), JSON_TOL);
    c = json_cell_at(root, "Even-Even n/a", "26 2x64d");
    assert_string_equal(json_string_value(json_object_get(c, "label")),
                        "Even-Even, \"n/a\" 26 2x64d");
    assert_near(jreal(c, "mean"), 3.8, JSON_TOL);
    json_decref(root);
}

/* One cell 2 done + 1 failed, one 1 done + 1 running + 1 interrupted. */
static void test_partial(void **state)
{
    (void)state;
    ReportRun a[3] = {run_of(11, 0, RUN_DONE, 3.0, "abc1234", 100),
                      run_of(12, 1, RUN_DONE, 3.2, "abc1234", 110),
                      run_of(13, 2, RUN_FAILED, 0, "abc1234", 0)};
    a[2].failure = "CUDA out of memory\nwhile allocating 2 GiB";
    ReportRun b[3] = {run_of(21, 0, RUN_DONE, 4.0, "abc1234", 120),
                      run_of(22, 1, RUN_RUNNING, 0, "abc1234", 0),
                      run_of(23, 2, RUN_INTERRUPTED, 0, "abc1234", 0)};
    ReportCell cells[2] = {cell_of("SSI 26 2x32d", ROWS[1], COLS[0], 3.55, 3, a, 3),
                           cell_of("SSI 26 2x64d", ROWS[1], COLS[1], 2.98, 3, b, 3)};
    ReportInput in = {"t", "partial", 1, 2, ROWS + 1, COLS, 2, cells, NULL};

    char *s = render(&in, REPORT_TEXT);
    char *header = line_at(s, " ", 0);
    int c32 = column_of(header, "26 2x32d"), c64 = column_of(header, "26 2x64d");
    free(header);
    expect_at(s, "Shake-Shake Image", 0, "3.10 ± 0.14 (n=2)", c32);
    expect_at(s, "Shake-Shake Image", 2, "2/3 done, 1 failed", c32);
    expect_at(s, "Shake-Shake Image", 0, "4.00 (n=1)", c64);
    expect_at(s, "Shake-Shake Image", 2, "1/3 done, 1 running, 1 interrupted", c64);
    /* the reason, on one line, under the notes */
    char *notes = strstr(s, "\nnotes:\n");
    assert_non_null(notes);
    assert_contains(notes, "SSI 26 2x32d: run 13 failed: CUDA out of memory while allocating 2 GiB");
    free(s);

    s = render(&in, REPORT_MARKDOWN);
    assert_contains(s, "3.10 ± 0.14 (n=2)<br>paper 3.55 (-0.45)<br>2/3 done, 1 failed");
    assert_contains(s, "run 13 failed: CUDA out of memory");
    free(s);

    json_t *root = render_json(&in);
    json_t *c = json_cell_at(root, "Shake-Shake Image", "26 2x32d");
    assert_int_equal(json_integer_value(json_object_get(c, "n")), 2);
    assert_int_equal(json_integer_value(json_object_get(json_object_get(c, "counts"), "failed")), 1);
    assert_int_equal(json_integer_value(json_object_get(json_object_get(c, "counts"), "done")), 2);
    assert_contains(json_string_value(json_array_get(json_object_get(c, "notes"), 0)),
                    "CUDA out of memory");
    json_t *failed = json_array_get(json_object_get(c, "runs"), 2);
    assert_string_equal(json_string_value(json_object_get(failed, "state")), "failed");
    assert_true(json_is_null(json_object_get(failed, "test_err")));
    assert_contains(json_string_value(json_object_get(failed, "failure")), "CUDA out of memory");
    c = json_cell_at(root, "Shake-Shake Image", "26 2x64d");
    assert_true(json_is_null(json_object_get(c, "sd")));   /* n = 1 */
    assert_near(jreal(c, "mean"), 4.0, JSON_TOL);
    json_decref(root);

    s = render(&in, REPORT_CSV);
    char *f[CSV_MAXREC][CSV_MAXF];
    int nf[CSV_MAXREC];
    int n = csv_parse(s, f, nf);
    assert_int_equal(n, 3);
    assert_string_equal(f[1][4], "2");      /* n */
    assert_string_equal(f[1][13], "1");     /* failed */
    assert_string_equal(f[2][7], "");       /* sd of n = 1 */
    assert_string_equal(f[2][14], "1");     /* running */
    assert_string_equal(f[2][16], "1");     /* interrupted */
    csv_free(f, nf, n);
    free(s);
}

/*
 * Cell A: new code (ids 1-3, ended last) and old code (ids 4-5, higher ids
 * but ended earlier): "most recent" goes by `ended`, so new is shown.
 * Cell B: old code done, new code only running: the done version is shown.
 * Cell C: no done run: the version of the newest run (by id) is shown.
 */
typedef struct {
    ReportRun a[5], b[3], c[2];
    ReportCell cells[3];
    ReportInput in;
} Versions;

static char *VCOLS[] = {"A", "B", "C"};

static void versions_init(Versions *v)
{
    v->a[0] = run_of(1, 0, RUN_DONE, 3.5, "abc1234", 2000);
    v->a[1] = run_of(2, 1, RUN_DONE, 3.6, "abc1234", 2100);
    v->a[2] = run_of(3, 2, RUN_DONE, 3.7, "abc1234", 2200);
    v->a[3] = run_of(4, 0, RUN_DONE, 9.0, "0123abcd", 1000);
    v->a[4] = run_of(5, 1, RUN_DONE, 9.2, "0123abcd", 1100);
    v->b[0] = run_of(6, 0, RUN_DONE, 5.0, "0123abcd", 1200);
    v->b[1] = run_of(7, 1, RUN_DONE, 5.2, "0123abcd", 1300);
    v->b[2] = run_of(9, 0, RUN_RUNNING, 0, "abc1234", 0);
    v->c[0] = run_of(30, 0, RUN_RUNNING, 0, "0123abcd", 0);
    v->c[1] = run_of(31, 0, RUN_PENDING, 0, "abc1234", 0);
    v->cells[0] = cell_of("cell A", "r", "A", 0, 3, v->a, 5);
    v->cells[1] = cell_of("cell B", "r", "B", 0, 2, v->b, 3);
    v->cells[2] = cell_of("cell C", "r", "C", 0, 3, v->c, 2);
    static char *rows[] = {"r"};
    v->in = (ReportInput){"v", "versions", 1, 3, rows, VCOLS, 3, v->cells, NULL};
}

/*
 * What the shown runs computed on: one note over the table, kinds with the
 * most runs first; only runs with a result count (a failed one, or one
 * that never said, does not), and a report whose runs never said has no
 * such note.
 */
static void test_hardware_note(void **state)
{
    (void)state;
    const char *h100 = "NVIDIA H100 80GB HBM3 (sm_90), 132 SMs, 79 GiB, with cuDNN 9.14.0";
    const char *h200 = "NVIDIA H200 (sm_90), 132 SMs, 140 GiB, with cuDNN 9.14.0";
    const char *a100 = "NVIDIA A100-SXM4-80GB (sm_80), 108 SMs, 79 GiB, with cuDNN 9.14.0";
    ReportRun a[3] = {run_of(11, 0, RUN_DONE, 3.0, "abc1234", 100),
                      run_of(12, 1, RUN_DONE, 3.2, "abc1234", 110),
                      run_of(13, 2, RUN_DONE, 3.1, "abc1234", 115)};
    a[0].hardware = h200;
    a[1].hardware = h100;
    a[2].hardware = h100;
    ReportRun b[3] = {run_of(21, 0, RUN_DONE, 4.0, "abc1234", 120),
                      run_of(22, 1, RUN_FAILED, 0, "abc1234", 0),
                      run_of(23, 2, RUN_DONE, 4.2, "abc1234", 130)};
    b[0].hardware = h100;
    b[1].hardware = a100;
    ReportCell cells[2] = {cell_of("SSI 26 2x32d", ROWS[1], COLS[0], 3.55, 3, a, 3),
                           cell_of("SSI 26 2x64d", ROWS[1], COLS[1], 2.98, 3, b, 3)};
    ReportInput in = {"t", "hardware", 1, 2, ROWS + 1, COLS, 2, cells, NULL};
    char want[600];
    snprintf(want, sizeof want, "computed on %s (3 runs); %s (1 run)", h100, h200);
    char *s = render(&in, REPORT_TEXT);
    assert_contains(s, want);
    assert_lacks(s, "A100");
    free(s);
    s = render(&in, REPORT_MARKDOWN);
    assert_contains(s, "computed on NVIDIA H100 80GB HBM3 (sm_90)");
    free(s);
    json_t *root = render_json(&in);
    size_t i;
    json_t *n;
    int found = 0;
    json_array_foreach(json_object_get(root, "notes"), i, n) found |=
        strcmp(json_string_value(n), want) == 0;
    assert_true(found);
    /* and each run's own, where it said */
    json_t *runs = json_object_get(json_cell_at(root, "Shake-Shake Image", "26 2x32d"), "runs");
    assert_string_equal(json_string_value(json_object_get(json_array_get(runs, 0), "hardware")),
                        h200);
    runs = json_object_get(json_cell_at(root, "Shake-Shake Image", "26 2x64d"), "runs");
    assert_null(json_object_get(json_array_get(runs, 2), "hardware"));
    json_decref(root);

    for (int k = 0; k < 3; k++)
        a[k].hardware = b[k].hardware = NULL;
    s = render(&in, REPORT_TEXT);
    assert_lacks(s, "computed on");
    free(s);
}

static void test_versions_default(void **state)
{
    (void)state;
    Versions v;
    versions_init(&v);
    char *s = render(&v.in, REPORT_TEXT);
    char *header = line_at(s, " ", 0);
    int ca = column_of(header, "A"), cb = column_of(header, "B"), cc = column_of(header, "C");
    free(header);
    expect_at(s, "r ", 0, "3.60 ± 0.10 (n=3)", ca);
    expect_at(s, "r ", 0, "5.10 ± 0.14 (n=2)", cb);
    expect_at(s, "r ", 0, "—", cc);
    expect_at(s, "r ", 1, "0/3 done, 1 pending", cc);
    expect_at(s, "r ", 1, "code 0123abcd", cb);     /* B is not on the main version */
    assert_lacks(s, "9.10");
    assert_contains(s, "results from 2 code versions: abc1234 (2 cells), 0123abcd (1 cell)");
    assert_contains(s, "cell A: 2 runs of other code 0123abcd not shown (2 done)");
    assert_contains(s, "cell B: 1 run of other code abc1234 not shown (1 running)");
    assert_contains(s, "cell C: 1 run of other code 0123abcd not shown (1 running)");
    free(s);

    json_t *root = render_json(&v.in);
    assert_int_equal(json_array_size(json_object_get(root, "code_versions")), 2);
    json_t *c = json_cell_at(root, "r", "A");
    assert_string_equal(json_string_value(json_object_get(c, "code")), "abc1234");
    assert_int_equal(json_integer_value(json_object_get(c, "not_shown")), 2);
    size_t i;
    json_t *r;
    json_array_foreach(json_object_get(c, "runs"), i, r)
        assert_string_equal(json_string_value(json_object_get(r, "code")), "abc1234");
    assert_int_equal(json_array_size(json_object_get(c, "runs")), 3);
    assert_contains(json_string_value(json_array_get(json_object_get(root, "notes"), 0)),
                    "results from 2 code versions");
    json_decref(root);
}

static void test_versions_selected(void **state)
{
    (void)state;
    Versions v;
    versions_init(&v);
    v.in.code = "0123";
    char *s = render(&v.in, REPORT_TEXT);
    char *header = line_at(s, " ", 0);
    int ca = column_of(header, "A"), cb = column_of(header, "B"), cc = column_of(header, "C");
    free(header);
    expect_at(s, "r ", 0, "9.10 ± 0.14 (n=2)", ca);
    expect_at(s, "r ", 0, "5.10 ± 0.14 (n=2)", cb);
    expect_at(s, "r ", 1, "0/3 done, 1 running", cc);
    assert_lacks(s, "3.60");
    assert_lacks(s, "code versions");
    assert_contains(s, "showing only code 0123");
    assert_contains(s, "cell A: 3 runs of other code abc1234 not shown (3 done)");
    free(s);

    /* a prefix matching two versions still shows one of them */
    ReportRun d[3] = {run_of(1, 0, RUN_DONE, 3.0, "abc1234", 100),
                      run_of(2, 1, RUN_DONE, 3.2, "abc1234+dirty", 200),
                      run_of(3, 0, RUN_DONE, 7.0, "def5678", 300)};
    ReportCell cd = cell_of("cell D", "r", "A", 0, 1, d, 3);
    ReportInput in = {"v", "prefix", 1, 3, v.in.rows, VCOLS, 1, &cd, "abc"};
    s = render(&in, REPORT_TEXT);
    assert_contains(s, "3.20 (n=1)");
    assert_contains(s, "1 run of other code abc1234 not shown");
    assert_contains(s, "1 run of other code def5678 not shown");
    free(s);

    /* a version no run has */
    v.in.code = "ffff";
    s = render(&v.in, REPORT_TEXT);
    assert_contains(s, "no runs of code ffff");
    assert_contains(s, "showing only code ffff (no run has it)");
    assert_lacks(s, "(n=");
    free(s);
}

/* An empty cell, a blank position, a cell outside the layout, a duplicate. */
static void test_empty_and_misplaced(void **state)
{
    (void)state;
    ReportRun done[1] = {run_of(5, 0, RUN_DONE, 3.55, "abc1234", 10)};
    ReportCell cells[4] = {cell_of("empty", ROWS[0], COLS[0], 4.27, 3, NULL, 0),
                           cell_of("one", ROWS[1], COLS[1], 0, 1, done, 1),
                           cell_of("stray", "Nonexistent", COLS[0], 0, 1, done, 1),
                           cell_of("twin", ROWS[1], COLS[1], 0, 1, done, 1)};
    ReportInput in = {"t", NULL, 2, 2, ROWS, COLS, 4, cells, NULL};
    char *s = render(&in, REPORT_TEXT);
    char *header = line_at(s, " ", 0);
    int c32 = column_of(header, "26 2x32d");
    free(header);
    expect_at(s, "Even-Even n/a", 0, "—", c32);
    expect_at(s, "Even-Even n/a", 1, "paper 4.27", c32);
    expect_at(s, "Even-Even n/a", 2, "no runs", c32);
    /* the blank position (Even-Even x 2x64d) leaves nothing after the first cell */
    char *line = line_at(s, "Even-Even n/a", 0);
    assert_int_equal(column_of(line, "—"), c32);
    assert_int_equal((int)strlen(line), (int)(strstr(line, "—") - line) + (int)strlen("—"));
    free(line);
    assert_contains(s, "\nnot in the layout:\n");
    assert_contains(s, "  stray [Nonexistent, 26 2x32d]: 3.55 (n=1)");
    assert_contains(s, "  twin [Shake-Shake Image, 26 2x64d]: 3.55 (n=1)");
    assert_contains(s, "which the layout does not have");
    free(s);

    s = render(&in, REPORT_MARKDOWN);
    char mc[4][256];
    line = line_at(s, "| Even-Even n/a |", 0);
    assert_int_equal(md_split(line, mc, 4), 3);
    assert_string_equal(mc[1], "—<br>paper 4.27<br>no runs");
    assert_string_equal(mc[2], "");
    free(line);
    assert_contains(s, "- stray: 3.55 (n=1)");
    free(s);

    json_t *root = render_json(&in);
    assert_int_equal(json_array_size(json_object_get(root, "cells")), 4);
    json_t *c = json_cell_at(root, ROWS[0], COLS[0]);
    assert_int_equal(json_integer_value(json_object_get(c, "n")), 0);
    assert_true(json_is_null(json_object_get(c, "mean")));
    assert_true(json_is_null(json_object_get(c, "code")));
    assert_int_equal(json_array_size(json_object_get(c, "runs")), 0);
    assert_true(json_is_null(json_object_get(root, "title")));
    json_decref(root);

    s = render(&in, REPORT_CSV);
    char *f[CSV_MAXREC][CSV_MAXF];
    int nf[CSV_MAXREC];
    int n = csv_parse(s, f, nf);
    assert_int_equal(n, 5);
    assert_string_equal(f[1][3], "empty");
    assert_string_equal(f[1][4], "0");
    assert_string_equal(f[1][6], "");
    assert_string_equal(f[1][10], "4.2700");
    csv_free(f, nf, n);
    free(s);

    /* no layout at all: the cells are the list, with no complaint */
    ReportInput list = {"t", "list", 0, 0, NULL, NULL, 2, cells + 1, NULL};
    s = render(&list, REPORT_TEXT);
    assert_contains(s, "\ncells:\n  one [Shake-Shake Image, 26 2x64d]: 3.55 (n=1)\n");
    assert_lacks(s, "layout");
    free(s);

    /* nothing at all renders in every format */
    ReportInput none = {"t", "nothing", 0, 0, NULL, NULL, 0, NULL, NULL};
    for (int fmt = REPORT_TEXT; fmt <= REPORT_JSON; fmt++)
        free(render(&none, (ReportFormat)fmt));
}

/* ---------- curves ---------- */

static void make_curve(double *c, int n, int seed)
{
    /* 80 % falling to about 4 %, a little different per seed */
    for (int i = 0; i < n; i++)
        c[i] = 4.0 + 76.0 * exp(-i / 5.0) + 0.3 * sin(i * 0.7 + seed);
}

static int file_exists(const char *dir, const char *name, const char *ext)
{
    char path[1200];
    struct stat st;
    snprintf(path, sizeof path, "%s/%s.%s", dir, name, ext);
    return stat(path, &st) == 0 && S_ISREG(st.st_mode) && st.st_size > 0;
}

static void check_png(const char *dir, const char *name)
{
    char path[1200];
    snprintf(path, sizeof path, "%s/%s.png", dir, name);
    cairo_surface_t *img = cairo_image_surface_create_from_png(path);
    if (cairo_surface_status(img) != CAIRO_STATUS_SUCCESS)
        fail_msg("%s: %s", path, cairo_status_to_string(cairo_surface_status(img)));
    assert_int_equal(cairo_image_surface_get_width(img), 640);
    assert_int_equal(cairo_image_surface_get_height(img), 420);
    cairo_surface_flush(img);
    const unsigned char *px = cairo_image_surface_get_data(img);
    const int stride = cairo_image_surface_get_stride(img);
    const uint32_t bg = *(const uint32_t *)px;
    assert_int_equal(bg & 0xFFFFFF, 0xFFFFFF);      /* white corner */
    int differ = 0, colored = 0;
    for (int y = 0; y < 420; y++)
        for (int x = 0; x < 640; x++) {
            uint32_t p = *(const uint32_t *)(px + (size_t)y * stride + 4 * (size_t)x);
            int r = (p >> 16) & 255, g = (p >> 8) & 255, b = p & 255;
            differ += p != bg;
            /* axes, grid and text are grey; only the curves have colour */
            colored += abs(r - g) > 40 || abs(g - b) > 40 || abs(r - b) > 40;
        }
    if (differ < 1000 || colored < 200)
        fail_msg("%s looks blank: %d pixels differ from the background, %d coloured", path,
                 differ, colored);
    cairo_surface_destroy(img);
}

static void test_curves(void **state)
{
    (void)state;
    Table t;
    table_init(&t);
    double curves[4][3][30];
    for (int i = 0; i < 3; i++)     /* the last cell has no per-epoch data */
        for (int k = 0; k < t.cells[i].nruns; k++) {
            make_curve(curves[i][k], 30, 3 * i + k);
            t.runs[i][k].nepochs = 30;
            t.runs[i][k].curve = curves[i][k];
        }
    t.runs[0][2].nepochs = 12;      /* a run still going */
    t.runs[0][2].state = RUN_RUNNING;
    char *tmp = tu_tempdir("report");
    char dir[1024];
    snprintf(dir, sizeof dir, "%s/plots/a", tmp);      /* created, parents too */
    Err e = {{0}};
    if (report_curves(dir, &t.in, &e) != 0)
        fail_msg("report_curves: %s", e.msg);
    static const char *names[4] = {"Even-Even_n_a_26_2x32d", "Even-Even___n_a__26_2x64d",
                                   "Shake-Shake_Image_26_2x32d", "Shake-Shake_Image_26_2x64d"};
    for (int i = 0; i < 3; i++) {
        if (!file_exists(dir, names[i], "svg") || !file_exists(dir, names[i], "png"))
            fail_msg("missing %s/%s.svg or .png", dir, names[i]);
        check_png(dir, names[i]);
        char path[1200];
        snprintf(path, sizeof path, "%s/%s.svg", dir, names[i]);
        char *svg = tu_read_file(path, NULL);
        assert_non_null(svg);
        assert_non_null(strstr(svg, "<svg"));
        free(svg);
    }
    assert_false(file_exists(dir, names[3], "png"));
    assert_false(file_exists(dir, names[3], "svg"));

    /* names that clash once made safe get distinct files; none leaves dir */
    double c1[5] = {50, 30, 20, 15, 12};
    ReportRun r1[1] = {run_of(1, 0, RUN_DONE, 12, "abc", 1)};
    r1[0].nepochs = 5;
    r1[0].curve = c1;
    ReportCell clash[3] = {cell_of("a/b", "x", "y", 0, 1, r1, 1),
                           cell_of("a b", "x", "y", 10, 1, r1, 1),
                           cell_of("../x", "x", "y", 0, 1, r1, 1)};
    ReportInput in = {"c", NULL, 0, 0, NULL, NULL, 3, clash, NULL};
    snprintf(dir, sizeof dir, "%s/clash", tmp);
    if (report_curves(dir, &in, &e) != 0)
        fail_msg("report_curves: %s", e.msg);
    assert_true(file_exists(dir, "a_b", "png"));
    assert_true(file_exists(dir, "a_b_2", "png"));
    assert_true(file_exists(dir, "_._x", "png"));
    check_png(dir, "a_b_2");

    /* a folder that cannot be made: -1 and the path in the message */
    snprintf(dir, sizeof dir, "%s/file", tmp);
    tu_write_file(dir, "x", 1);
    snprintf(dir, sizeof dir, "%s/file/sub", tmp);
    assert_int_equal(report_curves(dir, &in, &e), -1);
    assert_contains(e.msg, tmp);
    assert_contains(e.msg, "/file");
    tu_rmtree(tmp);
    free(tmp);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_stats),
        cmocka_unit_test(test_format_parse),
        cmocka_unit_test(test_text),
        cmocka_unit_test(test_markdown),
        cmocka_unit_test(test_csv),
        cmocka_unit_test(test_json),
        cmocka_unit_test(test_partial),
        cmocka_unit_test(test_hardware_note),
        cmocka_unit_test(test_versions_default),
        cmocka_unit_test(test_versions_selected),
        cmocka_unit_test(test_empty_and_misplaced),
        cmocka_unit_test(test_curves),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
