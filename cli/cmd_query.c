/*
 * The commands that read the results store: `sweep status`, `sweep show`,
 * `sweep report`; and `sweep data fetch`. Reading never loses anything:
 * the one write they make is marking runs whose process is gone as
 * interrupted, which is what they are.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "commands.h"
#include "fetch.h"
#include "report.h"
#include "store.h"

#define STALE_S 600.0

typedef struct {
    const char *db, *sweep, *format, *code, *curves, *dir, *url, *md5;
    const char *args[8];
    int nargs;
} QOpts;

static int parse(QOpts *o, int argc, char **argv, const char *cmd, const char *const *allowed)
{
    memset(o, 0, sizeof *o);
    o->db = DEFAULT_DB;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        const char **slot = NULL;
        if (strcmp(a, "--db") == 0)
            slot = &o->db;
        else if (strcmp(a, "--sweep") == 0)
            slot = &o->sweep;
        else if (strcmp(a, "--format") == 0)
            slot = &o->format;
        else if (strcmp(a, "--commit") == 0)
            slot = &o->code;
        else if (strcmp(a, "--curves") == 0)
            slot = &o->curves;
        else if (strcmp(a, "--dir") == 0)
            slot = &o->dir;
        else if (strcmp(a, "--url") == 0)
            slot = &o->url;
        else if (strcmp(a, "--md5") == 0)
            slot = &o->md5;
        if (slot) {
            int ok = 0;
            for (int k = 0; allowed[k]; k++)
                ok |= strcmp(allowed[k], a) == 0;
            if (!ok) {
                fprintf(stderr, "sweep %s: option %s does not apply here\n", cmd, a);
                return -1;
            }
            if (i + 1 >= argc) {
                fprintf(stderr, "sweep %s: %s needs a value\n", cmd, a);
                return -1;
            }
            *slot = argv[++i];
        } else if (a[0] == '-') {
            fprintf(stderr, "sweep %s: unknown option '%s'\n", cmd, a);
            return -1;
        } else if (o->nargs < 8) {
            o->args[o->nargs++] = a;
        }
    }
    return 0;
}

static int open_existing(Store **st, const char *db, const char *cmd)
{
    Err e = {{0}};
    if (access(db, F_OK) != 0) {
        fprintf(stderr, "sweep %s: no results store at %s (sweep run creates it; --db PATH "
                        "names another)\n", cmd, db);
        return -1;
    }
    if (store_open(st, db, &e)) {
        fprintf(stderr, "sweep %s: %s\n", cmd, e.msg);
        return -1;
    }
    return 0;
}

static void fmt_time(double t, char *buf, size_t len)
{
    if (t <= 0) {
        snprintf(buf, len, "-");
        return;
    }
    time_t s = (time_t)t;
    struct tm tm;
    localtime_r(&s, &tm);
    strftime(buf, len, "%Y-%m-%d %H:%M:%S", &tm);
}

/* The latest run of each (cell, repeat) among runs sorted by cell, repeat, id. */
static int is_latest(const RunRec *runs, int n, int i)
{
    for (int j = i + 1; j < n; j++)
        if (runs[j].cell_id == runs[i].cell_id && runs[j].repeat == runs[i].repeat)
            return 0;
    return 1;
}

/* ---- sweep status --------------------------------------------------------------- */

static void status_one(Store *st, int64_t sweep_id, const char *key)
{
    Err e = {{0}};
    RunRec *runs;
    int n;
    if (store_runs(st, sweep_id, 0, &runs, &n, &e)) {
        fprintf(stderr, "sweep status: %s\n", e.msg);
        return;
    }
    int count[RUN_NSTATES] = {0}, total = 0;
    for (int i = 0; i < n; i++)
        if (is_latest(runs, n, i)) {
            count[runs[i].state]++;
            total++;
        }
    printf("%s: %d runs: %d done, %d running, %d pending, %d interrupted, %d failed\n", key,
           total, count[RUN_DONE], count[RUN_RUNNING], count[RUN_PENDING],
           count[RUN_INTERRUPTED], count[RUN_FAILED]);
    double now = (double)time(NULL);
    for (int i = 0; i < n; i++) {
        RunRec *r = &runs[i];
        if (!is_latest(runs, n, i))
            continue;
        if (r->state == RUN_RUNNING)
            printf("  running     run %lld %s seed %lld: epoch %d/%d, pid %d on %s, heartbeat "
                   "%.0f s ago\n", (long long)r->id, r->label, (long long)r->seed,
                   r->epochs_done, r->epochs_total, r->pid, r->host ? r->host : "?",
                   now - r->heartbeat);
        else if (r->state == RUN_FAILED || r->state == RUN_INTERRUPTED)
            printf("  %-11s run %lld %s seed %lld: epoch %d/%d, %d attempts: %s\n",
                   run_state_name(r->state), (long long)r->id, r->label, (long long)r->seed,
                   r->epochs_done, r->epochs_total, r->attempts,
                   r->failure ? r->failure : "(no reason recorded)");
    }
    run_recs_free(runs, n);
}

