/*
 * The orchestrator end to end, through the real `sweep` binary, on tiny
 * runs over a CIFAR-10 folder written in the real format: a sweep with two
 * jobs, its report checked against the runs' own results, a failed run
 * rerun alone; kill -9 of a run and of the orchestrator mid-sweep, after
 * which `sweep run` loses and redoes nothing and the killed run resumes to
 * the very result an uninterrupted run gets; two orchestrators on one
 * store; a dirty repository recorded with its diff; errors before anything
 * runs.
 */
#define _GNU_SOURCE
#include "testutil.h"

#include <jansson.h>
#include <math.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "backend.h"
#include "store.h"

static char *root, *data;

static int setup(void **s)
{
    (void)s;
    root = tu_tempdir("orch");
    if (asprintf(&data, "%s/data", root) < 0)
        return -1;
    mkdir(data, 0777);
    tu_write_cifar10(data, 64, 20, 5, 0);
    return 0;
}

static int teardown(void **s)
{
    (void)s;
    tu_rmtree(root);
    free(root);
    free(data);
    return 0;
}

/* A sweep file in dir: 2 x 2 cells (forward x backward), `repeats` seeds,
 * `epochs` epochs of 4 steps; extra is spliced into the base table. */
static char *write_sweep(const char *dir, const char *name, int epochs, int repeats,
                         const char *extra_cells)
{
    char *path, *text;
    if (asprintf(&path, "%s/%s.lua", dir, name) < 0 ||
        asprintf(&text,
                 "-- a tiny sweep for the tests\n"
                 "return {\n"
                 "  name = '%s',\n"
                 "  base = {dataset = 'cifar10', data_dir = '%s', depth = 8, width = 16,\n"
                 "          epochs = %d, batch = 16, lr = 0.05, threads = 1},\n"
                 "  cells = {\n"
                 "    {forward = 'even', backward = 'even'},\n"
                 "    {forward = 'even', backward = 'shake'},\n"
                 "    {forward = 'shake', backward = 'even'},\n"
                 "    {forward = 'shake', backward = 'shake'},\n"
                 "    %s\n"
                 "  },\n"
                 "  repeats = %d,\n"
                 "  reference = function(c) return 80 end,\n"
                 "  layout = {row = function(c) return 'forward ' .. c.forward end,\n"
                 "            col = function(c) return 'backward ' .. c.backward end},\n"
                 "}\n",
                 name, data, epochs, extra_cells ? extra_cells : "", repeats) < 0)
        fail_msg("asprintf");
    tu_write_file(path, text, strlen(text));
    free(text);
    return path;
}

static Store *open_store(const char *db)
{
    Store *st;
    Err e = {{0}};
    if (store_open(&st, db, &e))
        fail_msg("%s", e.msg);
    return st;
}

static RunRec *all_runs(Store *st, const char *sweep, int *n)
{
    Err e = {{0}};
    int64_t id;
    RunRec *runs;
    if (store_find_sweep(st, sweep, &id, NULL, &e) || !id)
        fail_msg("no sweep %s: %s", sweep, e.msg);
    if (store_runs(st, id, 0, &runs, n, &e))
        fail_msg("%s", e.msg);
    return runs;
}

/* Starts `sweep ARGS` in the background (its own output file); returns pid. */
static pid_t start_sweep(const char *outfile, const char *fmt, ...)
{
    char *args;
    va_list ap;
    va_start(ap, fmt);
    if (vasprintf(&args, fmt, ap) < 0)
        fail_msg("vasprintf");
    va_end(ap);
    pid_t pid = fork();
    if (pid == 0) {
        char *cmd;
        if (asprintf(&cmd, "exec '%s' %s > '%s' 2>&1", SHAKE_SWEEP_BIN, args, outfile) < 0)
            _exit(127);
        execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
        _exit(127);
    }
    free(args);
    return pid;
}

static int wait_exit(pid_t pid)
{
    int status;
    if (waitpid(pid, &status, 0) != pid)
        return -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

static void sleep_ms(int ms)
{
    struct timespec t = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&t, NULL);
}

/* Waits until some run of the sweep is running with at least `epochs`
 * epochs recorded; returns it (caller frees) or fails after `secs`. */
