/*
 * The results store through its API: schema versions (a newer store is
 * refused), idempotent planning (no duplicate runs; new repeats add runs;
 * cells that leave the file keep their runs), claims from two connections
 * never hand out a run twice, processes opening one new store together all
 * get it, dead processes and silent hosts are found,
 * redone epochs replace old ones, reruns, a resumed run on other code
 * becomes "mixed" so it is never averaged with either version, and what
 * each run computed on is kept across its attempts.
 */
#define _GNU_SOURCE
#include "testutil.h"

#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "store.h"
#include "sweepfile.h"

static char *dir;

static int setup(void **s)
{
    (void)s;
    dir = tu_tempdir("store");
    return 0;
}

static int teardown(void **s)
{
    (void)s;
    tu_rmtree(dir);
    free(dir);
    return 0;
}

static void load(Sweep *sw, const char *name, const char *cells, int repeats)
{
    char *path, *text;
    assert_true(asprintf(&path, "%s/%s.lua", dir, name) > 0);
    assert_true(asprintf(&text, "return {name = '%s', base = {dataset = 'synthetic', depth = 8, "
                                "width = 16, epochs = 3}, cells = {%s}, repeats = %d}\n",
                         name, cells, repeats) > 0);
    tu_write_file(path, text, strlen(text));
    Err e = {{0}};
    if (sweep_load(sw, path, NULL, 0, &e))
        fail_msg("%s", e.msg);
    free(path);
    free(text);
}

static Store *open_db(const char *name)
{
    char *path;
    assert_true(asprintf(&path, "%s/%s", dir, name) > 0);
    Store *st;
    Err e = {{0}};
    if (store_open(&st, path, &e))
        fail_msg("%s", e.msg);
    free(path);
    return st;
}

static void exec_sql(const char *db, const char *sql)
{
    char *path;
    assert_true(asprintf(&path, "%s/%s", dir, db) > 0);
    sqlite3 *h;
    assert_int_equal(sqlite3_open(path, &h), SQLITE_OK);
    sqlite3_busy_timeout(h, 10000);
    char *msg = NULL;
    if (sqlite3_exec(h, sql, NULL, NULL, &msg) != SQLITE_OK)
        fail_msg("%s: %s", sql, msg);
    sqlite3_close(h);
    free(path);
}

static int64_t plan(Store *st, const Sweep *sw, int *created)
{
    int64_t id, cells[16];
    Err e = {{0}};
    char *root;
    assert_true(asprintf(&root, "%s/runs", dir) > 0);
    if (store_put_sweep(st, sw, root, &id, cells, created, &e))
        fail_msg("%s", e.msg);
    free(root);
    return id;
}

static void test_schema_versions(void **s)
{
    (void)s;
    Store *st = open_db("v.db");
    store_close(st);
    st = open_db("v.db"); /* reopening migrates nothing and works */
    store_close(st);
    exec_sql("v.db", "PRAGMA user_version = 99");
    char *path;
    assert_true(asprintf(&path, "%s/v.db", dir) > 0);
    Err e = {{0}};
    assert_int_equal(store_open(&st, path, &e), -1);
    assert_non_null(strstr(e.msg, "newer"));
    free(path);
}

static void test_planning_is_idempotent(void **s)
{
    (void)s;
    Store *st = open_db("plan.db");
    Sweep sw;
    load(&sw, "p", "{forward = 'even'}, {forward = 'shake'}", 2);
    int created;
    int64_t id = plan(st, &sw, &created);
    assert_int_equal(created, 4);
    assert_int_equal(plan(st, &sw, &created), id);
    assert_int_equal(created, 0);                       /* nothing twice */
    sweep_free(&sw);
    load(&sw, "p", "{forward = 'even'}, {forward = 'shake'}", 3);
    plan(st, &sw, &created);
    assert_int_equal(created, 2);                       /* a third seed per cell */
    sweep_free(&sw);
    load(&sw, "p", "{forward = 'shake'}", 3);          /* a cell left the file */
    plan(st, &sw, &created);
    assert_int_equal(created, 0);
    CellRec *cells;
    RunRec *runs;
    int nc, nr;
    Err e = {{0}};
    assert_int_equal(store_cells(st, id, &cells, &nc, &e), 0);
    assert_int_equal(nc, 1);                            /* out of the layout */
    assert_int_equal(store_runs(st, id, 0, &runs, &nr, &e), 0);
    assert_int_equal(nr, 6);                            /* but its runs stay */
    for (int i = 0; i < nr; i++) {
        assert_int_equal(runs[i].state, RUN_PENDING);
        assert_int_equal(runs[i].seed, 1 + runs[i].repeat);
        assert_int_equal(runs[i].epochs_total, 3);
        assert_non_null(strstr(runs[i].config_json, runs[i].run_dir));
    }
    cell_recs_free(cells, nc);
    run_recs_free(runs, nr);
    sweep_free(&sw);
    store_close(st);
}