int cmd_status(int argc, char **argv)
{
    static const char *const allowed[] = {"--db", "--sweep", NULL};
    QOpts o;
    if (parse(&o, argc, argv, "status", allowed) || o.nargs) {
        fprintf(stderr, "usage: sweep status [--sweep NAME] [--db PATH]\n");
        return EXIT_USAGE;
    }
    Store *st;
    if (open_existing(&st, o.db, "status"))
        return EXIT_USAGE;
    Err e = {{0}};
    int recovered = 0, rc = EXIT_OK;
    if (store_recover(st, 0, STALE_S, &recovered, &e)) {
        fprintf(stderr, "sweep status: %s\n", e.msg);
        store_close(st);
        return EXIT_FAIL;
    }
    if (recovered)
        printf("%d runs whose process was gone are now marked interrupted\n", recovered);
    if (o.sweep) {
        int64_t id;
        char *key;
        if (store_find_sweep(st, o.sweep, &id, &key, &e) == 0 && id)
            status_one(st, id, key);
        else {
            fprintf(stderr, "sweep status: no sweep %s in %s\n", o.sweep, o.db);
            rc = EXIT_USAGE;
        }
        free(key);
    } else {
        SweepRec *s;
        int n;
        if (store_list_sweeps(st, &s, &n, &e) == 0) {
            if (!n)
                printf("no sweeps in %s yet\n", o.db);
            for (int i = 0; i < n; i++)
                status_one(st, s[i].id, s[i].key);
            sweep_recs_free(s, n);
        }
    }
    store_close(st);
    return rc;
}

/* ---- sweep show ----------------------------------------------------------------- */

