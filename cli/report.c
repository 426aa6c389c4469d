/*
 * `sweep report` rendering: every run the store has for each cell becomes a
 * table (text, Markdown, CSV or JSON) and learning-curve plots (SVG, PNG).
 *
 * Invariants: a cell's statistics never mix code versions. Each cell shows
 * the runs of exactly one version (in->code picks it by prefix, else the
 * cell's most recent one); every run left out is counted in a note, and a
 * report whose cells come from several versions says so in its header.
 * Statistics use only done runs with a finite result. Numbers meant for
 * people are percent with 2 decimals, like the paper; CSV and JSON keep more.
 * Nothing here exits or prints outside `out`: failures return -1 and a
 * message in Err.
 */
#define _GNU_SOURCE
#include "report.h"

#include <cairo-svg.h>
#include <cairo.h>
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

/* ---------- small strings ---------- */

typedef struct {
    char **s;
    int n, cap;
} StrList;

/* Notes are one line each: control characters (a reason may carry a whole
 * stderr tail) become spaces. */
static int strlist_addf(StrList *l, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int strlist_addf(StrList *l, const char *fmt, ...)
{
    if (l->n == l->cap) {
        int cap = l->cap ? 2 * l->cap : 4;
        char **s = realloc(l->s, (size_t)cap * sizeof *s);
        if (!s)
            return -1;
        l->s = s;
        l->cap = cap;
    }
    va_list ap;
    va_start(ap, fmt);
    int rc = vasprintf(&l->s[l->n], fmt, ap);
    va_end(ap);
    if (rc < 0)
        return -1;
    for (char *p = l->s[l->n]; *p; p++)
        if ((unsigned char)*p < 0x20 || *p == 0x7f)
            *p = ' ';
    l->n++;
    return 0;
}

static void strlist_free(StrList *l)
{
    for (int i = 0; i < l->n; i++)
        free(l->s[i]);
    free(l->s);
}

/* A growing string; `oom` sticks once an allocation fails. */
typedef struct {
    char *s;
    size_t len, cap;
    int oom;
} Buf;

static void buf_add(Buf *b, const char *s, size_t n)
{
    if (b->oom)
        return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 128;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *p = realloc(b->s, cap);
        if (!p) {
            b->oom = 1;
            return;
        }
        b->s = p;
        b->cap = cap;
    }
    memcpy(b->s + b->len, s, n);
    b->len += n;
    b->s[b->len] = '\0';
}

