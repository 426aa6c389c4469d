/*
 * The results store: one SQLite file (default results/sweep.db) with the
 * sweeps, their cells (resolved configs), runs (seed, state, provenance,
 * result) and per-epoch metrics. Schema versioned by PRAGMA user_version
 * with migrations; WAL; a busy timeout; every write in a BEGIN IMMEDIATE
 * transaction, so several `sweep run` processes and their runs share one
 * store without corrupting it or claiming a run twice.
 *
 * A run is (cell, repeat) at one code version. The run's folder (checkpoint
 * and log.jsonl) is its durable record; the store mirrors it and can be
 * brought up to date from it.
 */
#ifndef SHAKE_STORE_H
#define SHAKE_STORE_H

#include <stdint.h>

#include "provenance.h"
#include "runstate.h"
#include "sweepfile.h"
#include "train.h"
#include "util.h"

#define STORE_SCHEMA_VERSION 2

typedef struct Store Store;

/* Opens (creating folders and schema, migrating) the store at path. Refuses
 * a store written by a newer binary. */
int store_open(Store **out, const char *path, Err *e);
void store_close(Store *st);

typedef struct {
    int64_t id, cell_id, sweep_id;
    int repeat;
    int64_t seed;
    RunState state;
    int attempts;
    char *sweep_key;            /* the sweep's id, e.g. "table1[epochs=30]" */
    char *label;                /* the cell's label */
    char *row, *col;            /* the cell's layout labels */
    char *run_dir;              /* absolute */
    char *config_json;          /* what runs: the cell's config with this run's seed and out */
    char *host, *device, *backend, *pid_tag, *failure, *code;
    char *hardware;             /* what it computed on (the backend's line); NULL: not known */
    char *build_commit, *repo_state, *repo_path, *repo_commit, *repo_branch;
    int build_dirty, repo_dirty;
    int64_t diff_id;            /* 0: none */
    int pid;
    double started, ended, heartbeat;
    int epochs_done, epochs_total;
    int has_result;
    double test_err, test_loss; /* final, test error in percent */
} RunRec;

void run_rec_free(RunRec *r);
void run_recs_free(RunRec *r, int n);

typedef struct {
    int epoch;
    double lr, train_loss, train_err, test_loss, test_err, seconds, images_per_s;
} EpochRec;                     /* errors in percent */

/*
 * Records the sweep (by its id: name plus overrides) and its cells (by their
 * key), and makes sure every (cell, repeat) has a run: new ones are pending,
 * with folders under runs_root. Cells no longer in the file stay in the
 * store but leave the sweep's current layout. cell_ids gets sw->ncells ids.
 * *created counts new runs.
 */
int store_put_sweep(Store *st, const Sweep *sw, const char *runs_root, int64_t *sweep_id,
                    int64_t *cell_ids, int *created, Err *e);

/* A sweep by its id or, failing that, its name (the most recently updated
 * one); NULL name: the most recently updated sweep. *sweep_id = 0 if none. */
int store_find_sweep(Store *st, const char *name, int64_t *sweep_id, char **sweep_key,
                     Err *e);

typedef struct {
    int64_t id;
    char *key, *name, *title, *file, *overrides;
    double updated;
} SweepRec;
int store_list_sweeps(Store *st, SweepRec **out, int *n, Err *e);
void sweep_recs_free(SweepRec *s, int n);

/* The current layout of a sweep: row and column labels in order. */
int store_layout(Store *st, int64_t sweep_id, char ***rows, int *nrows, char ***cols,
                 int *ncols, Err *e);

typedef struct {
    int64_t id;
    char *label, *row, *col, *config_json, *settings;
    int repeats, has_ref;
    double ref;
} CellRec;
/* The sweep's current cells in file order. */
int store_cells(Store *st, int64_t sweep_id, CellRec **out, int *n, Err *e);
void cell_recs_free(CellRec *c, int n);

/* Every run of a sweep (all versions), or of one cell (cell_id != 0). */
int store_runs(Store *st, int64_t sweep_id, int64_t cell_id, RunRec **out, int *n, Err *e);
int store_get_run(Store *st, int64_t run_id, RunRec *out, Err *e);
int store_epochs(Store *st, int64_t run_id, EpochRec **out, int *n, Err *e);
/* The text of a stored diff (caller frees). */
int store_diff(Store *st, int64_t diff_id, char **text, Err *e);

/*
 * Marks runs whose process is gone as interrupted: on this host, the pid
 * is not alive (or is another process); elsewhere, no heartbeat for
 * stale_s seconds. sweep_id 0: every sweep. *n counts them.
 */
int store_recover(Store *st, int64_t sweep_id, double stale_s, int *n, Err *e);

/*
 * Claims one runnable run for this process (state pending or interrupted,
 * attempts below max_attempts), marking it running under this pid, and
 * returns its id in *run_id (0 if none). With `only`, just those run ids.
 */
int store_claim(Store *st, int64_t sweep_id, const int64_t *only, int nonly,
                int max_attempts, int64_t *run_id, Err *e);

/* The run's process started: who, where, with what code. */
int store_run_started(Store *st, int64_t run_id, int pid, const char *backend,
                      const char *device, const Provenance *p, Err *e);
/* What the run computes on, once its backend is set up; an attempt on other
 * hardware than an earlier one adds to it ("A // then on B"). */
int store_run_hardware(Store *st, int64_t run_id, const char *hardware, Err *e);
/* One epoch's metrics (replacing a redone epoch's), and a heartbeat. */
int store_run_epoch(Store *st, int64_t run_id, const EpochStats *s, Err *e);
int store_heartbeat(Store *st, int64_t run_id, Err *e);
/* The end of an attempt: done (with the result), failed or interrupted
 * (with the reason). A run that is no longer this process's is left alone. */
int store_run_ended(Store *st, int64_t run_id, RunState state, const char *reason,
                    int has_result, double test_err, double test_loss, Err *e);
/* Sets a run's state unconditionally (the orchestrator after a child died). */
int store_set_state(Store *st, int64_t run_id, RunState state, const char *reason, Err *e);

/*
 * For `sweep rerun`: failed and interrupted runs go back to pending (their
 * checkpoint is kept, so they resume where it is valid); a done run gets a
 * fresh successor run (new folder), leaving the old one as history. *new_id
 * is the run that will execute.
 */
int store_requeue(Store *st, int64_t run_id, const char *runs_root, int64_t *new_id, Err *e);

/* This process's identity for liveness checks: "bootid:starttime". */
void process_tag(int pid, char *buf, int len);
/* 1 if pid on this host is alive and is the process the tag names. */
int process_alive(int pid, const char *tag);
/* This machine's name. */
const char *host_name(void);

#endif