static RunRec wait_running(const char *db, const char *sweep, int epochs, int secs)
{
    for (int t = 0; t < secs * 10; t++) {
        if (access(db, F_OK) != 0) {
            sleep_ms(100);
            continue;
        }
        Store *st = open_store(db);
        Err e = {{0}};
        int64_t id = 0;
        if (store_find_sweep(st, sweep, &id, NULL, &e) || !id) { /* not planned yet */
            store_close(st);
            sleep_ms(100);
            continue;
        }
        int n;
        RunRec *runs = all_runs(st, sweep, &n);
        RunRec found = {0};
        for (int i = 0; i < n; i++)
            if (runs[i].state == RUN_RUNNING && runs[i].epochs_done >= epochs &&
                runs[i].pid > 0 && !found.id) {
                found = runs[i];
                memset(&runs[i], 0, sizeof runs[i]);
            }
        run_recs_free(runs, n);
        store_close(st);
        if (found.id)
            return found;
        sleep_ms(100);
    }
    fail_msg("no run of %s reached epoch %d within %d s", sweep, epochs, secs);
    RunRec none = {0};
    return none;
}

static void test_sweep_report_rerun(void **s)
{
    (void)s;
    char *dir = tu_tempdir("orch-a"), *db, *out = NULL;
    /* a fifth cell diverges (lr 1e30): a failed run for rerun */
    char *file = write_sweep(dir, "tiny", 2, 2, "{forward = 'shake', backward = 'shake', "
                                               "lr = 1e30},");
    assert_true(asprintf(&db, "%s/store/sweep.db", dir) > 0);
    int rc = tu_run_sweep(&out, "run '%s' --db '%s' --jobs 2", file, db);
    if (rc != 1) /* some runs failed: exit 1 */
        fail_msg("sweep run exited %d:\n%s", rc, out);
    assert_non_null(strstr(out, "sweep rerun --failed"));
    free(out);

    Store *st = open_store(db);
    int n;
    RunRec *runs = all_runs(st, "tiny", &n);
    assert_int_equal(n, 10);
    int done = 0, failed = 0;
    for (int i = 0; i < n; i++) {
        done += runs[i].state == RUN_DONE;
        if (runs[i].state == RUN_FAILED) {
            failed++;
            assert_non_null(strstr(runs[i].failure, "diverged"));
        }
        if (runs[i].state == RUN_DONE) {
            assert_int_equal(runs[i].epochs_done, 2);
            assert_true(runs[i].has_result);
            assert_int_equal(runs[i].attempts, 1);
            assert_int_equal(runs[i].seed, 1 + runs[i].repeat); /* repeat k: seed 1 + k */
        }
    }
    assert_int_equal(done, 8);
    assert_int_equal(failed, 2);

    /* the report's numbers are the runs' own */
    assert_int_equal(tu_run_sweep(&out, "report --db '%s' --sweep tiny --format json", db), 0);
    json_error_t je;
    json_t *rep = json_loads(out, 0, &je);
    if (!rep)
        fail_msg("report is not JSON (%s):\n%s", je.text, out);
    json_t *cells = json_object_get(rep, "cells");
    assert_int_equal(json_array_size(cells), 5);
    int checked = 0;
    for (size_t c = 0; c < json_array_size(cells); c++) {
        json_t *cell = json_array_get(cells, c);
        const char *label = json_string_value(json_object_get(cell, "label"));
        double sum = 0, sq = 0;
        int k = 0;
        for (int i = 0; i < n; i++)
            if (strcmp(runs[i].label, label) == 0 && runs[i].state == RUN_DONE) {
                sum += runs[i].test_err;
                k++;
            }
        if (!k)
            continue;
        double mean = sum / k;
        for (int i = 0; i < n; i++)
            if (strcmp(runs[i].label, label) == 0 && runs[i].state == RUN_DONE)
                sq += (runs[i].test_err - mean) * (runs[i].test_err - mean);
        double sd = k > 1 ? sqrt(sq / (k - 1)) : 0;
        assert_int_equal(json_integer_value(json_object_get(cell, "n")), k);
        /* the report prints 10 significant digits */
        assert_true(fabs(json_number_value(json_object_get(cell, "mean")) - mean) <= 1e-8 * mean);
        assert_true(fabs(json_number_value(json_object_get(cell, "sd")) - sd) <= 1e-8 * (sd + 1));
        assert_true(json_number_value(json_object_get(cell, "ref")) == 80);
        checked++;
    }
    assert_int_equal(checked, 4);
    json_decref(rep);
    free(out);
    assert_int_equal(tu_run_sweep(&out, "report --db '%s' --sweep tiny", db), 0);
    assert_non_null(strstr(out, "forward shake"));
    assert_non_null(strstr(out, "backward even"));
    free(out);

    /* rerun --failed reruns exactly the failed runs; done runs stay as they were */
    double ended[16] = {0};
    for (int i = 0; i < n; i++)
        ended[i] = runs[i].ended;
    rc = tu_run_sweep(&out, "rerun --db '%s' --sweep tiny --failed --jobs 2", db);
    if (rc != 1) /* they diverge again */
        fail_msg("sweep rerun exited %d:\n%s", rc, out);
    free(out);
    int n2;
    RunRec *again = all_runs(st, "tiny", &n2);
    assert_int_equal(n2, n);
    for (int i = 0; i < n2; i++) {
        assert_int_equal(again[i].id, runs[i].id);
        if (runs[i].state == RUN_DONE) {
            assert_int_equal(again[i].state, RUN_DONE);
            assert_true(again[i].ended == ended[i]);      /* not redone */
            assert_int_equal(again[i].attempts, 1);
        } else {
            assert_int_equal(again[i].state, RUN_FAILED);
            assert_true(again[i].ended > ended[i]);       /* ran again */
            assert_int_equal(again[i].attempts, 1);       /* requeue resets attempts */
        }
    }
    run_recs_free(again, n2);
    /* a second `sweep run` has nothing to do */
    rc = tu_run_sweep(&out, "run '%s' --db '%s' --jobs 2", file, db);
    assert_non_null(strstr(out, "8/10 done"));
    free(out);
    run_recs_free(runs, n);
    store_close(st);
    /* `sweep show` prints provenance, what the run computed on (this
     * machine's processor, as the run's backend said) and the epochs */
    assert_int_equal(tu_run_sweep(&out, "show 1 --db '%s'", db), 0);
    assert_non_null(strstr(out, "code"));
    assert_non_null(strstr(out, "test err"));
    char cpu[300], hwline[400];
    host_cpu(cpu, sizeof cpu);
    snprintf(hwline, sizeof hwline, "\nhardware    %s, with ", cpu);
    if (!strstr(out, hwline))
        fail_msg("sweep show does not say what run 1 computed on (\"%s...\"):\n%s", hwline + 1,
                 out);
    free(out);
    /* and the report, over its table */
    assert_int_equal(tu_run_sweep(&out, "report --db '%s' --sweep tiny", db), 0);
    snprintf(hwline, sizeof hwline, "computed on %s, with ", cpu);
    if (!strstr(out, hwline))
        fail_msg("sweep report does not say what the runs computed on:\n%s", out);
    free(out);
    free(file);
    free(db);
    tu_rmtree(dir);
    free(dir);
}