static void test_claims_never_twice(void **s)
{
    (void)s;
    Store *a = open_db("claim.db"), *b = open_db("claim.db");
    Sweep sw;
    load(&sw, "c", "{forward = 'even'}, {forward = 'shake'}, {backward = 'even'}", 2);
    int created;
    int64_t id = plan(a, &sw, &created);
    int64_t got[8];
    int n = 0;
    Err e = {{0}};
    for (int i = 0; i < 8; i++) {
        int64_t run;
        assert_int_equal(store_claim(i % 2 ? a : b, id, NULL, 0, 5, &run, &e), 0);
        if (!run)
            break;
        for (int k = 0; k < n; k++)
            assert_true(got[k] != run);
        got[n++] = run;
    }
    assert_int_equal(n, 6);
    RunRec r;
    assert_int_equal(store_get_run(a, got[0], &r, &e), 0);
    assert_int_equal(r.state, RUN_RUNNING);
    assert_int_equal(r.attempts, 1);
    assert_int_equal(r.pid, getpid());
    run_rec_free(&r);
    /* `only` restricts the claim */
    assert_int_equal(store_set_state(a, got[3], RUN_INTERRUPTED, "test", &e), 0);
    assert_int_equal(store_set_state(a, got[4], RUN_INTERRUPTED, "test", &e), 0);
    int64_t run;
    assert_int_equal(store_claim(a, id, &got[4], 1, 5, &run, &e), 0);
    assert_int_equal(run, got[4]);
    /* the attempt limit holds */
    assert_int_equal(store_claim(a, id, NULL, 0, 1, &run, &e), 0);
    assert_int_equal(run, 0);
    sweep_free(&sw);
    store_close(a);
    store_close(b);
}

/* Processes that open one new store at the same moment all get it: the
 * switch to WAL that each makes on opening waits its turn instead of failing
 * with "database is locked" (two `sweep run`s started together on one --db,
 * as a Slurm array starts them, once lost that race). */
static void test_open_together(void **s)
{
    (void)s;
    enum { ROUNDS = 100, PROCS = 4 };
    for (int r = 0; r < ROUNDS; r++) {
        char *path;
        assert_true(asprintf(&path, "%s/together-%d.db", dir, r) > 0);
        pid_t kids[PROCS];
        int gate[2]; /* the children open when the parent closes it */
        assert_int_equal(pipe(gate), 0);
        for (int k = 0; k < PROCS; k++) {
            kids[k] = fork();
            assert_true(kids[k] >= 0);
            if (kids[k] == 0) {
                char c;
                close(gate[1]);
                if (read(gate[0], &c, 1) != 0)
                    _exit(2);
                Store *st;
                Err e = {{0}};
                if (store_open(&st, path, &e)) {
                    fprintf(stderr, "round %d, process %d: %s\n", r, k, e.msg);
                    _exit(1);
                }
                store_close(st);
                _exit(0);
            }
        }
        close(gate[0]);
        close(gate[1]);
        int failed = 0;
        for (int k = 0; k < PROCS; k++) {
            int status;
            assert_int_equal(waitpid(kids[k], &status, 0), kids[k]);
            failed += !WIFEXITED(status) || WEXITSTATUS(status) != 0;
        }
        if (failed)
            fail_msg("round %d: %d of %d processes could not open a new store together", r,
                     failed, PROCS);
        free(path);
    }
}

