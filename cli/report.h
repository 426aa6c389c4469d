/*
 * `sweep report`: a sweep's table in its layout (rows x columns, e.g. the
 * paper's Table 1), each cell as mean +- standard deviation of the test
 * error over its seeds with the count n, beside the reference value; cells
 * with missing or failed runs marked. Results of different code versions are
 * never averaged together: by default each cell shows the runs of its most
 * recent code version and the report says what it left out; `code` selects
 * one version. Text, Markdown, CSV or JSON; learning curves as SVG and PNG
 * (cairo).
 */
#ifndef SHAKE_REPORT_H
#define SHAKE_REPORT_H

#include <stdint.h>
#include <stdio.h>

#include "runstate.h"
#include "util.h"

typedef struct {
    int64_t id;                 /* run id in the store */
    int repeat;
    int64_t seed;
    RunState state;
    char code[80];              /* code version, e.g. "abc1234" or "abc1234+dirty" */
    double ended;               /* unix time the run finished (0 if not) */
    int has_result;
    double test_err;            /* final test error, percent */
    double test_loss;
    int nepochs;                /* per-epoch test error, percent (for curves) */
    const double *curve;
    const char *failure;        /* reason, for failed runs; may be NULL */
    const char *hardware;       /* what it computed on; may be NULL */
} ReportRun;

typedef struct {
    const char *label;          /* e.g. "Shake-Shake-Image 26 2x32d" */
    const char *row, *col;      /* layout position (labels among the report's rows/cols) */
    int has_ref;
    double ref;                 /* reference error, percent */
    int repeats;                /* planned runs */
    int nruns;
    const ReportRun *runs;      /* every run the store has for the cell, any version */
} ReportCell;

typedef struct {
    const char *sweep_id;       /* e.g. "table1[epochs=30]" */
    const char *title;
    int nrows, ncols;
    char *const *rows;          /* row labels in order */
    char *const *cols;          /* column labels in order */
    int ncells;
    const ReportCell *cells;
    const char *code;           /* only runs of this code version (prefix match); NULL:
                                 * each cell's most recent version */
} ReportInput;

typedef enum { REPORT_TEXT, REPORT_MARKDOWN, REPORT_CSV, REPORT_JSON } ReportFormat;

/* "text", "markdown", "csv", "json"; -1 if unknown. */
int report_format_parse(const char *name);

/* Mean and sample standard deviation (n - 1) of x; sd = 0 when n < 2, mean = 0 when n = 0. */
void report_stats(const double *x, int n, double *mean, double *sd);

/* 0, or -1 with a message (bad input, unknown format, a write error). */
int report_render(FILE *out, const ReportInput *in, ReportFormat fmt, Err *e);

/*
 * One plot per cell in dir (created if missing): test error against epoch,
 * one line per run (seed) of the runs the report shows, as
 * <dir>/<cell label as a file name>.svg and .png. The file name keeps
 * [A-Za-z0-9._-] and turns anything else, and a leading '.', into '_'
 * ("a/b c" -> "a_b_c"); labels that clash get "_2", "_3"... in cell order.
 * Cells without per-epoch data get no file. 0, or -1 with a message naming
 * the path.
 */
int report_curves(const char *dir, const ReportInput *in, Err *e);

#endif