/* Reads "test error" of a checkpoint's run via sweep eval. */
static double final_test_error(const char *db, int64_t run_id)
{
    Store *st = open_store(db);
    RunRec r;
    Err e = {{0}};
    if (store_get_run(st, run_id, &r, &e))
        fail_msg("%s", e.msg);
    double v = r.test_err;
    run_rec_free(&r);
    store_close(st);
    return v;
}

static void test_kill_run_and_orchestrator(void **s)
{
    (void)s;
    char *dir = tu_tempdir("orch-k"), *db, *log, *out = NULL;
    char *file = write_sweep(dir, "killme", 6, 2, NULL);
    assert_true(asprintf(&db, "%s/sweep.db", dir) > 0);
    assert_true(asprintf(&log, "%s/orchestrator.log", dir) > 0);
    pid_t orch = start_sweep(log, "run '%s' --db '%s' --jobs 2", file, db);

    /* kill -9 a run after its second epoch: it is marked interrupted and resumes */
    RunRec victim = wait_running(db, "killme", 2, 120);
    assert_int_equal(kill(victim.pid, SIGKILL), 0);
    int64_t victim_id = victim.id;
    run_rec_free(&victim);

    /* kill -9 the orchestrator while runs are going */
    RunRec busy = wait_running(db, "killme", 1, 120);
    run_rec_free(&busy);
    assert_int_equal(kill(orch, SIGKILL), 0);
    wait_exit(orch);

    /* what the store holds now: done runs keep their results */
    Store *st = open_store(db);
    int n;
    RunRec *before = all_runs(st, "killme", &n);
    store_close(st);

    /* run again: orphaned runs of the killed orchestrator finish or resume;
     * nothing done is redone */
    int rc = tu_run_sweep(&out, "run '%s' --db '%s' --jobs 2", file, db);
    if (rc != 0)
        fail_msg("second sweep run exited %d:\n%s", rc, out);
    free(out);
    /* the first orchestrator's orphans may still be finishing: wait for them */
    for (int t = 0; t < 600; t++) {
        st = open_store(db);
        int m, running = 0;
        RunRec *r = all_runs(st, "killme", &m);
        for (int i = 0; i < m; i++)
            running += r[i].state == RUN_RUNNING;
        run_recs_free(r, m);
        store_close(st);
        if (!running)
            break;
        sleep_ms(200);
    }
    rc = tu_run_sweep(&out, "run '%s' --db '%s' --jobs 2", file, db);
    assert_int_equal(rc, 0);
    free(out);
    st = open_store(db);
    int n2;
    RunRec *after = all_runs(st, "killme", &n2);
    assert_int_equal(n2, n);
    assert_int_equal(n2, 8);
    for (int i = 0; i < n2; i++) {
        assert_int_equal(after[i].state, RUN_DONE);
        assert_int_equal(after[i].epochs_done, 6);
        if (before[i].state == RUN_DONE) {
            assert_true(after[i].ended == before[i].ended);   /* not redone */
            assert_int_equal(after[i].attempts, before[i].attempts);
        }
        EpochRec *ep;
        int ne;
        Err e = {{0}};
        assert_int_equal(store_epochs(st, after[i].id, &ep, &ne, &e), 0);
        assert_int_equal(ne, 6);                                /* no epoch lost */
        for (int k = 0; k < ne; k++)
            assert_int_equal(ep[k].epoch, k + 1);
        free(ep);
    }
    RunRec v;
    Err e = {{0}};
    assert_int_equal(store_get_run(st, victim_id, &v, &e), 0);
    assert_true(v.attempts >= 2);                               /* it resumed */
    char *vlog;
    assert_true(asprintf(&vlog, "%s/output.log", v.run_dir) > 0);
    char *text = tu_read_file(vlog, NULL);
    assert_non_null(text);
    assert_non_null(strstr(text, "resuming from"));
    free(text);
    free(vlog);

    /* the resumed run ends exactly where an uninterrupted run of the same
     * config ends: train it straight through and compare */
    char *straight;
    assert_true(asprintf(&straight, "%s/straight", dir) > 0);
    TrainConfig cfg;
    config_defaults(&cfg);
    assert_int_equal(config_from_json(&cfg, v.config_json, &e), 0);
    char *cmd;
    assert_true(asprintf(&cmd, "train dataset=cifar10 data_dir='%s' depth=8 width=16 epochs=6 "
                                "batch=16 lr=0.05 threads=1 forward=%s backward=%s seed=%lld "
                                "out='%s'", data, cfg.forward == SHAKE_EVEN ? "even" : "shake",
                         cfg.backward == SHAKE_EVEN ? "even" : "shake", (long long)v.seed,
                         straight) > 0);
    assert_int_equal(tu_run_sweep(&out, "%s", cmd), 0);
    free(out);
    assert_int_equal(tu_run_sweep(&out, "eval checkpoint='%s/checkpoint.safetensors'", straight),
                     0);
    double want;
    const char *p = strstr(out, "test error ");
    assert_non_null(p);
    want = atof(p + strlen("test error "));
    free(out);
    double got = final_test_error(db, victim_id);
    if (fabs(got - want) > 1e-9)
        fail_msg("resumed run %lld ended at %.4f%%, an uninterrupted one at %.4f%%",
                 (long long)victim_id, got, want);
    run_rec_free(&v);
    free(cmd);
    free(straight);
    run_recs_free(before, n);
    run_recs_free(after, n2);
    store_close(st);
    free(file);
    free(db);
    free(log);
    tu_rmtree(dir);
    free(dir);
}