static void test_recover_dead_and_silent(void **s)
{
    (void)s;
    Store *st = open_db("rec.db");
    Sweep sw;
    load(&sw, "r", "{forward = 'even'}, {forward = 'shake'}, {backward = 'even'}", 1);
    int created;
    int64_t id = plan(st, &sw, &created), runs[3];
    Err e = {{0}};
    for (int i = 0; i < 3; i++)
        assert_int_equal(store_claim(st, id, NULL, 0, 5, &runs[i], &e), 0);
    /* run 0: a process that has exited */
    pid_t child = fork();
    if (child == 0)
        _exit(0);
    waitpid(child, NULL, 0);
    char sql[512];
    snprintf(sql, sizeof sql, "UPDATE runs SET pid = %d WHERE id = %lld", (int)child,
             (long long)runs[0]);
    exec_sql("rec.db", sql);
    /* run 1: on another host, silent for an hour; run 2: this process, alive */
    snprintf(sql, sizeof sql, "UPDATE runs SET host = 'elsewhere', heartbeat = %f WHERE id = %lld",
             (double)time(NULL) - 3600, (long long)runs[1]);
    exec_sql("rec.db", sql);
    int n;
    assert_int_equal(store_recover(st, id, 600, &n, &e), 0);
    assert_int_equal(n, 2);
    RunRec r;
    for (int i = 0; i < 3; i++) {
        assert_int_equal(store_get_run(st, runs[i], &r, &e), 0);
        assert_int_equal(r.state, i < 2 ? RUN_INTERRUPTED : RUN_RUNNING);
        if (i < 2)
            assert_non_null(r.failure);
        run_rec_free(&r);
    }
    sweep_free(&sw);
    store_close(st);
}

/* Sweep `name` of one cell and one repeat planned in st, its run claimed
 * and started by this process on backend and device, from a binary built
 * at commit 0123456789ab... (*p); the sweep's id in *sweep_id. */
static int64_t start_one(Store *st, Sweep *sw, const char *name, const char *backend,
                         const char *device, int64_t *sweep_id, Provenance *p)
{
    load(sw, name, "{forward = 'even'}", 1);
    int created;
    int64_t run;
    *sweep_id = plan(st, sw, &created);
    Err e = {{0}};
    assert_int_equal(store_claim(st, *sweep_id, NULL, 0, 5, &run, &e), 0);
    memset(p, 0, sizeof *p);
    snprintf(p->build_commit, sizeof p->build_commit, "0123456789abcdef0123");
    snprintf(p->repo_state, sizeof p->repo_state, "none");
    if (store_run_started(st, run, getpid(), backend, device, p, &e))
        fail_msg("%s", e.msg);
    return run;
}

static void test_epochs_results_and_reruns(void **s)
{
    (void)s;
    Store *st = open_db("ep.db");
    Sweep sw;
    int64_t id;
    Provenance p;
    int64_t run = start_one(st, &sw, "e", "cpu", "cpu", &id, &p);
    Err e = {{0}};
    for (int ep = 1; ep <= 3; ep++) {
        EpochStats es = {ep, 3, ep * 10, 0.1, 1.0, 0.5, 0.9, 0.25 + ep, 2.0, 100.0};
        assert_int_equal(store_run_epoch(st, run, &es, &e), 0);
    }
    /* a redone epoch 2 replaces 2 and drops 3 */
    EpochStats redo = {2, 3, 20, 0.1, 1.0, 0.5, 0.9, 0.125, 2.0, 100.0};
    assert_int_equal(store_run_epoch(st, run, &redo, &e), 0);
    EpochRec *ep;
    int n;
    assert_int_equal(store_epochs(st, run, &ep, &n, &e), 0);
    assert_int_equal(n, 2);
    assert_true(ep[1].test_err == 12.5);               /* percent */
    free(ep);
    assert_int_equal(store_run_ended(st, run, RUN_DONE, NULL, 1, 12.5, 0.9, &e), 0);
    RunRec r;
    assert_int_equal(store_get_run(st, run, &r, &e), 0);
    assert_int_equal(r.state, RUN_DONE);
    assert_string_equal(r.code, "0123456789ab");
    assert_true(r.has_result && r.test_err == 12.5);
    run_rec_free(&r);
    /* rerun of a done run: a new run; the old one stays */
    char *root;
    assert_true(asprintf(&root, "%s/runs", dir) > 0);
    int64_t again;
    assert_int_equal(store_requeue(st, run, root, &again, &e), 0);
    assert_true(again != run);
    assert_int_equal(store_get_run(st, again, &r, &e), 0);
    assert_int_equal(r.state, RUN_PENDING);
    run_rec_free(&r);
    /* a resumed attempt on other code makes the run "mixed" */
    assert_int_equal(store_claim(st, id, NULL, 0, 5, &run, &e), 0);
    assert_int_equal(run, again);
    assert_int_equal(store_run_started(st, run, getpid(), "cpu", "cpu", &p, &e), 0);
    assert_int_equal(store_run_ended(st, run, RUN_INTERRUPTED, "test", 0, 0, 0, &e), 0);
    assert_int_equal(store_claim(st, id, NULL, 0, 5, &run, &e), 0);
    snprintf(p.build_commit, sizeof p.build_commit, "fedcba9876543210fedc");
    assert_int_equal(store_run_started(st, run, getpid(), "cpu", "cpu", &p, &e), 0);
    assert_int_equal(store_get_run(st, run, &r, &e), 0);
    assert_string_equal(r.code, "mixed:0123456789ab,fedcba987654");
    run_rec_free(&r);
    /* failed runs go back to pending, same run */
    assert_int_equal(store_run_ended(st, run, RUN_FAILED, "boom", 0, 0, 0, &e), 0);
    int64_t same;
    assert_int_equal(store_requeue(st, run, root, &same, &e), 0);
    assert_int_equal(same, run);
    assert_int_equal(store_get_run(st, run, &r, &e), 0);
    assert_int_equal(r.state, RUN_PENDING);
    assert_int_equal(r.attempts, 0);
    run_rec_free(&r);
    free(root);
    sweep_free(&sw);
    store_close(st);
}