int cmd_show(int argc, char **argv)
{
    static const char *const allowed[] = {"--db", NULL};
    QOpts o;
    char *end = NULL;
    long long id = 0;
    if (parse(&o, argc, argv, "show", allowed) == 0 && o.nargs == 1)
        id = strtoll(o.args[0], &end, 10);
    if (o.nargs != 1 || !end || *end || id <= 0) {
        fprintf(stderr, "usage: sweep show RUN [--db PATH]   (RUN: a run id, as `sweep "
                        "status` prints them)\n");
        return EXIT_USAGE;
    }
    Store *st;
    if (open_existing(&st, o.db, "show"))
        return EXIT_USAGE;
    Err e = {{0}};
    RunRec r;
    if (store_get_run(st, id, &r, &e)) {
        fprintf(stderr, "sweep show: %s\n", e.msg);
        store_close(st);
        return EXIT_USAGE;
    }
    char t1[64], t2[64];
    fmt_time(r.started, t1, sizeof t1);
    fmt_time(r.ended, t2, sizeof t2);
    printf("run %lld: %s, repeat %d, seed %lld, sweep %s\n", (long long)r.id, r.label, r.repeat,
           (long long)r.seed, r.sweep_key);
    printf("state       %s%s%s (%d attempts)\n", run_state_name(r.state),
           r.failure ? ": " : "", r.failure ? r.failure : "", r.attempts);
    if (r.has_result)
        printf("result      test error %.2f%%, test loss %.4f\n", r.test_err, r.test_loss);
    printf("epochs      %d of %d\n", r.epochs_done, r.epochs_total);
    printf("started     %s   ended %s\n", t1, t2);
    /* the device where it says more than the backend (cuda:1, not cpu) */
    const int on = r.device && !(r.backend && strcmp(r.device, r.backend) == 0);
    printf("where       host %s, pid %d, backend %s%s%s\n", r.host ? r.host : "-", r.pid,
           r.backend ? r.backend : "-", on ? " on " : "", on ? r.device : "");
    printf("hardware    %s\n", r.hardware ? r.hardware : "-");
    printf("folder      %s (checkpoint.safetensors, log.jsonl, output.log)\n", r.run_dir);
    printf("code        %s (binary built from %s%s)\n", r.code ? r.code : "-",
           r.build_commit ? r.build_commit : "-", r.build_dirty ? " with uncommitted changes" : "");
    printf("repository  %s %s, branch %s, commit %s%s\n", r.repo_state ? r.repo_state : "-",
           r.repo_path ? r.repo_path : "", r.repo_branch ? r.repo_branch : "-",
           r.repo_commit ? r.repo_commit : "-", r.repo_dirty ? ", dirty" : "");
    printf("config      %s\n", r.config_json);
    if (r.diff_id) {
        char *diff = NULL;
        if (store_diff(st, r.diff_id, &diff, &e) == 0 && diff) {
            printf("uncommitted changes when it ran (%zu bytes of diff):\n%s", strlen(diff), diff);
            if (diff[0] && diff[strlen(diff) - 1] != '\n')
                printf("\n");
        }
        free(diff);
    }
    EpochRec *ep;
    int n;
    if (store_epochs(st, id, &ep, &n, &e) == 0 && n) {
        printf("%6s %9s %10s %9s %10s %9s %8s %9s\n", "epoch", "lr", "train loss", "train err",
               "test loss", "test err", "seconds", "img/s");
        for (int i = 0; i < n; i++)
            printf("%6d %9.5f %10.4f %8.2f%% %10.4f %8.2f%% %8.1f %9.1f\n", ep[i].epoch, ep[i].lr,
                   ep[i].train_loss, ep[i].train_err, ep[i].test_loss, ep[i].test_err,
                   ep[i].seconds, ep[i].images_per_s);
        free(ep);
    }
    run_rec_free(&r);
    store_close(st);
    return EXIT_OK;
}

/* ---- sweep report --------------------------------------------------------------- */