static void test_two_orchestrators_one_store(void **s)
{
    (void)s;
    char *dir = tu_tempdir("orch-2"), *db, *log1, *log2;
    char *file = write_sweep(dir, "shared", 2, 2, NULL);
    assert_true(asprintf(&db, "%s/sweep.db", dir) > 0);
    assert_true(asprintf(&log1, "%s/a.log", dir) > 0);
    assert_true(asprintf(&log2, "%s/b.log", dir) > 0);
    pid_t a = start_sweep(log1, "run '%s' --db '%s' --jobs 1", file, db);
    pid_t b = start_sweep(log2, "run '%s' --db '%s' --jobs 1", file, db);
    int ra = wait_exit(a), rb = wait_exit(b);
    if (ra != 0 || rb != 0) {
        char *t1 = tu_read_file(log1, NULL), *t2 = tu_read_file(log2, NULL);
        fail_msg("exit %d and %d\n%s\n---\n%s", ra, rb, t1, t2);
    }
    Store *st = open_store(db);
    int n;
    RunRec *runs = all_runs(st, "shared", &n);
    assert_int_equal(n, 8);
    for (int i = 0; i < n; i++) {
        assert_int_equal(runs[i].state, RUN_DONE);
        assert_int_equal(runs[i].attempts, 1);                  /* each ran once */
        char *path;
        assert_true(asprintf(&path, "%s/output.log", runs[i].run_dir) > 0);
        char *text = tu_read_file(path, NULL);
        assert_non_null(text);
        /* one training start in the run's output: nobody ran it twice */
        int starts = 0;
        for (const char *p = text; (p = strstr(p, " parameters, cpu backend")); p++)
            starts++;
        assert_int_equal(starts, 1);
        free(text);
        free(path);
    }
    run_recs_free(runs, n);
    store_close(st);
    sqlite3 *raw;
    assert_int_equal(sqlite3_open(db, &raw), SQLITE_OK);
    sqlite3_stmt *q;
    assert_int_equal(sqlite3_prepare_v2(raw, "PRAGMA integrity_check", -1, &q, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_step(q), SQLITE_ROW);
    assert_string_equal((const char *)sqlite3_column_text(q, 0), "ok");
    sqlite3_finalize(q);
    sqlite3_close(raw);
    free(file);
    free(db);
    free(log1);
    free(log2);
    tu_rmtree(dir);
    free(dir);
}

static void test_dirty_repository_recorded(void **s)
{
    (void)s;
    char *repo = tu_tempdir("orch-git"), *cmd, *out = NULL;
    /* a repository with one commit and an uncommitted change */
    assert_true(asprintf(&cmd,
                         "cd '%s' && export GIT_CONFIG_GLOBAL=/dev/null GIT_CONFIG_NOSYSTEM=1 && "
                         "git init -q -b main . && echo 'lr = 0.1' > notes.txt && "
                         "git add notes.txt && git -c user.name=t -c user.email=t@t commit -q "
                         "-m first && echo 'lr = 0.2 (changed)' > notes.txt",
                         repo) > 0);
    assert_int_equal(system(cmd), 0);
    free(cmd);
    char *file = write_sweep(repo, "dirty", 1, 1, NULL);
    assert_true(asprintf(&cmd, "cd '%s' && '%s' run '%s' --db '%s/sweep.db' > /dev/null 2>&1",
                         repo, SHAKE_SWEEP_BIN, file, repo) > 0);
    assert_int_equal(system(cmd), 0);
    free(cmd);
    assert_int_equal(tu_run_sweep(&out, "show 1 --db '%s/sweep.db'", repo), 0);
    assert_non_null(strstr(out, "branch main"));
    assert_non_null(strstr(out, "dirty"));
    assert_non_null(strstr(out, "+lr = 0.2 (changed)"));
    assert_non_null(strstr(out, "-lr = 0.1"));
    free(out);
    free(file);
    tu_rmtree(repo);
    free(repo);
}

static void test_errors_before_anything_runs(void **s)
{
    (void)s;
    char *dir = tu_tempdir("orch-e"), *out = NULL, *path, *db;
    assert_true(asprintf(&db, "%s/sweep.db", dir) > 0);
    /* a bad cell: file:line, exit 2, no store created */
    assert_true(asprintf(&path, "%s/bad.lua", dir) > 0);
    const char *text = "return {\n  name = 'bad',\n  base = {dataset = 'synthetic'},\n"
                       "  cells = {{depth = 27}},\n}\n";
    tu_write_file(path, text, strlen(text));
    assert_int_equal(tu_run_sweep(&out, "run '%s' --db '%s'", path, db), 2);
    assert_non_null(strstr(out, "bad.lua:"));
    assert_non_null(strstr(out, "6n+2"));
    assert_int_equal(access(db, F_OK), -1);
    free(out);
    free(path);
    /* missing data names `sweep data fetch` */
    assert_true(asprintf(&path, "%s/nodata.lua", dir) > 0);
    char *t2;
    assert_true(asprintf(&t2, "return {name = 'nodata', base = {dataset = 'cifar10', data_dir = "
                              "'%s/none', epochs = 1}, cells = {{}}}\n", dir) > 0);
    tu_write_file(path, t2, strlen(t2));
    assert_int_equal(tu_run_sweep(&out, "run '%s' --db '%s'", path, db), 1);
    assert_non_null(strstr(out, "sweep data fetch cifar10"));
    free(out);
    free(t2);
    free(path);
    /* --dry-run plans and runs nothing */
    char *file = write_sweep(dir, "plan", 2, 3, NULL);
    assert_int_equal(tu_run_sweep(&out, "run '%s' --db '%s' --dry-run", file, db), 0);
    assert_non_null(strstr(out, "4 cells, 12 runs"));
    assert_non_null(strstr(out, "12 to run"));
    assert_int_equal(access(db, F_OK), -1);
    free(out);
    /* the store's commands say so when there is no store */
    assert_int_equal(tu_run_sweep(&out, "report --db '%s'", db), 2);
    assert_non_null(strstr(out, "no results store"));
    free(out);
    free(file);
    free(db);
    tu_rmtree(dir);
    free(dir);
}

/*
 * --gpus: bad lists are refused before anything runs; a run placed on a GPU
 * records backend cuda and device cuda:N, and where this machine has no
 * GPU, fails with the reason rather than hanging or running on the CPU.
 */
static void test_gpus_placement(void **s)
{
    (void)s;
    char *dir = tu_tempdir("orch-g"), *out = NULL, *db;
    assert_true(asprintf(&db, "%s/sweep.db", dir) > 0);
    char *file = write_sweep(dir, "gpus", 1, 1, NULL);
    assert_int_equal(tu_run_sweep(&out, "run '%s' --db '%s' --gpus 0,x", file, db), 2);
    assert_non_null(strstr(out, "bad value '0,x' for --gpus"));
    free(out);
    assert_int_equal(tu_run_sweep(&out, "run '%s' --db '%s' --gpus 1,1", file, db), 2);
    assert_non_null(strstr(out, "GPU 1 twice"));
    free(out);
    if (!backend_find("cuda")) {
        assert_int_equal(tu_run_sweep(&out, "run '%s' --db '%s' --gpus 0", file, db), 2);
        assert_non_null(strstr(out, "needs the cuda backend"));
        free(out);
    } else {
        assert_int_equal(tu_run_sweep(&out, "run '%s' --db '%s' --gpus 0 --jobs 2", file, db), 2);
        assert_non_null(strstr(out, "--jobs and --gpus"));
        free(out);
        int have_gpu = backend_cuda_devices() > 0;
        int rc = tu_run_sweep(&out, "run '%s' --db '%s' --gpus 0", file, db);
        assert_int_equal(rc, have_gpu ? 0 : 1);
        free(out);
        Store *st = open_store(db);
        int n;
        RunRec *runs = all_runs(st, "gpus", &n);
        assert_int_equal(n, 4);
        for (int i = 0; i < n; i++) {
            assert_string_equal(runs[i].backend, "cuda");
            assert_string_equal(runs[i].device, "cuda:0");
            if (have_gpu) {
                assert_int_equal(runs[i].state, RUN_DONE);
            } else {
                assert_int_equal(runs[i].state, RUN_FAILED);
                assert_non_null(strstr(runs[i].failure, "no GPU visible"));
            }
        }
        run_recs_free(runs, n);
        store_close(st);
        /* and `sweep show` says where it ran */
        assert_int_equal(tu_run_sweep(&out, "show 1 --db '%s'", db), 0);
        assert_non_null(strstr(out, "backend cuda on cuda:0"));
        free(out);
    }
    free(file);
    free(db);
    tu_rmtree(dir);
    free(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_errors_before_anything_runs),
        cmocka_unit_test(test_gpus_placement),
        cmocka_unit_test(test_sweep_report_rerun),
        cmocka_unit_test(test_kill_run_and_orchestrator),
        cmocka_unit_test(test_two_orchestrators_one_store),
        cmocka_unit_test(test_dirty_repository_recorded),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