/*
 * What a run computed on: stored once its backend says, the same again
 * changes nothing, other hardware in a later attempt is added after the
 * first ("A // then on B"), never losing it; and a store of schema 1 (no
 * such column) gains it when opened, its runs keeping everything else.
 */
static void test_hardware(void **s)
{
    (void)s;
    Store *st = open_db("hw.db");
    Sweep sw;
    int64_t id;
    Provenance p;
    int64_t run = start_one(st, &sw, "h", "cuda", "cuda:0", &id, &p);
    Err e = {{0}};
    RunRec r;
    assert_int_equal(store_get_run(st, run, &r, &e), 0);
    assert_null(r.hardware);
    run_rec_free(&r);
    const char *A = "NVIDIA H100 80GB HBM3 (sm_90), 132 SMs, 79 GiB, with cuDNN 9.14.0";
    const char *B = "NVIDIA H200 (sm_90), 132 SMs, 140 GiB, with cuDNN 9.14.0";
    const struct {
        const char *set, *want;
    } steps[] = {
        {A, A},
        {A, A},
        {B, "NVIDIA H100 80GB HBM3 (sm_90), 132 SMs, 79 GiB, with cuDNN 9.14.0 // then on "
            "NVIDIA H200 (sm_90), 132 SMs, 140 GiB, with cuDNN 9.14.0"},
        {B, "NVIDIA H100 80GB HBM3 (sm_90), 132 SMs, 79 GiB, with cuDNN 9.14.0 // then on "
            "NVIDIA H200 (sm_90), 132 SMs, 140 GiB, with cuDNN 9.14.0"},
        {A, "NVIDIA H100 80GB HBM3 (sm_90), 132 SMs, 79 GiB, with cuDNN 9.14.0 // then on "
            "NVIDIA H200 (sm_90), 132 SMs, 140 GiB, with cuDNN 9.14.0 // then on "
            "NVIDIA H100 80GB HBM3 (sm_90), 132 SMs, 79 GiB, with cuDNN 9.14.0"},
    };
    for (size_t i = 0; i < sizeof steps / sizeof steps[0]; i++) {
        assert_int_equal(store_run_hardware(st, run, steps[i].set, &e), 0);
        assert_int_equal(store_get_run(st, run, &r, &e), 0);
        if (!r.hardware || strcmp(r.hardware, steps[i].want) != 0)
            fail_msg("step %zu: hardware \"%s\", want \"%s\"", i,
                     r.hardware ? r.hardware : "(null)", steps[i].want);
        run_rec_free(&r);
    }
    store_close(st);

    /* a schema-1 store: the column is not there until the store is opened */
    exec_sql("hw.db", "ALTER TABLE runs DROP COLUMN hardware; PRAGMA user_version = 1");
    st = open_db("hw.db");
    assert_int_equal(store_get_run(st, run, &r, &e), 0);
    assert_null(r.hardware);
    assert_string_equal(r.code, "0123456789ab");
    assert_string_equal(r.device, "cuda:0");
    run_rec_free(&r);
    assert_int_equal(store_run_hardware(st, run, B, &e), 0);
    assert_int_equal(store_get_run(st, run, &r, &e), 0);
    assert_string_equal(r.hardware, B);
    run_rec_free(&r);
    sweep_free(&sw);
    store_close(st);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_schema_versions),
        cmocka_unit_test(test_hardware),
        cmocka_unit_test(test_planning_is_idempotent),
        cmocka_unit_test(test_claims_never_twice),
        cmocka_unit_test(test_open_together),
        cmocka_unit_test(test_recover_dead_and_silent),
        cmocka_unit_test(test_epochs_results_and_reruns),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