int cmd_report(int argc, char **argv)
{
    static const char *const allowed[] = {"--db", "--sweep", "--format", "--commit", "--curves",
                                          NULL};
    QOpts o;
    if (parse(&o, argc, argv, "report", allowed) || o.nargs) {
        fprintf(stderr, "usage: sweep report [--sweep NAME] [--format text|markdown|csv|json] "
                        "[--commit SHA] [--curves DIR] [--db PATH]\n");
        return EXIT_USAGE;
    }
    int fmt = report_format_parse(o.format ? o.format : "text");
    if (fmt < 0) {
        fprintf(stderr, "sweep report: unknown format '%s' (text, markdown, csv, json)\n",
                o.format);
        return EXIT_USAGE;
    }
    Store *st;
    if (open_existing(&st, o.db, "report"))
        return EXIT_USAGE;
    Err e = {{0}};
    int rc = EXIT_FAIL, nrows = 0, ncols = 0, ncells = 0, nruns = 0;
    int64_t sweep_id = 0;
    char *key = NULL, **rows = NULL, **cols = NULL;
    CellRec *cells = NULL;
    RunRec *runs = NULL;
    ReportCell *rc_cells = NULL;
    ReportRun *rr = NULL;
    double **curves = NULL;
    int recovered;
    if (store_recover(st, 0, STALE_S, &recovered, &e) ||
        store_find_sweep(st, o.sweep, &sweep_id, &key, &e))
        goto fail;
    if (!sweep_id) {
        fprintf(stderr, "sweep report: no sweep %s in %s\n", o.sweep ? o.sweep : "at all", o.db);
        rc = EXIT_USAGE;
        goto done;
    }
    if (store_layout(st, sweep_id, &rows, &nrows, &cols, &ncols, &e) ||
        store_cells(st, sweep_id, &cells, &ncells, &e) ||
        store_runs(st, sweep_id, 0, &runs, &nruns, &e))
        goto fail;
    rc_cells = calloc((size_t)ncells + 1, sizeof *rc_cells);
    rr = calloc((size_t)nruns + 1, sizeof *rr);
    curves = calloc((size_t)nruns + 1, sizeof *curves);
    int at = 0;
    for (int c = 0; c < ncells; c++) {
        ReportCell *rc_ = &rc_cells[c];
        rc_->label = cells[c].label;
        rc_->row = cells[c].row;
        rc_->col = cells[c].col;
        rc_->has_ref = cells[c].has_ref;
        rc_->ref = cells[c].ref;
        rc_->repeats = cells[c].repeats;
        rc_->runs = &rr[at];
        for (int i = 0; i < nruns; i++) {
            RunRec *r = &runs[i];
            if (r->cell_id != cells[c].id || r->repeat >= cells[c].repeats)
                continue;
            ReportRun *x = &rr[at];
            x->id = r->id;
            x->repeat = r->repeat;
            x->seed = r->seed;
            x->state = r->state;
            snprintf(x->code, sizeof x->code, "%s", r->code ? r->code : "never ran");
            x->ended = r->ended;
            x->has_result = r->state == RUN_DONE && r->has_result;
            x->test_err = r->test_err;
            x->test_loss = r->test_loss;
            x->failure = r->failure;
            x->hardware = r->hardware;
            EpochRec *ep;
            int nep;
            if (o.curves && store_epochs(st, r->id, &ep, &nep, &e) == 0) {
                curves[i] = malloc(sizeof(double) * (size_t)(nep ? nep : 1));
                for (int k = 0; k < nep; k++)
                    curves[i][k] = ep[k].test_err;
                x->curve = curves[i];
                x->nepochs = nep;
                free(ep);
            }
            at++;
            rc_->nruns++;
        }
    }
    ReportInput in = {key, NULL, nrows, ncols, rows, cols, ncells, rc_cells, o.code};
    SweepRec *sweeps;
    int nsw;
    if (store_list_sweeps(st, &sweeps, &nsw, &e) == 0) {
        for (int i = 0; i < nsw; i++)
            if (sweeps[i].id == sweep_id)
                in.title = strdup(sweeps[i].title ? sweeps[i].title : "");
        sweep_recs_free(sweeps, nsw);
    }
    if (report_render(stdout, &in, (ReportFormat)fmt, &e)) {
        free((char *)in.title);
        goto fail;
    }
    if (o.curves) {
        if (report_curves(o.curves, &in, &e)) {
            free((char *)in.title);
            goto fail;
        }
        fprintf(stderr, "learning curves written to %s\n", o.curves);
    }
    free((char *)in.title);
    rc = EXIT_OK;
    goto done;
fail:
    fprintf(stderr, "sweep report: %s\n", e.msg);
done:
    for (int i = 0; curves && i < nruns; i++)
        free(curves[i]);
    free(curves);
    free(rr);
    free(rc_cells);
    run_recs_free(runs, nruns);
    cell_recs_free(cells, ncells);
    for (int i = 0; i < nrows; i++)
        free(rows[i]);
    for (int i = 0; i < ncols; i++)
        free(cols[i]);
    free(rows);
    free(cols);
    free(key);
    store_close(st);
    return rc;
}

/* ---- sweep data fetch ----------------------------------------------------------- */

int cmd_data(int argc, char **argv)
{
    static const char *const allowed[] = {"--dir", "--url", "--md5", NULL};
    QOpts o;
    if (parse(&o, argc, argv, "data", allowed) || o.nargs != 2 || strcmp(o.args[0], "fetch")) {
        fprintf(stderr, "usage: sweep data fetch cifar10|cifar100 [--dir DIR] "
                        "[--url URL --md5 HEX]\n");
        return EXIT_USAGE;
    }
    if (!data_source(o.args[1])) {
        fprintf(stderr, "sweep data fetch: unknown data set '%s' (cifar10, cifar100; "
                        "fashion-mnist comes from Debian's dataset-fashion-mnist)\n", o.args[1]);
        return EXIT_USAGE;
    }
    Err e = {{0}};
    if (data_fetch(o.args[1], o.dir ? o.dir : "data", o.url, o.md5, stdout, &e)) {
        fprintf(stderr, "sweep data fetch: %s\n", e.msg);
        return EXIT_FAIL;
    }
    return EXIT_OK;
}