static void buf_addf(Buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void buf_addf(Buf *b, const char *fmt, ...)
{
    char tmp[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n < 0) {
        b->oom = 1;
        return;
    }
    if ((size_t)n < sizeof tmp) {
        buf_add(b, tmp, (size_t)n);
        return;
    }
    char *big = NULL;
    va_start(ap, fmt);
    n = vasprintf(&big, fmt, ap);
    va_end(ap);
    if (n < 0) {
        b->oom = 1;
        return;
    }
    buf_add(b, big, (size_t)n);
    free(big);
}

static void buf_spaces(Buf *b, int n)
{
    for (; n > 0; n--)
        buf_add(b, " ", 1);
}

/* Terminal columns of UTF-8 text: one per code point ("±" and "—" are one
 * column but two and three bytes). */
static int text_width(const char *s)
{
    int w = 0;
    for (; *s; s++)
        w += ((unsigned char)*s & 0xC0) != 0x80;
    return w;
}

static const char *plural(int n)
{
    return n == 1 ? "" : "s";
}

static const char *or_empty(const char *s)
{
    return s ? s : "";
}

/* Rounded to the hundredth the way it is shown, so that the difference to
 * the reference agrees with the two numbers printed beside it. */
static double hundredths(double x)
{
    double r = round(x * 100.0) / 100.0;
    return fabs(r) < 0.005 ? 0.0 : r;   /* no "-0.00" */
}

/* ---------- statistics ---------- */

void report_stats(const double *x, int n, double *mean, double *sd)
{
    double m = 0.0, ss = 0.0;
    /* two passes: no cancellation when the values sit far from zero */
    for (int i = 0; i < n; i++)
        m += x[i];
    m = n > 0 ? m / n : 0.0;
    for (int i = 0; i < n; i++)
        ss += (x[i] - m) * (x[i] - m);
    *mean = m;
    *sd = n > 1 ? sqrt(ss / (n - 1)) : 0.0;
}

int report_format_parse(const char *name)
{
    static const char *const names[] = {"text", "markdown", "csv", "json"};
    for (int i = 0; name && i < 4; i++)
        if (strcmp(name, names[i]) == 0)
            return i;
    return -1;
}

/* ---------- selection: what each cell shows ---------- */

typedef struct {
    const ReportCell *cell;
    int row, col;               /* layout position; -1 when the label is not in the layout */
    const char *code;           /* the version shown; NULL when no run is shown */
    int nshown;
    int *shown;                 /* (nshown) indices into cell->runs, by repeat then id */
    int nleft;                  /* runs of other versions, not shown */
    int count[RUN_NSTATES];     /* shown runs by state */
    int n;                      /* shown done runs with a finite result */
    double mean, sd, min, max;
    StrList notes;
} CellView;

typedef struct {
    const char *code;
    int cells;
} Version;

typedef struct {
    const ReportInput *in;
    CellView *cells;            /* (ncells) */
    int *grid;                  /* (nrows, ncols): index into cells, -1 for a blank position */
    int *outside;               /* (noutside) cells with no place of their own in the layout */
    int noutside;
    Version *versions;          /* versions shown, most cells first */
    int nversions;
    int *idx;                   /* backing store of every cell's `shown` */
    double *scratch;            /* one cell's results */
    StrList notes;              /* about the whole report */
} Report;

static int label_index(char *const *labels, int n, const char *label)
{
    for (int i = 0; label && i < n; i++)
        if (labels[i] && strcmp(labels[i], label) == 0)
            return i;
    return -1;
}

static int code_matches(const ReportRun *r, const char *want)
{
    return !want || strncmp(r->code, want, strlen(want)) == 0;
}

/* The version a cell shows: among the runs matching `want`, that of the done
 * run that ended last, else that of the newest run. */
static const char *cell_version(const ReportCell *c, const char *want)
{
    const ReportRun *done = NULL, *latest = NULL;
    for (int i = 0; i < c->nruns; i++) {
        const ReportRun *r = &c->runs[i];
        if (!code_matches(r, want))
            continue;
        if (r->state == RUN_DONE &&
            (!done || r->ended > done->ended || (r->ended == done->ended && r->id > done->id)))
            done = r;
        if (!latest || r->id > latest->id)
            latest = r;
    }
    return done ? done->code : latest ? latest->code : NULL;
}

static int run_before(const ReportRun *a, const ReportRun *b)
{
    return a->repeat != b->repeat ? a->repeat < b->repeat : a->id < b->id;
}

static void states_text(Buf *b, const int *count)
{
    const char *sep = "";
    for (int s = 0; s < RUN_NSTATES; s++)
        if (count[s]) {
            buf_addf(b, "%s%d %s", sep, count[s], run_state_name((RunState)s));
            sep = ", ";
        }
}

static int valid_state(RunState s)
{
    return (unsigned)s < RUN_NSTATES;
}

/* Notes on runs left out, one per other version, in order of appearance. */
static int note_left_out(CellView *v)
{
    const ReportCell *c = v->cell;
    for (int i = 0; i < c->nruns; i++) {
        const char *code = c->runs[i].code;
        if (v->code && strcmp(code, v->code) == 0)
            continue;
        int seen = 0;
        for (int j = 0; j < i && !seen; j++)
            seen = strcmp(c->runs[j].code, code) == 0;
        if (seen)
            continue;
        int count[RUN_NSTATES] = {0}, k = 0;
        for (int j = i; j < c->nruns; j++)
            if (strcmp(c->runs[j].code, code) == 0) {
                k++;
                if (valid_state(c->runs[j].state))
                    count[c->runs[j].state]++;
            }
        Buf b = {0};
        states_text(&b, count);
        int rc = strlist_addf(&v->notes, "%d run%s of other code %s not shown (%s)", k, plural(k),
                              code[0] ? code : "(unknown)", b.s ? b.s : "");
        free(b.s);
        if (rc || b.oom)
            return -1;
    }
    return 0;
}

static int note_runs(CellView *v)
{
    for (int k = 0; k < v->nshown; k++) {
        const ReportRun *r = &v->cell->runs[v->shown[k]];
        int rc = 0;
        if (r->state == RUN_FAILED)
            rc = strlist_addf(&v->notes, "run %lld failed: %s", (long long)r->id,
                              r->failure && r->failure[0] ? r->failure : "(no reason recorded)");
        else if (r->state == RUN_DONE && !r->has_result)
            rc = strlist_addf(&v->notes, "run %lld is done but has no result", (long long)r->id);
        else if (r->state == RUN_DONE && !isfinite(r->test_err))
            rc = strlist_addf(&v->notes, "run %lld has a non-finite test error (%g), left out",
                              (long long)r->id, r->test_err);
        else if (!valid_state(r->state))
            rc = strlist_addf(&v->notes, "run %lld has an unknown state %d", (long long)r->id,
                              (int)r->state);
        if (rc)
            return -1;
    }
    return 0;
}

static void cell_select(CellView *v, const ReportCell *c, const char *want, int *idx, double *x)
{
    v->cell = c;
    v->code = cell_version(c, want);
    v->shown = idx;
    for (int i = 0; i < c->nruns; i++) {
        if (!v->code || strcmp(c->runs[i].code, v->code) != 0) {
            v->nleft++;
            continue;
        }
        int k = v->nshown++;
        for (; k > 0 && run_before(&c->runs[i], &c->runs[v->shown[k - 1]]); k--)
            v->shown[k] = v->shown[k - 1];
        v->shown[k] = i;
    }
    for (int k = 0; k < v->nshown; k++) {
        const ReportRun *r = &c->runs[v->shown[k]];
        if (valid_state(r->state))
            v->count[r->state]++;
        if (r->state == RUN_DONE && r->has_result && isfinite(r->test_err))
            x[v->n++] = r->test_err;
    }
    report_stats(x, v->n, &v->mean, &v->sd);
    v->min = v->max = v->n ? x[0] : 0.0;
    for (int i = 1; i < v->n; i++) {
        v->min = fmin(v->min, x[i]);
        v->max = fmax(v->max, x[i]);
    }
}

static int check_input(const ReportInput *in, Err *e)
{
    if (!in)
        return err_set(e, "report: no input");
    if (in->ncells < 0 || (in->ncells > 0 && !in->cells))
        return err_set(e, "report: %d cells but no cell array", in->ncells);
    if (in->nrows < 0 || in->ncols < 0 || (in->nrows > 0 && !in->rows) ||
        (in->ncols > 0 && !in->cols))
        return err_set(e, "report: layout of %d x %d without its labels", in->nrows, in->ncols);
    for (int i = 0; i < in->ncells; i++)
        if (in->cells[i].nruns < 0 || (in->cells[i].nruns > 0 && !in->cells[i].runs))
            return err_set(e, "report: cell %d (%s) has %d runs but no run array", i,
                           or_empty(in->cells[i].label), in->cells[i].nruns);
    return 0;
}

static void report_free(Report *R)
{
    for (int i = 0; R->cells && i < R->in->ncells; i++)
        strlist_free(&R->cells[i].notes);
    strlist_free(&R->notes);
    free(R->cells);
    free(R->grid);
    free(R->outside);
    free(R->versions);
    free(R->idx);
    free(R->scratch);
}

static int versions_note(Report *R)
{
    Buf b = {0};
    buf_addf(&b, "results from %d code versions:", R->nversions);
    for (int i = 0; i < R->nversions; i++)
        buf_addf(&b, "%s %s (%d cell%s)", i ? "," : "",
                 R->versions[i].code[0] ? R->versions[i].code : "(unknown)", R->versions[i].cells,
                 plural(R->versions[i].cells));
    int rc = b.oom ? -1 : strlist_addf(&R->notes, "%s", b.s);
    free(b.s);
    return rc;
}

/* What the shown runs with a result computed on, most runs first: one
 * note, where any run says (a paper names its hardware). */
static int hardware_note(Report *R)
{
    const char **hw = NULL;
    int *count = NULL, n = 0, total = 0, rc = 0;
    for (int i = 0; i < R->in->ncells; i++)
        total += R->cells[i].nshown;
    hw = malloc(((size_t)total + 1) * sizeof *hw);
    count = calloc((size_t)total + 1, sizeof *count);
    if (!hw || !count) {
        rc = -1;
        goto done;
    }
    for (int i = 0; i < R->in->ncells; i++) {
        const CellView *v = &R->cells[i];
        for (int k = 0; k < v->nshown; k++) {
            const ReportRun *r = &v->cell->runs[v->shown[k]];
            if (!r->has_result || !r->hardware || !r->hardware[0])
                continue;
            int j = 0;
            while (j < n && strcmp(hw[j], r->hardware) != 0)
                j++;
            if (j == n)
                hw[n++] = r->hardware;
            count[j]++;
        }
    }
    /* most runs first; stable */
    for (int i = 1; i < n; i++)
        for (int k = i; k > 0 && count[k] > count[k - 1]; k--) {
            const char *t = hw[k];
            int c = count[k];
            hw[k] = hw[k - 1];
            count[k] = count[k - 1];
            hw[k - 1] = t;
            count[k - 1] = c;
        }
    if (n) {
        Buf b = {0};
        buf_addf(&b, "computed on");
        for (int i = 0; i < n; i++)
            buf_addf(&b, "%s %s (%d run%s)", i ? ";" : "", hw[i], count[i], plural(count[i]));
        rc = b.oom ? -1 : strlist_addf(&R->notes, "%s", b.s);
        free(b.s);
    }
done:
    free(hw);
    free(count);
    return rc;
}

static int report_build(Report *R, const ReportInput *in, Err *e)
{
    memset(R, 0, sizeof *R);
    R->in = in;
    if (check_input(in, e))
        return -1;
    size_t total = 0, most = 0;
    for (int i = 0; i < in->ncells; i++) {
        total += (size_t)in->cells[i].nruns;
        if ((size_t)in->cells[i].nruns > most)
            most = (size_t)in->cells[i].nruns;
    }
    size_t ngrid = (size_t)in->nrows * (size_t)in->ncols;
    R->cells = calloc((size_t)in->ncells + 1, sizeof *R->cells);
    R->grid = malloc((ngrid + 1) * sizeof *R->grid);
    R->outside = malloc(((size_t)in->ncells + 1) * sizeof *R->outside);
    R->versions = calloc((size_t)in->ncells + 1, sizeof *R->versions);
    R->idx = malloc((total + 1) * sizeof *R->idx);
    R->scratch = malloc((most + 1) * sizeof *R->scratch);
    if (!R->cells || !R->grid || !R->outside || !R->versions || !R->idx || !R->scratch)
        goto oom;
    for (size_t g = 0; g < ngrid; g++)
        R->grid[g] = -1;

    int *idx = R->idx;
    for (int i = 0; i < in->ncells; i++) {
        const ReportCell *c = &in->cells[i];
        CellView *v = &R->cells[i];
        cell_select(v, c, in->code, idx, R->scratch);
        idx += c->nruns;
        v->row = label_index(in->rows, in->nrows, c->row);
        v->col = label_index(in->cols, in->ncols, c->col);
        if (v->row >= 0 && v->col >= 0 && R->grid[v->row * in->ncols + v->col] < 0) {
            R->grid[v->row * in->ncols + v->col] = i;
        } else {
            R->outside[R->noutside++] = i;
            int rc;
            if (in->nrows == 0 || in->ncols == 0)
                rc = 0;     /* no layout: the list of cells is the report */
            else if (v->row >= 0 && v->col >= 0)
                rc = strlist_addf(&R->notes, "cell \"%s\" has the same place (%s, %s) as cell \"%s\"",
                                  or_empty(c->label), c->row, c->col,
                                  or_empty(in->cells[R->grid[v->row * in->ncols + v->col]].label));
            else
                rc = strlist_addf(&R->notes, "cell \"%s\" is at row \"%s\", column \"%s\", "
                                  "which the layout does not have", or_empty(c->label),
                                  c->row ? c->row : "(none)", c->col ? c->col : "(none)");
            if (rc)
                goto oom;
        }
        if (note_left_out(v) || note_runs(v))
            goto oom;
        if (v->code) {
            int k = 0;
            while (k < R->nversions && strcmp(R->versions[k].code, v->code) != 0)
                k++;
            if (k == R->nversions)
                R->versions[R->nversions++] = (Version){v->code, 0};
            R->versions[k].cells++;
        }
    }
    /* most cells first; stable, so ties keep their order of appearance */
    for (int i = 1; i < R->nversions; i++)
        for (int k = i; k > 0 && R->versions[k].cells > R->versions[k - 1].cells; k--) {
            Version t = R->versions[k];
            R->versions[k] = R->versions[k - 1];
            R->versions[k - 1] = t;
        }
    if (in->code && strlist_addf(&R->notes, "showing only code %s%s", in->code,
                                 R->nversions ? "" : " (no run has it)"))
        goto oom;
    if (R->nversions > 1 && versions_note(R))
        goto oom;
    if (hardware_note(R))
        goto oom;
    return 0;
oom:
    report_free(R);
    return err_set(e, "report: out of memory");
}

/* ---------- a cell as text ---------- */

enum { CELL_MAXLINES = 4, CELL_LINE = 192 };

typedef struct {
    char line[CELL_MAXLINES][CELL_LINE];
    int n;
} CellText;

static void cell_value(const CellView *v, char *buf, size_t cap)
{
    if (v->n >= 2)
        snprintf(buf, cap, "%.2f ± %.2f (n=%d)", hundredths(v->mean), hundredths(v->sd), v->n);
    else if (v->n == 1)
        snprintf(buf, cap, "%.2f (n=1)", hundredths(v->mean));
    else
        snprintf(buf, cap, "—");
}

/* "2/3 done, 1 failed"; empty (and 0 returned) for a cell with all its runs done. */
static int cell_status(const Report *R, const CellView *v, char *buf, size_t cap)
{
    const int *k = v->count;
    const int planned = v->cell->repeats;
    buf[0] = '\0';
    if (v->nshown == 0) {
        if (v->nleft > 0 && R->in->code)
            snprintf(buf, cap, "no runs of code %s", R->in->code);
        else
            snprintf(buf, cap, "no runs");
        return 1;
    }
    if (k[RUN_DONE] >= planned && k[RUN_DONE] == v->nshown)
        return 0;
    Buf b = {0};
    if (planned > 0)
        buf_addf(&b, "%d/%d done", k[RUN_DONE], planned);
    else
        buf_addf(&b, "%d done", k[RUN_DONE]);
    static const RunState order[] = {RUN_FAILED, RUN_RUNNING, RUN_INTERRUPTED, RUN_PENDING};
    for (int i = 0; i < 4; i++)
        if (k[order[i]])
            buf_addf(&b, ", %d %s", k[order[i]], run_state_name(order[i]));
    snprintf(buf, cap, "%s", b.s ? b.s : "");
    free(b.s);
    return 1;
}

static void cell_text(const Report *R, const CellView *v, CellText *t)
{
    const ReportCell *c = v->cell;
    t->n = 0;
    cell_value(v, t->line[t->n++], CELL_LINE);
    if (c->has_ref) {
        if (v->n > 0)
            snprintf(t->line[t->n++], CELL_LINE, "paper %.2f (%+.2f)", hundredths(c->ref),
                     hundredths(hundredths(v->mean) - hundredths(c->ref)));
        else
            snprintf(t->line[t->n++], CELL_LINE, "paper %.2f", hundredths(c->ref));
    }
    if (cell_status(R, v, t->line[t->n], CELL_LINE))
        t->n++;
    /* name the version where it is not the one most cells show */
    if (R->nversions > 1 && v->code && strcmp(v->code, R->versions[0].code) != 0)
        snprintf(t->line[t->n++], CELL_LINE, "code %s", v->code[0] ? v->code : "(unknown)");
}

static const char *report_title(const ReportInput *in)
{
    if (in->title && in->title[0])
        return in->title;
    return in->sweep_id && in->sweep_id[0] ? in->sweep_id : "sweep report";
}

static const char LEGEND[] =
    "mean ± sample sd of the last epoch's test error (%) over n finished seeds; "
    "paper = reference (difference)";

/* ---------- text ---------- */

static void line_out(FILE *out, Buf *b)
{
    while (b->len > 0 && b->s[b->len - 1] == ' ')
        b->s[--b->len] = '\0';
    fprintf(out, "%s\n", b->s ? b->s : "");
    b->len = 0;
    if (b->s)
        b->s[0] = '\0';
}

static void pad_to(Buf *b, const char *s, int width)
{
    buf_add(b, s, strlen(s));
    buf_spaces(b, width - text_width(s));
}

static int render_text(FILE *out, const Report *R, Err *e)
{
    const ReportInput *in = R->in;
    const int nr = in->nrows, nc = in->ncols;
    const char *gap = "   ";
    CellText *texts = calloc((size_t)in->ncells + 1, sizeof *texts);
    int *colw = calloc((size_t)nc + 1, sizeof *colw);
    if (!texts || !colw) {
        free(texts);
        free(colw);
        return err_set(e, "report: out of memory");
    }
    for (int i = 0; i < in->ncells; i++)
        cell_text(R, &R->cells[i], &texts[i]);

    fprintf(out, "%s\n", report_title(in));
    if (in->sweep_id && in->sweep_id[0] && strcmp(in->sweep_id, report_title(in)) != 0)
        fprintf(out, "sweep %s\n", in->sweep_id);
    for (int i = 0; i < R->notes.n; i++)
        fprintf(out, "note: %s\n", R->notes.s[i]);

    int roww = 0, tall = 0;
    for (int r = 0; r < nr; r++)
        roww = roww > text_width(or_empty(in->rows[r])) ? roww : text_width(or_empty(in->rows[r]));
    for (int c = 0; c < nc; c++) {
        colw[c] = text_width(or_empty(in->cols[c]));
        for (int r = 0; r < nr; r++) {
            int g = R->grid[r * nc + c];
            for (int l = 0; g >= 0 && l < texts[g].n; l++)
                colw[c] = colw[c] > text_width(texts[g].line[l]) ? colw[c]
                                                                 : text_width(texts[g].line[l]);
            if (g >= 0 && texts[g].n > 1)
                tall = 1;
        }
    }

    Buf b = {0};
    if (nr > 0 && nc > 0) {
        fprintf(out, "\n");
        buf_spaces(&b, roww);
        for (int c = 0; c < nc; c++) {
            buf_addf(&b, "%s", gap);
            pad_to(&b, or_empty(in->cols[c]), colw[c]);
        }
        line_out(out, &b);
        for (int i = 0; i < roww; i++)
            buf_add(&b, "-", 1);
        for (int c = 0; c < nc; c++) {
            buf_addf(&b, "%s", gap);
            for (int i = 0; i < colw[c]; i++)
                buf_add(&b, "-", 1);
        }
        line_out(out, &b);
        for (int r = 0; r < nr; r++) {
            int lines = 1;
            for (int c = 0; c < nc; c++) {
                int g = R->grid[r * nc + c];
                if (g >= 0 && texts[g].n > lines)
                    lines = texts[g].n;
            }
            if (tall && r > 0)
                fprintf(out, "\n");
            for (int l = 0; l < lines; l++) {
                pad_to(&b, l == 0 ? or_empty(in->rows[r]) : "", roww);
                for (int c = 0; c < nc; c++) {
                    int g = R->grid[r * nc + c];
                    buf_addf(&b, "%s", gap);
                    pad_to(&b, g >= 0 && l < texts[g].n ? texts[g].line[l] : "", colw[c]);
                }
                line_out(out, &b);
            }
        }
    }
    if (R->noutside > 0) {
        fprintf(out, "\n%s\n", nr > 0 && nc > 0 ? "not in the layout:" : "cells:");
        for (int k = 0; k < R->noutside; k++) {
            int i = R->outside[k];
            buf_addf(&b, "  %s [%s, %s]:", or_empty(in->cells[i].label),
                     in->cells[i].row ? in->cells[i].row : "-",
                     in->cells[i].col ? in->cells[i].col : "-");
            for (int l = 0; l < texts[i].n; l++)
                buf_addf(&b, "%s %s", l ? ";" : "", texts[i].line[l]);
            line_out(out, &b);
        }
    }
    fprintf(out, "\n%s\n", LEGEND);
    int nnotes = 0;
    for (int i = 0; i < in->ncells; i++)
        for (int k = 0; k < R->cells[i].notes.n; k++)
            fprintf(out, "%s  %s: %s\n", nnotes++ ? "" : "\nnotes:\n", or_empty(in->cells[i].label),
                    R->cells[i].notes.s[k]);
    int oom = b.oom;
    free(b.s);
    free(texts);
    free(colw);
    return oom ? err_set(e, "report: out of memory") : 0;
}

/* ---------- Markdown ---------- */

static void md_text(FILE *out, const char *s)
{
    for (; *s; s++) {
        if (*s == '|')
            fputs("\\|", out);
        else if (*s == '\n' || *s == '\r')
            fputc(' ', out);
        else
            fputc(*s, out);
    }
}

static void md_cell(FILE *out, const CellText *t)
{
    for (int l = 0; l < t->n; l++) {
        if (l)
            fputs("<br>", out);
        md_text(out, t->line[l]);
    }
}

static int render_markdown(FILE *out, const Report *R, Err *e)
{
    const ReportInput *in = R->in;
    const int nr = in->nrows, nc = in->ncols;
    CellText t;
    fputs("### ", out);
    md_text(out, report_title(in));
    fputs("\n\n", out);
    if (in->sweep_id && in->sweep_id[0] && strcmp(in->sweep_id, report_title(in)) != 0) {
        fputs("sweep ", out);
        md_text(out, in->sweep_id);
        fputs("\n\n", out);
    }
    for (int i = 0; i < R->notes.n; i++) {
        fputs("> **Note:** ", out);
        md_text(out, R->notes.s[i]);
        fputs("\n>\n", out);
    }
    if (R->notes.n)
        fputs("\n", out);
    if (nr > 0 && nc > 0) {
        fputs("| |", out);
        for (int c = 0; c < nc; c++) {
            fputc(' ', out);
            md_text(out, or_empty(in->cols[c]));
            fputs(" |", out);
        }
        fputs("\n|---|", out);
        for (int c = 0; c < nc; c++)
            fputs("---|", out);
        fputc('\n', out);
        for (int r = 0; r < nr; r++) {
            fputs("| ", out);
            md_text(out, or_empty(in->rows[r]));
            fputs(" |", out);
            for (int c = 0; c < nc; c++) {
                int g = R->grid[r * nc + c];
                fputc(' ', out);
                if (g >= 0) {
                    cell_text(R, &R->cells[g], &t);
                    md_cell(out, &t);
                }
                fputs(" |", out);
            }
            fputc('\n', out);
        }
        fputc('\n', out);
    }
    if (R->noutside > 0) {
        fputs(nr > 0 && nc > 0 ? "**Not in the layout**\n\n" : "**Cells**\n\n", out);
        for (int k = 0; k < R->noutside; k++) {
            const CellView *v = &R->cells[R->outside[k]];
            fputs("- ", out);
            md_text(out, or_empty(v->cell->label));
            fputs(": ", out);
            cell_text(R, v, &t);
            md_cell(out, &t);
            fputc('\n', out);
        }
        fputc('\n', out);
    }
    fprintf(out, "%s\n", LEGEND);
    int nnotes = 0;
    for (int i = 0; i < in->ncells; i++)
        for (int k = 0; k < R->cells[i].notes.n; k++) {
            fputs(nnotes++ ? "- " : "\n**Notes**\n\n- ", out);
            md_text(out, or_empty(in->cells[i].label));
            fputs(": ", out);
            md_text(out, R->cells[i].notes.s[k]);
            fputc('\n', out);
        }
    (void)e;
    return 0;
}

/* ---------- CSV ---------- */

/* RFC 4180: a field with a comma, quote or line break is quoted, quotes doubled. */
static void csv_field(FILE *out, const char *s, int last)
{
    s = or_empty(s);
    if (strpbrk(s, ",\"\r\n")) {
        fputc('"', out);
        for (; *s; s++) {
            if (*s == '"')
                fputc('"', out);
            fputc(*s, out);
        }
        fputc('"', out);
    } else {
        fputs(s, out);
    }
    fputc(last ? '\n' : ',', out);
}

/* Four decimals: below the 0.01 % step of a 10,000-image test set, so nothing is lost. */
static void csv_num(FILE *out, int has, double x)
{
    if (has && isfinite(x))
        fprintf(out, "%.4f", x);
    fputc(',', out);
}

static int render_csv(FILE *out, const Report *R, Err *e)
{
    const ReportInput *in = R->in;
    fputs("sweep,row,col,label,n,planned,mean,sd,min,max,ref,code,"
          "done,failed,running,pending,interrupted,not_shown\n", out);
    for (int i = 0; i < in->ncells; i++) {
        const CellView *v = &R->cells[i];
        const ReportCell *c = v->cell;
        csv_field(out, in->sweep_id, 0);
        csv_field(out, c->row, 0);
        csv_field(out, c->col, 0);
        csv_field(out, c->label, 0);
        fprintf(out, "%d,%d,", v->n, c->repeats);
        csv_num(out, v->n > 0, v->mean);
        csv_num(out, v->n > 1, v->sd);
        csv_num(out, v->n > 0, v->min);
        csv_num(out, v->n > 0, v->max);
        csv_num(out, c->has_ref, c->ref);
        csv_field(out, v->code, 0);
        fprintf(out, "%d,%d,%d,%d,%d,%d\n", v->count[RUN_DONE], v->count[RUN_FAILED],
                v->count[RUN_RUNNING], v->count[RUN_PENDING], v->count[RUN_INTERRUPTED], v->nleft);
    }
    (void)e;
    return 0;
}

/* ---------- JSON ---------- */

/* jansson refuses invalid UTF-8 (a failure reason may be raw stderr bytes):
 * such bytes become '?'. */
static json_t *jstr(const char *s)
{
    if (!s)
        return json_null();
    json_t *j = json_string(s);
    if (j)
        return j;
    char *copy = strdup(s);
    if (!copy)
        return NULL;
    for (char *p = copy; *p; p++)
        if ((unsigned char)*p >= 0x80)
            *p = '?';
    j = json_string(copy);
    free(copy);
    return j;
}

static json_t *jnum(int has, double x)
{
    return has && isfinite(x) ? json_real(x) : json_null();
}

static json_t *jnotes(const StrList *l)
{
    json_t *a = json_array();
    for (int i = 0; a && i < l->n; i++)
        if (json_array_append_new(a, jstr(l->s[i]))) {
            json_decref(a);
            return NULL;
        }
    return a;
}

static json_t *json_run(const ReportRun *r)
{
    json_t *j = json_pack("{s:I, s:i, s:I, s:s, s:o, s:o}", "id", (json_int_t)r->id, "repeat",
                          r->repeat, "seed", (json_int_t)r->seed, "state", run_state_name(r->state),
                          "test_err", jnum(r->has_result, r->test_err), "code", jstr(r->code));
    if (j && ((r->state == RUN_FAILED && json_object_set_new(j, "failure", jstr(r->failure))) ||
              (r->hardware && json_object_set_new(j, "hardware", jstr(r->hardware))))) {
        json_decref(j);
        return NULL;
    }
    return j;
}

static json_t *json_cell(const CellView *v)
{
    const ReportCell *c = v->cell;
    json_t *runs = json_array();
    for (int k = 0; runs && k < v->nshown; k++)
        if (json_array_append_new(runs, json_run(&c->runs[v->shown[k]]))) {
            json_decref(runs);
            runs = NULL;
        }
    if (!runs)
        return NULL;
    return json_pack("{s:o, s:o, s:o, s:i, s:i, s:o, s:o, s:o, s:o, s:o, s:o,"
                     " s:{s:i, s:i, s:i, s:i, s:i}, s:i, s:o, s:o}",
                     "row", jstr(c->row), "col", jstr(c->col), "label", jstr(c->label),
                     "n", v->n, "planned", c->repeats,
                     "mean", jnum(v->n > 0, v->mean), "sd", jnum(v->n > 1, v->sd),
                     "min", jnum(v->n > 0, v->min), "max", jnum(v->n > 0, v->max),
                     "ref", jnum(c->has_ref, c->ref), "code", jstr(v->code),
                     "counts", "done", v->count[RUN_DONE], "failed", v->count[RUN_FAILED],
                     "running", v->count[RUN_RUNNING], "pending", v->count[RUN_PENDING],
                     "interrupted", v->count[RUN_INTERRUPTED],
                     "not_shown", v->nleft, "runs", runs, "notes", jnotes(&v->notes));
}

static int render_json(FILE *out, const Report *R, Err *e)
{
    const ReportInput *in = R->in;
    json_t *versions = json_array(), *cells = json_array();
    for (int i = 0; versions && i < R->nversions; i++)
        if (json_array_append_new(versions, json_pack("{s:o, s:i}", "code",
                                                      jstr(R->versions[i].code), "cells",
                                                      R->versions[i].cells))) {
            json_decref(versions);
            versions = NULL;
        }
    for (int i = 0; cells && i < in->ncells; i++)
        if (json_array_append_new(cells, json_cell(&R->cells[i]))) {
            json_decref(cells);
            cells = NULL;
        }
    if (!versions || !cells) {
        json_decref(versions);
        json_decref(cells);
        return err_set(e, "report: out of memory building JSON");
    }
    json_t *root = json_pack("{s:o, s:o, s:o, s:o, s:o, s:o}", "sweep", jstr(in->sweep_id), "title",
                             jstr(in->title), "selected_code", jstr(in->code), "code_versions",
                             versions, "cells", cells, "notes", jnotes(&R->notes));
    if (!root)
        return err_set(e, "report: out of memory building JSON");
    /* 10 significant digits print 3.6 as 3.6, not 3.6000000000000001 */
    int rc = json_dumpf(root, out, JSON_INDENT(2) | JSON_REAL_PRECISION(10));
    json_decref(root);
    if (rc == 0)
        fputc('\n', out);
    return rc ? err_set(e, "report: writing JSON failed") : 0;
}

int report_render(FILE *out, const ReportInput *in, ReportFormat fmt, Err *e)
{
    if ((unsigned)fmt > REPORT_JSON)
        return err_set(e, "report: unknown format %d", (int)fmt);
    Report R;
    if (report_build(&R, in, e))
        return -1;
    int rc;
    switch (fmt) {
    case REPORT_TEXT: rc = render_text(out, &R, e); break;
    case REPORT_MARKDOWN: rc = render_markdown(out, &R, e); break;
    case REPORT_CSV: rc = render_csv(out, &R, e); break;
    default: rc = render_json(out, &R, e); break;
    }
    report_free(&R);
    if (rc == 0 && (fflush(out) != 0 || ferror(out)))
        rc = err_set(e, "report: writing the report failed: %s", strerror(errno));
    return rc;
}

/* ---------- learning curves ---------- */

enum { PLOT_W = 640, PLOT_H = 420, PLOT_MAXTICKS = 40, NAME_MAX_BASE = 100 };

/* Tableau 10: distinct for the few seeds a cell has. */
static const double PALETTE[10][3] = {
    {0.122, 0.467, 0.706}, {1.000, 0.498, 0.055}, {0.173, 0.627, 0.173}, {0.839, 0.153, 0.157},
    {0.580, 0.404, 0.741}, {0.549, 0.337, 0.294}, {0.890, 0.467, 0.761}, {0.498, 0.498, 0.498},
    {0.737, 0.741, 0.133}, {0.090, 0.745, 0.812}};

typedef struct {
    double lo, hi;
    int log;
    int nticks;
    double ticks[PLOT_MAXTICKS];
} Axis;

static double nice_step(double range, int target)
{
    double raw = range / target;
    double mag = pow(10.0, floor(log10(raw)));
    double f = raw / mag;
    return (f < 1.5 ? 1.0 : f < 3.0 ? 2.0 : f < 7.0 ? 5.0 : 10.0) * mag;
}

static void axis_linear(Axis *a, double lo, double hi, double min_step, int target)
{
    if (hi - lo < 1e-9) {
        lo -= 0.5;
        hi += 0.5;
    }
    double step = fmax(nice_step(hi - lo, target), min_step);
    a->log = 0;
    a->lo = floor(lo / step) * step;
    a->hi = ceil(hi / step) * step;
    if (lo >= 0 && a->lo < 0)
        a->lo = 0;
    a->nticks = 0;
    for (int k = 0; a->nticks < PLOT_MAXTICKS; k++) {
        double t = a->lo + k * step;
        if (t > a->hi + step * 1e-6)
            break;
        a->ticks[a->nticks++] = t;
    }
}

/* Test error falls by one or two orders of magnitude over training: a
 * log axis keeps the last epochs, the ones that matter, readable. */
static void axis_error(Axis *a, double lo, double hi)
{
    if (!(lo > 0) || hi / lo < 8) {
        axis_linear(a, lo, hi, 0.0, 5);
        return;
    }
    static const double fine[4] = {1, 2, 3, 5}, coarse[4] = {1, 2, 5, 0};
    const double *m = log10(hi / lo) <= 2.5 ? fine : coarse;
    const int nm = m == fine ? 4 : 3;
    double dl = pow(10.0, floor(log10(lo))), dh = pow(10.0, floor(log10(hi)));
    a->log = 1;
    a->lo = dl;
    for (int i = nm - 1; i >= 0; i--)
        if (m[i] * dl <= lo) {
            a->lo = m[i] * dl;
            break;
        }
    a->hi = 10 * dh;
    for (int i = 0; i < nm; i++)
        if (m[i] * dh >= hi) {
            a->hi = m[i] * dh;
            break;
        }
    a->nticks = 0;
    for (double d = dl; d <= a->hi * 1.0001 && a->nticks < PLOT_MAXTICKS; d *= 10)
        for (int i = 0; i < nm && a->nticks < PLOT_MAXTICKS; i++)
            if (m[i] * d >= a->lo * 0.9999 && m[i] * d <= a->hi * 1.0001)
                a->ticks[a->nticks++] = m[i] * d;
}

static double axis_map(const Axis *a, double v, double p0, double p1)
{
    double t = a->log ? (log10(v) - log10(a->lo)) / (log10(a->hi) - log10(a->lo))
                      : (v - a->lo) / (a->hi - a->lo);
    return p0 + t * (p1 - p0);
}

static int has_curve(const ReportRun *r)
{
    return r->nepochs > 0 && r->curve;
}

/* Text with its anchor at fraction (ax, ay) of its ink box: (0.5, 0.5) centres it. */
static void text_at(cairo_t *cr, const char *s, double x, double y, double ax, double ay)
{
    cairo_text_extents_t te;
    cairo_text_extents(cr, s, &te);
    cairo_move_to(cr, x - te.x_bearing - ax * te.width, y - te.y_bearing - ay * te.height);
    cairo_show_text(cr, s);
}

static void plot_draw(cairo_t *cr, const CellView *v)
{
    const ReportCell *c = v->cell;
    const double left = 70, right = PLOT_W - 20, top = 58, bottom = PLOT_H - 50;
    /* data inset from the frame, so a line on an axis bound stays visible */
    const double pad = 8, px0 = left + pad, px1 = right - pad, py0 = bottom - pad, py1 = top + pad;
    int nep = 0;
    double lo = INFINITY, hi = -INFINITY;
    for (int k = 0; k < v->nshown; k++) {
        const ReportRun *r = &c->runs[v->shown[k]];
        if (!has_curve(r))
            continue;
        nep = r->nepochs > nep ? r->nepochs : nep;
        for (int i = 0; i < r->nepochs; i++)
            if (isfinite(r->curve[i])) {
                lo = fmin(lo, r->curve[i]);
                hi = fmax(hi, r->curve[i]);
            }
    }
    const int ref = c->has_ref && isfinite(c->ref);
    if (ref) {
        lo = fmin(lo, c->ref);
        hi = fmax(hi, c->ref);
    }
    if (!isfinite(lo)) {
        lo = 0;
        hi = 100;
    }
    Axis ax, ay;
    axis_linear(&ax, 0, nep, 1.0, 6);
    axis_error(&ay, lo, hi);

    cairo_set_source_rgb(cr, 1, 1, 1);
    cairo_paint(cr);
    cairo_select_font_face(cr, "sans-serif", CAIRO_FONT_SLANT_NORMAL, CAIRO_FONT_WEIGHT_NORMAL);
    cairo_set_font_size(cr, 11);
    cairo_set_line_width(cr, 1);
    char s[256];
    for (int i = 0; i < ay.nticks; i++) {
        double y = round(axis_map(&ay, ay.ticks[i], py0, py1)) + 0.5;
        cairo_set_source_rgb(cr, 0.9, 0.9, 0.9);
        cairo_move_to(cr, left, y);
        cairo_line_to(cr, right, y);
        cairo_stroke(cr);
        cairo_set_source_rgb(cr, 0.2, 0.2, 0.2);
        snprintf(s, sizeof s, "%g", ay.ticks[i]);
        text_at(cr, s, left - 6, y, 1.0, 0.5);
    }
    for (int i = 0; i < ax.nticks; i++) {
        double x = round(axis_map(&ax, ax.ticks[i], px0, px1)) + 0.5;
        cairo_set_source_rgb(cr, 0.9, 0.9, 0.9);
        cairo_move_to(cr, x, top);
        cairo_line_to(cr, x, bottom);
        cairo_stroke(cr);
        cairo_set_source_rgb(cr, 0.2, 0.2, 0.2);
        snprintf(s, sizeof s, "%g", ax.ticks[i]);
        text_at(cr, s, x, bottom + 6, 0.5, 0.0);
    }
    cairo_set_source_rgb(cr, 0.3, 0.3, 0.3);
    cairo_rectangle(cr, left + 0.5, top + 0.5, right - left - 1, bottom - top - 1);
    cairo_stroke(cr);

    cairo_set_font_size(cr, 12);
    cairo_set_source_rgb(cr, 0, 0, 0);
    text_at(cr, "epoch", (left + right) / 2, PLOT_H - 12, 0.5, 1.0);
    cairo_save(cr);
    cairo_translate(cr, 18, (top + bottom) / 2);
    cairo_rotate(cr, -M_PI / 2);
    text_at(cr, ay.log ? "test error (%, log scale)" : "test error (%)", 0, 0, 0.5, 0.5);
    cairo_restore(cr);

    /* title shrunk to fit rather than cut: the label names the cell */
    cairo_select_font_face(cr, "sans-serif", CAIRO_FONT_SLANT_NORMAL, CAIRO_FONT_WEIGHT_BOLD);
    cairo_set_font_size(cr, 15);
    cairo_text_extents_t te;
    cairo_text_extents(cr, or_empty(c->label), &te);
    if (te.width > PLOT_W - 20)
        cairo_set_font_size(cr, fmax(6.0, 15 * (PLOT_W - 20) / te.width));
    text_at(cr, or_empty(c->label), PLOT_W / 2.0, 24, 0.5, 0.5);
    cairo_select_font_face(cr, "sans-serif", CAIRO_FONT_SLANT_NORMAL, CAIRO_FONT_WEIGHT_NORMAL);
    cairo_set_font_size(cr, 11);
    cairo_set_source_rgb(cr, 0.35, 0.35, 0.35);
    char value[CELL_LINE];
    cell_value(v, value, sizeof value);
    snprintf(s, sizeof s, "final %s, code %s", value, v->code && v->code[0] ? v->code : "(unknown)");
    text_at(cr, s, PLOT_W / 2.0, 44, 0.5, 0.5);

    cairo_save(cr);
    cairo_rectangle(cr, left, top, right - left, bottom - top);
    cairo_clip(cr);
    const double dash[2] = {6, 4};
    if (ref) {
        double y = axis_map(&ay, c->ref, py0, py1);
        cairo_set_source_rgb(cr, 0.25, 0.25, 0.25);
        cairo_set_line_width(cr, 1.2);
        cairo_set_dash(cr, dash, 2, 0);
        cairo_move_to(cr, left, y);
        cairo_line_to(cr, right, y);
        cairo_stroke(cr);
        cairo_set_dash(cr, NULL, 0, 0);
    }
    cairo_set_line_width(cr, 1.6);
    cairo_set_line_join(cr, CAIRO_LINE_JOIN_ROUND);
    int color = 0;
    for (int k = 0; k < v->nshown; k++) {
        const ReportRun *r = &c->runs[v->shown[k]];
        if (!has_curve(r))
            continue;
        const double *rgb = PALETTE[color++ % 10];
        cairo_set_source_rgb(cr, rgb[0], rgb[1], rgb[2]);
        int open = 0;
        for (int i = 0; i < r->nepochs; i++) {
            /* a gap (non-finite value) breaks the line; an isolated point is a dot */
            double y = r->curve[i];
            int ok = isfinite(y) && (!ay.log || y > 0);
            int next = i + 1 < r->nepochs && isfinite(r->curve[i + 1]) &&
                       (!ay.log || r->curve[i + 1] > 0);
            if (!ok) {
                open = 0;
                continue;
            }
            double px = axis_map(&ax, i + 1, px0, px1), py = axis_map(&ay, y, py0, py1);
            if (!open && !next) {
                cairo_new_sub_path(cr);
                cairo_arc(cr, px, py, 2.5, 0, 2 * M_PI);
                cairo_fill(cr);
                continue;
            }
            if (open)
                cairo_line_to(cr, px, py);
            else
                cairo_move_to(cr, px, py);
            open = 1;
        }
        cairo_stroke(cr);
    }
    cairo_restore(cr);

    /* legend in the corner with the fewest data points: top right, where
     * falling error curves leave room, unless the data says otherwise */
    const int maxrows = (int)((bottom - top - 16) / 16);
    int nrows = 0, more = 0;
    double textw = 0;
    for (int k = 0; k < v->nshown; k++)
        if (has_curve(&c->runs[v->shown[k]]))
            nrows++;
    if (nrows + ref > maxrows) {
        more = nrows + ref - (maxrows - 1);
        nrows = maxrows - 1 - ref;
    }
    char (*lines)[64] = calloc((size_t)(nrows + ref + 1), sizeof *lines);
    if (!lines)
        return;     /* the plot stays without its legend; cairo's own status is untouched */
    int nl = 0;
    for (int k = 0; k < v->nshown && nl < nrows; k++) {
        const ReportRun *r = &c->runs[v->shown[k]];
        if (!has_curve(r))
            continue;
        if (r->state == RUN_DONE)
            snprintf(lines[nl++], 64, "seed %lld", (long long)r->seed);
        else
            snprintf(lines[nl++], 64, "seed %lld (%s)", (long long)r->seed,
                     run_state_name(r->state));
    }
    if (ref)
        snprintf(lines[nl++], 64, "paper %.2f", hundredths(c->ref));
    if (more)
        snprintf(lines[nl++], 64, "+%d more", more);
    for (int i = 0; i < nl; i++) {
        cairo_text_extents(cr, lines[i], &te);
        textw = fmax(textw, te.x_advance);
    }
    const double bw = textw + 40, bh = nl * 16 + 8;
    const double corner[4][2] = {{right - bw - 8, top + 8}, {left + 8, bottom - bh - 8},
                                 {left + 8, top + 8}, {right - bw - 8, bottom - bh - 8}};
    double bx = corner[0][0], by = corner[0][1];
    long best = -1;
    for (int k = 0; k < 4; k++) {
        const double x = corner[k][0], y = corner[k][1];
        long hits = 0;
        for (int j = 0; j < v->nshown; j++) {
            const ReportRun *r = &c->runs[v->shown[j]];
            for (int i = 0; has_curve(r) && i < r->nepochs; i++) {
                if (!isfinite(r->curve[i]) || (ay.log && r->curve[i] <= 0))
                    continue;
                double px = axis_map(&ax, i + 1, px0, px1), py = axis_map(&ay, r->curve[i], py0, py1);
                hits += px >= x && px <= x + bw && py >= y && py <= y + bh;
            }
        }
        if (ref) {
            double py = axis_map(&ay, c->ref, py0, py1);
            hits += (py >= y && py <= y + bh) * 10;     /* the line crosses the whole box */
        }
        if (best < 0 || hits < best) {
            best = hits;
            bx = x;
            by = y;
        }
    }
    cairo_set_source_rgba(cr, 1, 1, 1, 0.85);
    cairo_rectangle(cr, bx, by, bw, bh);
    cairo_fill_preserve(cr);
    cairo_set_source_rgb(cr, 0.7, 0.7, 0.7);
    cairo_set_line_width(cr, 1);
    cairo_stroke(cr);
    for (int i = 0; i < nl; i++) {
        double y = by + 12 + 16 * i;
        int is_ref = ref && i == nl - 1 - (more > 0);
        int is_more = more && i == nl - 1;
        if (is_ref) {
            cairo_set_source_rgb(cr, 0.25, 0.25, 0.25);
            cairo_set_dash(cr, dash, 2, 0);
            cairo_set_line_width(cr, 1.2);
        } else if (!is_more) {
            const double *rgb = PALETTE[i % 10];
            cairo_set_source_rgb(cr, rgb[0], rgb[1], rgb[2]);
            cairo_set_line_width(cr, 1.6);
        }
        if (!is_more) {
            cairo_move_to(cr, bx + 6, y);
            cairo_line_to(cr, bx + 28, y);
            cairo_stroke(cr);
            cairo_set_dash(cr, NULL, 0, 0);
        }
        cairo_set_source_rgb(cr, 0, 0, 0);
        text_at(cr, lines[i], bx + 34, y, 0.0, 0.5);
    }
    free(lines);
}

/* [A-Za-z0-9._-] kept, anything else '_'; no leading '.', never empty. */
static void safe_name(char *out, size_t cap, const char *label)
{
    size_t n = 0;
    for (const char *p = or_empty(label); *p && n + 1 < cap && n < NAME_MAX_BASE; p++) {
        char ch = *p;
        int ok = (ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') ||
                 ch == '.' || ch == '_' || ch == '-';
        out[n] = ok && !(n == 0 && ch == '.') ? ch : '_';
        n++;
    }
    out[n] = '\0';
    if (n == 0)
        snprintf(out, cap, "cell");
}

static int write_plot(const char *dir, const char *name, const CellView *v, Err *e)
{
    char *path = NULL;
    int rc = 0;
    if (asprintf(&path, "%s/%s.svg", dir, name) < 0)
        return err_set(e, "curves: out of memory");
    cairo_surface_t *svg = cairo_svg_surface_create(path, PLOT_W, PLOT_H);
    cairo_status_t st = cairo_surface_status(svg);
    if (st == CAIRO_STATUS_SUCCESS) {
        cairo_t *cr = cairo_create(svg);
        plot_draw(cr, v);
        st = cairo_status(cr);
        cairo_destroy(cr);
        cairo_surface_finish(svg);
        if (st == CAIRO_STATUS_SUCCESS)
            st = cairo_surface_status(svg);
    }
    cairo_surface_destroy(svg);
    if (st != CAIRO_STATUS_SUCCESS) {
        rc = err_set(e, "curves: writing %s: %s", path, cairo_status_to_string(st));
        goto done;
    }
    free(path);
    path = NULL;
    if (asprintf(&path, "%s/%s.png", dir, name) < 0) {
        path = NULL;
        rc = err_set(e, "curves: out of memory");
        goto done;
    }
    cairo_surface_t *png = cairo_image_surface_create(CAIRO_FORMAT_ARGB32, PLOT_W, PLOT_H);
    st = cairo_surface_status(png);
    if (st == CAIRO_STATUS_SUCCESS) {
        cairo_t *cr = cairo_create(png);
        plot_draw(cr, v);
        st = cairo_status(cr);
        cairo_destroy(cr);
        if (st == CAIRO_STATUS_SUCCESS)
            st = cairo_surface_write_to_png(png, path);
    }
    cairo_surface_destroy(png);
    if (st != CAIRO_STATUS_SUCCESS)
        rc = err_set(e, "curves: writing %s: %s", path, cairo_status_to_string(st));
done:
    free(path);
    return rc;
}

int report_curves(const char *dir, const ReportInput *in, Err *e)
{
    Report R;
    if (report_build(&R, in, e))
        return -1;
    enum { NAME_CAP = NAME_MAX_BASE + 16 };
    char (*names)[NAME_CAP] = calloc((size_t)in->ncells + 1, sizeof *names);
    int rc = 0;
    if (!names) {
        rc = err_set(e, "curves: out of memory");
        goto done;
    }
    if (!dir || !dir[0] || mkdir_p(dir, e)) {
        if (!dir || !dir[0])
            err_set(e, "curves: no folder given");
        rc = -1;
        goto done;
    }
    /* names over every cell, plotted or not, so a cell's file name does not
     * depend on which others have data yet; compared without case for
     * file systems that ignore it */
    for (int i = 0; i < in->ncells; i++) {
        char base[NAME_MAX_BASE + 1];
        safe_name(base, sizeof base, in->cells[i].label);
        snprintf(names[i], NAME_CAP, "%s", base);
        for (int k = 2, clash = 1; clash; k++) {
            clash = 0;
            for (int j = 0; j < i && !clash; j++)
                clash = strcasecmp(names[j], names[i]) == 0;
            if (clash)
                snprintf(names[i], NAME_CAP, "%s_%d", base, k);
        }
    }
    for (int i = 0; i < in->ncells && rc == 0; i++) {
        const CellView *v = &R.cells[i];
        int plot = 0;
        for (int k = 0; k < v->nshown && !plot; k++)
            plot = has_curve(&v->cell->runs[v->shown[k]]);
        if (plot)
            rc = write_plot(dir, names[i], v, e);
    }
done:
    free(names);
    report_free(&R);
    return rc;
}
