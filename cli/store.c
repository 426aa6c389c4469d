/*
 * The SQLite results store; see store.h. Every statement goes through Stmt,
 * which keeps the SQL text for error messages; values are always bound,
 * never printed into SQL. Writes run in BEGIN IMMEDIATE transactions (the
 * write lock is taken up front, so two writers never deadlock upgrading a
 * read lock) with a long busy timeout.
 */
#define _GNU_SOURCE
#include "store.h"

#include <ctype.h>
#include <errno.h>
#include <libgen.h>
#include <limits.h>
#include <openssl/evp.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

struct Store {
    sqlite3 *db;
    char path[PATH_MAX];
};

typedef struct {
    sqlite3_stmt *s;
    const char *sql;
    Store *st;
} Stmt;

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static int db_err(Store *st, const char *sql, Err *e)
{
    return err_set(e, "%s: %s (in: %.160s)", st->path, sqlite3_errmsg(st->db), sql);
}

static int prep(Stmt *q, Store *st, const char *sql, Err *e)
{
    q->st = st;
    q->sql = sql;
    q->s = NULL;
    if (sqlite3_prepare_v2(st->db, sql, -1, &q->s, NULL) != SQLITE_OK)
        return db_err(st, sql, e);
    return 0;
}

static void fin(Stmt *q)
{
    sqlite3_finalize(q->s);
    q->s = NULL;
}

/* Binds by position: i (int64), d (double, or NULL when `has` is 0), t (text). */
static void bind_i(Stmt *q, int at, int64_t v) { sqlite3_bind_int64(q->s, at, v); }
static void bind_d(Stmt *q, int at, double v) { sqlite3_bind_double(q->s, at, v); }
static void bind_t(Stmt *q, int at, const char *v)
{
    if (v)
        sqlite3_bind_text(q->s, at, v, -1, SQLITE_TRANSIENT);
    else
        sqlite3_bind_null(q->s, at);
}

/* SQLITE_ROW -> 1, SQLITE_DONE -> 0, error -> -1 with the message. */
static int step(Stmt *q, Err *e)
{
    int rc = sqlite3_step(q->s);
    if (rc == SQLITE_ROW)
        return 1;
    if (rc == SQLITE_DONE)
        return 0;
    return db_err(q->st, q->sql, e);
}

static int exec_sql(Store *st, const char *sql, Err *e)
{
    char *msg = NULL;
    if (sqlite3_exec(st->db, sql, NULL, NULL, &msg) != SQLITE_OK) {
        err_set(e, "%s: %s (in: %.160s)", st->path, msg ? msg : sqlite3_errmsg(st->db), sql);
        sqlite3_free(msg);
        return -1;
    }
    return 0;
}

static int begin(Store *st, Err *e) { return exec_sql(st, "BEGIN IMMEDIATE", e); }
static int commit(Store *st, Err *e) { return exec_sql(st, "COMMIT", e); }
static void rollback(Store *st) { sqlite3_exec(st->db, "ROLLBACK", NULL, NULL, NULL); }

/* Makes room for element n of a growing array (NULL and *arr kept on
 * failure). */
static int grow(void **arr, int *cap, int n, size_t size, Err *e)
{
    if (n < *cap)
        return 0;
    int want = *cap ? 2 * *cap : 16;
    void *p = realloc(*arr, (size_t)want * size);
    if (!p)
        return err_set(e, "out of memory reading the results store");
    *arr = p;
    *cap = want;
    return 0;
}

static char *col_text(Stmt *q, int c)
{
    const unsigned char *t = sqlite3_column_text(q->s, c);
    return t ? strdup((const char *)t) : NULL;
}

/* ---- Schema ---------------------------------------------------------------- */

/* migrations[v] takes a store from user_version v to v + 1. Append only. */
static const char *const migrations[STORE_SCHEMA_VERSION] = {
    "CREATE TABLE sweeps ("
    "  id INTEGER PRIMARY KEY,"
    "  sweep_key TEXT NOT NULL UNIQUE,"   /* name plus overrides */
    "  name TEXT NOT NULL,"
    "  title TEXT NOT NULL DEFAULT '',"
    "  file TEXT NOT NULL,"
    "  text TEXT NOT NULL,"               /* the sweep file as it last ran */
    "  text_hash TEXT NOT NULL,"
    "  overrides TEXT NOT NULL DEFAULT '',"
    "  created REAL NOT NULL,"
    "  updated REAL NOT NULL);"
    "CREATE TABLE cells ("
    "  id INTEGER PRIMARY KEY,"
    "  sweep_id INTEGER NOT NULL REFERENCES sweeps(id),"
    "  cell_key TEXT NOT NULL,"           /* canonical config without seed and placement */
    "  config_json TEXT NOT NULL,"
    "  settings TEXT NOT NULL,"
    "  label TEXT NOT NULL,"
    "  row_label TEXT NOT NULL,"
    "  col_label TEXT NOT NULL,"
    "  row_order INTEGER NOT NULL,"
    "  col_order INTEGER NOT NULL,"
    "  ord INTEGER NOT NULL,"             /* position in the file; -1 once it left the file */
    "  repeats INTEGER NOT NULL,"
    "  ref REAL,"
    "  UNIQUE (sweep_id, cell_key));"
    "CREATE TABLE diffs ("
    "  id INTEGER PRIMARY KEY,"
    "  sha256 TEXT NOT NULL UNIQUE,"
    "  text TEXT NOT NULL);"
    "CREATE TABLE runs ("
    "  id INTEGER PRIMARY KEY,"
    "  cell_id INTEGER NOT NULL REFERENCES cells(id),"
    "  repeat INTEGER NOT NULL,"
    "  seed INTEGER NOT NULL,"
    "  state TEXT NOT NULL CHECK (state IN "
    "    ('pending', 'running', 'done', 'failed', 'interrupted')),"
    "  attempts INTEGER NOT NULL DEFAULT 0,"
    "  run_dir TEXT NOT NULL,"
    "  config_json TEXT NOT NULL,"
    "  epochs_total INTEGER NOT NULL,"
    "  epochs_done INTEGER NOT NULL DEFAULT 0,"
    "  host TEXT, pid INTEGER, pid_tag TEXT, device TEXT, backend TEXT,"
    "  started REAL, ended REAL, heartbeat REAL,"
    "  test_err REAL, test_loss REAL,"
    "  failure TEXT,"
    "  code TEXT,"                        /* the version results are grouped by */
    "  build_commit TEXT, build_dirty INTEGER,"
    "  repo_state TEXT, repo_path TEXT, repo_commit TEXT, repo_branch TEXT,"
    "  repo_dirty INTEGER, diff_id INTEGER REFERENCES diffs(id));"
    "CREATE INDEX runs_by_cell ON runs (cell_id, repeat, id);"
    "CREATE INDEX runs_by_state ON runs (state);"
    "CREATE TABLE epochs ("
    "  run_id INTEGER NOT NULL REFERENCES runs(id),"
    "  epoch INTEGER NOT NULL,"
    "  lr REAL, train_loss REAL, train_err REAL, test_loss REAL, test_err REAL,"
    "  seconds REAL, images_per_s REAL,"
    "  PRIMARY KEY (run_id, epoch));",
    /* 2: what each run computed on (the GPU or processor and libraries) */
    "ALTER TABLE runs ADD COLUMN hardware TEXT;",
};

static int migrate(Store *st, Err *e)
{
    if (begin(st, e))
        return -1;
    Stmt q;
    int version = 0;
    if (prep(&q, st, "PRAGMA user_version", e))
        goto fail;
    if (step(&q, e) == 1)
        version = sqlite3_column_int(q.s, 0);
    fin(&q);
    if (version > STORE_SCHEMA_VERSION) {
        err_set(e, "%s has schema version %d, newer than this binary's %d: use a newer "
                "`sweep`, or another --db", st->path, version, STORE_SCHEMA_VERSION);
        goto fail;
    }
    for (int v = version; v < STORE_SCHEMA_VERSION; v++) {
        char pragma[64];
        snprintf(pragma, sizeof pragma, "PRAGMA user_version = %d", v + 1);
        if (exec_sql(st, migrations[v], e) || exec_sql(st, pragma, e))
            goto fail;
    }
    return commit(st, e);
fail:
    rollback(st);
    return -1;
}

/* Switches the store to WAL (kept in the file, so a no-op after its first
 * open). Processes that open a new store together all try the switch; SQLite
 * answers each loser BUSY at once, without the busy handler, because it holds
 * a read lock that would deadlock the winner's write. So the loser retries
 * until the switch is seen, for as long as the busy timeout would wait. */
static int set_wal(Store *st, Err *e)
{
    int rc = SQLITE_BUSY;
    for (int tries = 0; tries < 6000 && (rc & 0xff) == SQLITE_BUSY; tries++) { /* x 10 ms */
        if (tries)
            nanosleep(&(struct timespec){.tv_nsec = 10000000}, NULL);
        rc = sqlite3_exec(st->db, "PRAGMA journal_mode = WAL", NULL, NULL, NULL);
    }
    if (rc != SQLITE_OK)
        return err_set(e, "%s: %s (in: PRAGMA journal_mode = WAL)", st->path,
                       sqlite3_errmsg(st->db));
    return 0;
}

int store_open(Store **out, const char *path, Err *e)
{
    *out = NULL;
    Store *st = calloc(1, sizeof *st);
    if (!st)
        return err_set(e, "out of memory");
    snprintf(st->path, sizeof st->path, "%s", path);
    char dir[PATH_MAX];
    snprintf(dir, sizeof dir, "%s", path);
    if (mkdir_p(dirname(dir), e))
        goto fail;
    if (sqlite3_open_v2(path, &st->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, NULL) !=
        SQLITE_OK) {
        err_set(e, "cannot open the results store %s: %s", path,
                st->db ? sqlite3_errmsg(st->db) : "out of memory");
        goto fail;
    }
    sqlite3_busy_timeout(st->db, 60000);
    /* WAL: readers never block the writer; FULL: a commit survives a crash */
    if (set_wal(st, e) || exec_sql(st, "PRAGMA synchronous = FULL", e) ||
        exec_sql(st, "PRAGMA foreign_keys = ON", e))
        goto fail;
    if (migrate(st, e))
        goto fail;
    *out = st;
    return 0;
fail:
    store_close(st);
    return -1;
}

void store_close(Store *st)
{
    if (!st)
        return;
    sqlite3_close(st->db);
    free(st);
}

/* ---- Processes ------------------------------------------------------------- */

const char *host_name(void)
{
    static char name[256];
    if (!name[0] && gethostname(name, sizeof name - 1) != 0)
        snprintf(name, sizeof name, "unknown");
    return name;
}

static void boot_id(char *buf, int len)
{
    buf[0] = 0;
    FILE *f = fopen("/proc/sys/kernel/random/boot_id", "r");
    if (f) {
        if (fgets(buf, len, f))
            buf[strcspn(buf, "\n")] = 0;
        fclose(f);
    }
}

/* Field 22 of /proc/PID/stat: start time in clock ticks since boot. */
static long long start_ticks(int pid)
{
    char path[64], line[4096];
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    size_t n = fread(line, 1, sizeof line - 1, f);
    fclose(f);
    line[n] = 0;
    char *p = strrchr(line, ')'); /* the command name may hold spaces */
    if (!p)
        return -1;
    long long v = -1;
    int field = 2;
    for (char *tok = strtok(p + 1, " "); tok; tok = strtok(NULL, " "))
        if (++field == 22) {
            v = atoll(tok);
            break;
        }
    return v;
}

void process_tag(int pid, char *buf, int len)
{
    char boot[64];
    boot_id(boot, sizeof boot);
    snprintf(buf, (size_t)len, "%s:%lld", boot, start_ticks(pid));
}

int process_alive(int pid, const char *tag)
{
    if (pid <= 0 || (kill(pid, 0) != 0 && errno == ESRCH))
        return 0;
    if (!tag || !tag[0])
        return 1;
    char now[128];
    process_tag(pid, now, sizeof now);
    return strcmp(now, tag) == 0; /* same boot, same start: not a reused pid */
}

/* ---- Sweeps and cells -------------------------------------------------------- */

static int upsert_sweep(Store *st, const Sweep *sw, int64_t *id, Err *e)
{
    Stmt q;
    double t = now_s();
    if (prep(&q, st,
             "INSERT INTO sweeps (sweep_key, name, title, file, text, text_hash, overrides, "
             "created, updated) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8) "
             "ON CONFLICT (sweep_key) DO UPDATE SET name = ?2, title = ?3, file = ?4, "
             "text = ?5, text_hash = ?6, overrides = ?7, updated = ?8 RETURNING id", e))
        return -1;
    bind_t(&q, 1, sw->id);
    bind_t(&q, 2, sw->name);
    bind_t(&q, 3, sw->title ? sw->title : "");
    bind_t(&q, 4, sw->file);
    bind_t(&q, 5, sw->text);
    bind_t(&q, 6, sw->hash);
    bind_t(&q, 7, sw->overrides ? sw->overrides : "");
    bind_d(&q, 8, t);
    int rc = step(&q, e);
    if (rc == 1)
        *id = sqlite3_column_int64(q.s, 0);
    fin(&q);
    return rc == 1 ? 0 : -1;
}

static int upsert_cell(Store *st, int64_t sweep_id, const SweepCell *c, int ord, int64_t *id,
                       Err *e)
{
    Stmt q;
    char *json = config_to_json(&c->cfg);
    if (!json)
        return err_set(e, "out of memory");
    if (prep(&q, st,
             "INSERT INTO cells (sweep_id, cell_key, config_json, settings, label, row_label, "
             "col_label, row_order, col_order, ord, repeats, ref) VALUES "
             "(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12) "
             "ON CONFLICT (sweep_id, cell_key) DO UPDATE SET config_json = ?3, settings = ?4, "
             "label = ?5, row_label = ?6, col_label = ?7, row_order = ?8, col_order = ?9, "
             "ord = ?10, repeats = ?11, ref = ?12 RETURNING id", e)) {
        free(json);
        return -1;
    }
    bind_i(&q, 1, sweep_id);
    bind_t(&q, 2, c->key);
    bind_t(&q, 3, json);
    bind_t(&q, 4, c->settings);
    bind_t(&q, 5, c->label);
    bind_t(&q, 6, c->row);
    bind_t(&q, 7, c->col);
    bind_i(&q, 8, c->row_order);
    bind_i(&q, 9, c->col_order);
    bind_i(&q, 10, ord);
    bind_i(&q, 11, c->repeats);
    if (c->has_ref)
        bind_d(&q, 12, c->ref);
    else
        sqlite3_bind_null(q.s, 12);
    int rc = step(&q, e);
    if (rc == 1)
        *id = sqlite3_column_int64(q.s, 0);
    fin(&q);
    free(json);
    return rc == 1 ? 0 : -1;
}

/* A run's folder name: readable, unique by run id. */
static void run_folder(char *buf, size_t len, const char *runs_root, const char *sweep_key,
                       int64_t cell_id, int repeat, int64_t run_id)
{
    char safe[200];
    size_t k = 0;
    for (const char *p = sweep_key; *p && k + 1 < sizeof safe; p++)
        safe[k++] = (isalnum((unsigned char)*p) || *p == '-' || *p == '_' || *p == '.') ? *p
                                                                                      : '_';
    safe[k] = 0;
    snprintf(buf, len, "%s/%s/cell%lld-r%d-run%lld", runs_root, safe, (long long)cell_id,
             repeat, (long long)run_id);
}

/* Inserts a pending run of cell at repeat; its config is the cell's with the
 * repeat's seed and the run folder as `out`. */
static int insert_run(Store *st, int64_t cell_id, const char *sweep_key,
                      const char *cell_config, int repeat, const char *runs_root,
                      int64_t *run_id, Err *e)
{
    TrainConfig cfg;
    config_defaults(&cfg);
    if (config_from_json(&cfg, cell_config, e))
        return err_wrap(e, "cell %lld", (long long)cell_id);
    int64_t seed = cfg.seed + repeat;
    Stmt q;
    if (prep(&q, st,
             "INSERT INTO runs (cell_id, repeat, seed, state, run_dir, config_json, "
             "epochs_total) VALUES (?1, ?2, ?3, 'pending', '', '', ?4) RETURNING id", e))
        return -1;
    bind_i(&q, 1, cell_id);
    bind_i(&q, 2, repeat);
    bind_i(&q, 3, seed);
    bind_i(&q, 4, cfg.epochs);
    int rc = step(&q, e);
    if (rc == 1)
        *run_id = sqlite3_column_int64(q.s, 0);
    fin(&q);
    if (rc != 1)
        return -1;
    char dir[PATH_MAX];
    run_folder(dir, sizeof dir, runs_root, sweep_key, cell_id, repeat, *run_id);
    cfg.seed = seed;
    if (strlen(dir) >= sizeof cfg.out)
        return err_set(e, "run folder %s is longer than %zu characters: keep the store in "
                       "a shorter path", dir, sizeof cfg.out - 1);
    memcpy(cfg.out, dir, strlen(dir) + 1);
    char *json = config_to_json(&cfg);
    if (prep(&q, st, "UPDATE runs SET run_dir = ?2, config_json = ?3 WHERE id = ?1", e)) {
        free(json);
        return -1;
    }
    bind_i(&q, 1, *run_id);
    bind_t(&q, 2, dir);
    bind_t(&q, 3, json);
    rc = step(&q, e);
    fin(&q);
    free(json);
    return rc == 0 ? 0 : -1;
}

int store_put_sweep(Store *st, const Sweep *sw, const char *runs_root, int64_t *sweep_id,
                    int64_t *cell_ids, int *created, Err *e)
{
    *created = 0;
    char root[PATH_MAX];
    if (mkdir_p(runs_root, e))
        return -1;
    if (!realpath(runs_root, root))
        return err_set(e, "%s: %s", runs_root, strerror(errno));
    if (begin(st, e))
        return -1;
    Stmt q;
    if (upsert_sweep(st, sw, sweep_id, e))
        goto fail;
    /* cells that left the file keep their runs but leave the layout */
    if (prep(&q, st, "UPDATE cells SET ord = -1 WHERE sweep_id = ?1", e))
        goto fail;
    bind_i(&q, 1, *sweep_id);
    int rc = step(&q, e);
    fin(&q);
    if (rc < 0)
        goto fail;
    for (int i = 0; i < sw->ncells; i++) {
        const SweepCell *c = &sw->cells[i];
        if (upsert_cell(st, *sweep_id, c, i, &cell_ids[i], e))
            goto fail;
        char *json = config_to_json(&c->cfg);
        for (int r = 0; r < c->repeats; r++) {
            if (prep(&q, st, "SELECT 1 FROM runs WHERE cell_id = ?1 AND repeat = ?2", e))
                goto fail_json;
            bind_i(&q, 1, cell_ids[i]);
            bind_i(&q, 2, r);
            rc = step(&q, e);
            fin(&q);
            if (rc < 0)
                goto fail_json;
            if (rc == 1)
                continue;
            int64_t run_id;
            if (insert_run(st, cell_ids[i], sw->id, json, r, root, &run_id, e))
                goto fail_json;
            (*created)++;
        }
        free(json);
        continue;
    fail_json:
        free(json);
        goto fail;
    }
    return commit(st, e);
fail:
    rollback(st);
    return -1;
}

int store_find_sweep(Store *st, const char *name, int64_t *sweep_id, char **sweep_key, Err *e)
{
    *sweep_id = 0;
    if (sweep_key)
        *sweep_key = NULL;
    Stmt q;
    if (prep(&q, st,
             name ? "SELECT id, sweep_key FROM sweeps WHERE sweep_key = ?1 OR name = ?1 "
                    "ORDER BY sweep_key = ?1 DESC, updated DESC LIMIT 1"
                  : "SELECT id, sweep_key FROM sweeps ORDER BY updated DESC LIMIT 1", e))
        return -1;
    if (name)
        bind_t(&q, 1, name);
    int rc = step(&q, e);
    if (rc == 1) {
        *sweep_id = sqlite3_column_int64(q.s, 0);
        if (sweep_key)
            *sweep_key = col_text(&q, 1);
    }
    fin(&q);
    return rc < 0 ? -1 : 0;
}

int store_list_sweeps(Store *st, SweepRec **out, int *n, Err *e)
{
    *out = NULL;
    *n = 0;
    Stmt q;
    if (prep(&q, st, "SELECT id, sweep_key, name, title, file, overrides, updated FROM sweeps "
                     "ORDER BY updated DESC", e))
        return -1;
    int rc, cap = 0;
    while ((rc = step(&q, e)) == 1) {
        if (grow((void **)out, &cap, *n, sizeof **out, e)) {
            rc = -1;
            break;
        }
        SweepRec *s = &(*out)[(*n)++];
        s->id = sqlite3_column_int64(q.s, 0);
        s->key = col_text(&q, 1);
        s->name = col_text(&q, 2);
        s->title = col_text(&q, 3);
        s->file = col_text(&q, 4);
        s->overrides = col_text(&q, 5);
        s->updated = sqlite3_column_double(q.s, 6);
    }
    fin(&q);
    return rc < 0 ? -1 : 0;
}

void sweep_recs_free(SweepRec *s, int n)
{
    for (int i = 0; i < n; i++) {
        free(s[i].key);
        free(s[i].name);
        free(s[i].title);
        free(s[i].file);
        free(s[i].overrides);
    }
    free(s);
}

static int distinct_labels(Store *st, int64_t sweep_id, const char *sql, char ***out, int *n,
                           Err *e)
{
    *out = NULL;
    *n = 0;
    Stmt q;
    if (prep(&q, st, sql, e))
        return -1;
    bind_i(&q, 1, sweep_id);
    int rc, cap = 0;
    while ((rc = step(&q, e)) == 1) {
        if (grow((void **)out, &cap, *n, sizeof **out, e)) {
            rc = -1;
            break;
        }
        (*out)[(*n)++] = col_text(&q, 0);
    }
    fin(&q);
    return rc < 0 ? -1 : 0;
}

int store_layout(Store *st, int64_t sweep_id, char ***rows, int *nrows, char ***cols,
                 int *ncols, Err *e)
{
    if (distinct_labels(st, sweep_id,
                        "SELECT row_label FROM cells WHERE sweep_id = ?1 AND ord >= 0 "
                        "GROUP BY row_label ORDER BY MIN(row_order)", rows, nrows, e))
        return -1;
    return distinct_labels(st, sweep_id,
                           "SELECT col_label FROM cells WHERE sweep_id = ?1 AND ord >= 0 "
                           "GROUP BY col_label ORDER BY MIN(col_order)", cols, ncols, e);
}

int store_cells(Store *st, int64_t sweep_id, CellRec **out, int *n, Err *e)
{
    *out = NULL;
    *n = 0;
    Stmt q;
    if (prep(&q, st, "SELECT id, label, row_label, col_label, config_json, settings, repeats, "
                     "ref FROM cells WHERE sweep_id = ?1 AND ord >= 0 ORDER BY ord", e))
        return -1;
    bind_i(&q, 1, sweep_id);
    int rc, cap = 0;
    while ((rc = step(&q, e)) == 1) {
        if (grow((void **)out, &cap, *n, sizeof **out, e)) {
            rc = -1;
            break;
        }
        CellRec *c = &(*out)[(*n)++];
        c->id = sqlite3_column_int64(q.s, 0);
        c->label = col_text(&q, 1);
        c->row = col_text(&q, 2);
        c->col = col_text(&q, 3);
        c->config_json = col_text(&q, 4);
        c->settings = col_text(&q, 5);
        c->repeats = sqlite3_column_int(q.s, 6);
        c->has_ref = sqlite3_column_type(q.s, 7) != SQLITE_NULL;
        c->ref = sqlite3_column_double(q.s, 7);
    }
    fin(&q);
    return rc < 0 ? -1 : 0;
}

void cell_recs_free(CellRec *c, int n)
{
    for (int i = 0; i < n; i++) {
        free(c[i].label);
        free(c[i].row);
        free(c[i].col);
        free(c[i].config_json);
        free(c[i].settings);
    }
    free(c);
}

/* ---- Runs -------------------------------------------------------------------- */

#define RUN_COLUMNS                                                                     \
    "r.id, r.cell_id, c.sweep_id, r.repeat, r.seed, r.state, r.attempts, s.sweep_key, "  \
    "c.label, c.row_label, c.col_label, r.run_dir, r.config_json, r.host, r.device, "    \
    "r.backend, r.pid_tag, r.failure, r.code, r.build_commit, r.repo_state, r.repo_path, " \
    "r.repo_commit, r.repo_branch, r.build_dirty, r.repo_dirty, r.diff_id, r.pid, "      \
    "r.started, r.ended, r.heartbeat, r.epochs_done, r.epochs_total, r.test_err, "      \
    "r.test_loss, r.hardware FROM runs r JOIN cells c ON c.id = r.cell_id JOIN sweeps s " \
    "ON "                                                                                 \
    "s.id = c.sweep_id "

static void read_run(Stmt *q, RunRec *r)
{
    memset(r, 0, sizeof *r);
    r->id = sqlite3_column_int64(q->s, 0);
    r->cell_id = sqlite3_column_int64(q->s, 1);
    r->sweep_id = sqlite3_column_int64(q->s, 2);
    r->repeat = sqlite3_column_int(q->s, 3);
    r->seed = sqlite3_column_int64(q->s, 4);
    r->state = (RunState)run_state_parse((const char *)sqlite3_column_text(q->s, 5));
    r->attempts = sqlite3_column_int(q->s, 6);
    char **texts[] = {&r->sweep_key, &r->label, &r->row, &r->col, &r->run_dir,
                      &r->config_json, &r->host, &r->device, &r->backend, &r->pid_tag,
                      &r->failure, &r->code, &r->build_commit, &r->repo_state,
                      &r->repo_path, &r->repo_commit, &r->repo_branch};
    for (int i = 0; i < 17; i++)
        *texts[i] = col_text(q, 7 + i);
    r->build_dirty = sqlite3_column_int(q->s, 24);
    r->repo_dirty = sqlite3_column_int(q->s, 25);
    r->diff_id = sqlite3_column_int64(q->s, 26);
    r->pid = sqlite3_column_int(q->s, 27);
    r->started = sqlite3_column_double(q->s, 28);
    r->ended = sqlite3_column_double(q->s, 29);
    r->heartbeat = sqlite3_column_double(q->s, 30);
    r->epochs_done = sqlite3_column_int(q->s, 31);
    r->epochs_total = sqlite3_column_int(q->s, 32);
    r->has_result = sqlite3_column_type(q->s, 33) != SQLITE_NULL;
    r->test_err = sqlite3_column_double(q->s, 33);
    r->test_loss = sqlite3_column_double(q->s, 34);
    r->hardware = col_text(q, 35);
}

void run_rec_free(RunRec *r)
{
    char *texts[] = {r->sweep_key, r->label, r->row, r->col, r->run_dir, r->config_json,
                     r->host, r->device, r->backend, r->pid_tag, r->failure, r->code,
                     r->build_commit, r->repo_state, r->repo_path, r->repo_commit,
                     r->repo_branch, r->hardware};
    for (int i = 0; i < 18; i++)
        free(texts[i]);
    memset(r, 0, sizeof *r);
}

void run_recs_free(RunRec *r, int n)
{
    for (int i = 0; i < n; i++)
        run_rec_free(&r[i]);
    free(r);
}

int store_runs(Store *st, int64_t sweep_id, int64_t cell_id, RunRec **out, int *n, Err *e)
{
    *out = NULL;
    *n = 0;
    Stmt q;
    if (prep(&q, st,
             cell_id ? "SELECT " RUN_COLUMNS "WHERE r.cell_id = ?2 ORDER BY r.id"
                     : "SELECT " RUN_COLUMNS "WHERE c.sweep_id = ?1 ORDER BY c.ord, r.repeat, r.id",
             e))
        return -1;
    bind_i(&q, 1, sweep_id);
    bind_i(&q, 2, cell_id);
    int rc, cap = 0;
    while ((rc = step(&q, e)) == 1) {
        if (grow((void **)out, &cap, *n, sizeof **out, e)) {
            rc = -1;
            break;
        }
        read_run(&q, &(*out)[(*n)++]);
    }
    fin(&q);
    return rc < 0 ? -1 : 0;
}

int store_get_run(Store *st, int64_t run_id, RunRec *out, Err *e)
{
    Stmt q;
    if (prep(&q, st, "SELECT " RUN_COLUMNS "WHERE r.id = ?1", e))
        return -1;
    bind_i(&q, 1, run_id);
    int rc = step(&q, e);
    if (rc == 1)
        read_run(&q, out);
    fin(&q);
    if (rc == 0)
        return err_set(e, "no run %lld in %s", (long long)run_id, st->path);
    return rc < 0 ? -1 : 0;
}

int store_epochs(Store *st, int64_t run_id, EpochRec **out, int *n, Err *e)
{
    *out = NULL;
    *n = 0;
    Stmt q;
    if (prep(&q, st, "SELECT epoch, lr, train_loss, train_err, test_loss, test_err, seconds, "
                     "images_per_s FROM epochs WHERE run_id = ?1 ORDER BY epoch", e))
        return -1;
    bind_i(&q, 1, run_id);
    int rc, cap = 0;
    while ((rc = step(&q, e)) == 1) {
        if (grow((void **)out, &cap, *n, sizeof **out, e)) {
            rc = -1;
            break;
        }
        EpochRec *r = &(*out)[(*n)++];
        r->epoch = sqlite3_column_int(q.s, 0);
        double *v[] = {&r->lr, &r->train_loss, &r->train_err, &r->test_loss, &r->test_err,
                       &r->seconds, &r->images_per_s};
        for (int i = 0; i < 7; i++)
            *v[i] = sqlite3_column_double(q.s, 1 + i);
    }
    fin(&q);
    return rc < 0 ? -1 : 0;
}

int store_diff(Store *st, int64_t diff_id, char **text, Err *e)
{
    *text = NULL;
    Stmt q;
    if (prep(&q, st, "SELECT text FROM diffs WHERE id = ?1", e))
        return -1;
    bind_i(&q, 1, diff_id);
    int rc = step(&q, e);
    if (rc == 1)
        *text = col_text(&q, 0);
    fin(&q);
    return rc < 0 ? -1 : 0;
}

int store_recover(Store *st, int64_t sweep_id, double stale_s, int *n, Err *e)
{
    *n = 0;
    if (begin(st, e))
        return -1;
    Stmt q, u;
    if (prep(&q, st,
             "SELECT r.id, r.host, r.pid, r.pid_tag, r.heartbeat FROM runs r JOIN cells c ON "
             "c.id = r.cell_id WHERE r.state = 'running' AND (?1 = 0 OR c.sweep_id = ?1)", e))
        goto fail;
    if (prep(&u, st,
             "UPDATE runs SET state = 'interrupted', failure = ?2, ended = ?3 WHERE id = ?1", e)) {
        fin(&q);
        goto fail;
    }
    bind_i(&q, 1, sweep_id);
    double t = now_s();
    int rc;
    while ((rc = step(&q, e)) == 1) {
        const char *host = (const char *)sqlite3_column_text(q.s, 1);
        int pid = sqlite3_column_int(q.s, 2);
        const char *tag = (const char *)sqlite3_column_text(q.s, 3);
        double beat = sqlite3_column_double(q.s, 4);
        const char *why = NULL;
        if (host && strcmp(host, host_name()) == 0) {
            if (!process_alive(pid, tag))
                why = "its process is gone (killed, crashed or the machine restarted)";
        } else if (t - beat > stale_s) {
            why = "no heartbeat from its host";
        }
        if (!why)
            continue;
        sqlite3_reset(u.s);
        bind_i(&u, 1, sqlite3_column_int64(q.s, 0));
        bind_t(&u, 2, why);
        bind_d(&u, 3, t);
        if (step(&u, e) < 0) {
            rc = -1;
            break;
        }
        (*n)++;
    }
    fin(&q);
    fin(&u);
    if (rc < 0)
        goto fail;
    return commit(st, e);
fail:
    rollback(st);
    return -1;
}

int store_claim(Store *st, int64_t sweep_id, const int64_t *only, int nonly,
                int max_attempts, int64_t *run_id, Err *e)
{
    *run_id = 0;
    if (begin(st, e))
        return -1;
    Stmt q;
    /* interrupted runs first (they have progress to resume), then in file order */
    if (prep(&q, st,
             "SELECT r.id FROM runs r JOIN cells c ON c.id = r.cell_id WHERE c.sweep_id = ?1 "
             "AND c.ord >= 0 AND r.state IN ('pending', 'interrupted') AND r.attempts < ?2 "
             "AND r.id = (SELECT MAX(id) FROM runs WHERE cell_id = r.cell_id AND "
             "repeat = r.repeat) ORDER BY r.state = 'interrupted' DESC, c.ord, r.repeat", e))
        goto fail;
    bind_i(&q, 1, sweep_id);
    bind_i(&q, 2, max_attempts);
    int rc;
    int64_t found = 0;
    while ((rc = step(&q, e)) == 1) {
        int64_t id = sqlite3_column_int64(q.s, 0);
        int ok = !only;
        for (int i = 0; !ok && i < nonly; i++)
            ok = only[i] == id;
        if (ok) {
            found = id;
            break;
        }
    }
    fin(&q);
    if (rc < 0)
        goto fail;
    if (found) {
        char tag[128];
        process_tag(getpid(), tag, sizeof tag);
        if (prep(&q, st,
                 "UPDATE runs SET state = 'running', attempts = attempts + 1, host = ?2, "
                 "pid = ?3, pid_tag = ?4, heartbeat = ?5, failure = NULL WHERE id = ?1", e))
            goto fail;
        bind_i(&q, 1, found);
        bind_t(&q, 2, host_name());
        bind_i(&q, 3, getpid());
        bind_t(&q, 4, tag);
        bind_d(&q, 5, now_s());
        rc = step(&q, e);
        fin(&q);
        if (rc < 0)
            goto fail;
    }
    if (commit(st, e))
        return -1;
    *run_id = found;
    return 0;
fail:
    rollback(st);
    return -1;
}

static int put_diff(Store *st, const char *text, int64_t *id, Err *e)
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    char hex[2 * EVP_MAX_MD_SIZE + 1];
    if (!EVP_Digest(text, strlen(text), md, &len, EVP_sha256(), NULL))
        return err_set(e, "sha256 failed");
    for (unsigned i = 0; i < len; i++)
        snprintf(hex + 2 * i, 3, "%02x", md[i]);
    Stmt q;
    if (prep(&q, st, "INSERT INTO diffs (sha256, text) VALUES (?1, ?2) ON CONFLICT (sha256) "
                     "DO UPDATE SET sha256 = sha256 RETURNING id", e))
        return -1;
    bind_t(&q, 1, hex);
    bind_t(&q, 2, text);
    int rc = step(&q, e);
    if (rc == 1)
        *id = sqlite3_column_int64(q.s, 0);
    fin(&q);
    return rc == 1 ? 0 : -1;
}

int store_run_started(Store *st, int64_t run_id, int pid, const char *backend,
                      const char *device, const Provenance *p, Err *e)
{
    char code[96], tag[128];
    provenance_code_version(p, code, sizeof code);
    process_tag(pid, tag, sizeof tag);
    if (begin(st, e))
        return -1;
    int64_t diff_id = 0;
    if (p->repo_diff && put_diff(st, p->repo_diff, &diff_id, e))
        goto fail;
    Stmt q;
    /* A resumed attempt on other code makes the run's version "mixed", so
     * that the report never averages it with runs of either version. */
    if (prep(&q, st,
             "UPDATE runs SET state = 'running', host = ?2, pid = ?3, pid_tag = ?4, "
             "backend = ?5, device = ?6, heartbeat = ?7, started = COALESCE(started, ?7), "
             "ended = NULL, failure = NULL, "
             "code = CASE WHEN code IS NULL OR code = ?8 THEN ?8 "
             "  WHEN code LIKE 'mixed:%' THEN code || ',' || ?8 "
             "  ELSE 'mixed:' || code || ',' || ?8 END, "
             "build_commit = ?9, build_dirty = ?10, repo_state = ?11, repo_path = ?12, "
             "repo_commit = ?13, repo_branch = ?14, repo_dirty = ?15, diff_id = ?16 "
             "WHERE id = ?1", e))
        goto fail;
    bind_i(&q, 1, run_id);
    bind_t(&q, 2, host_name());
    bind_i(&q, 3, pid);
    bind_t(&q, 4, tag);
    bind_t(&q, 5, backend);
    bind_t(&q, 6, device);
    bind_d(&q, 7, now_s());
    bind_t(&q, 8, code);
    bind_t(&q, 9, p->build_commit);
    bind_i(&q, 10, p->build_dirty);
    bind_t(&q, 11, p->repo_state);
    bind_t(&q, 12, p->repo_path);
    bind_t(&q, 13, p->repo_commit);
    bind_t(&q, 14, p->repo_branch);
    bind_i(&q, 15, p->repo_dirty);
    if (diff_id)
        bind_i(&q, 16, diff_id);
    else
        sqlite3_bind_null(q.s, 16);
    int rc = step(&q, e);
    fin(&q);
    if (rc < 0)
        goto fail;
    return commit(st, e);
fail:
    rollback(st);
    return -1;
}

int store_run_hardware(Store *st, int64_t run_id, const char *hardware, Err *e)
{
    Stmt q;
    if (prep(&q, st,
             "UPDATE runs SET hardware = CASE WHEN hardware IS NULL OR hardware = ?2 THEN ?2 "
             "  WHEN substr(hardware, -length(?2)) = ?2 THEN hardware "
             "  ELSE hardware || ' // then on ' || ?2 END WHERE id = ?1",
             e))
        return -1;
    bind_i(&q, 1, run_id);
    bind_t(&q, 2, hardware);
    int rc = step(&q, e);
    fin(&q);
    return rc < 0 ? -1 : 0;
}

int store_run_epoch(Store *st, int64_t run_id, const EpochStats *s, Err *e)
{
    if (begin(st, e))
        return -1;
    Stmt q;
    if (prep(&q, st,
             "INSERT OR REPLACE INTO epochs (run_id, epoch, lr, train_loss, train_err, "
             "test_loss, test_err, seconds, images_per_s) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, "
             "?8, ?9)", e))
        goto fail;
    bind_i(&q, 1, run_id);
    bind_i(&q, 2, s->epoch);
    bind_d(&q, 3, s->lr);
    bind_d(&q, 4, s->train_loss);
    bind_d(&q, 5, 100 * s->train_err);
    bind_d(&q, 6, s->test_loss);
    bind_d(&q, 7, 100 * s->test_err);
    bind_d(&q, 8, s->seconds);
    bind_d(&q, 9, s->images_per_s);
    int rc = step(&q, e);
    fin(&q);
    if (rc < 0)
        goto fail;
    /* a redone epoch replaces what came after it too */
    if (prep(&q, st, "DELETE FROM epochs WHERE run_id = ?1 AND epoch > ?2", e))
        goto fail;
    bind_i(&q, 1, run_id);
    bind_i(&q, 2, s->epoch);
    rc = step(&q, e);
    fin(&q);
    if (rc < 0)
        goto fail;
    if (prep(&q, st, "UPDATE runs SET epochs_done = ?2, heartbeat = ?3 WHERE id = ?1", e))
        goto fail;
    bind_i(&q, 1, run_id);
    bind_i(&q, 2, s->epoch);
    bind_d(&q, 3, now_s());
    rc = step(&q, e);
    fin(&q);
    if (rc < 0)
        goto fail;
    return commit(st, e);
fail:
    rollback(st);
    return -1;
}

int store_heartbeat(Store *st, int64_t run_id, Err *e)
{
    Stmt q;
    if (prep(&q, st, "UPDATE runs SET heartbeat = ?2 WHERE id = ?1 AND state = 'running'", e))
        return -1;
    bind_i(&q, 1, run_id);
    bind_d(&q, 2, now_s());
    int rc = step(&q, e);
    fin(&q);
    return rc < 0 ? -1 : 0;
}

int store_run_ended(Store *st, int64_t run_id, RunState state, const char *reason,
                    int has_result, double test_err, double test_loss, Err *e)
{
    Stmt q;
    if (prep(&q, st,
             "UPDATE runs SET state = ?2, failure = ?3, ended = ?4, "
             "test_err = CASE WHEN ?5 THEN ?6 ELSE test_err END, "
             "test_loss = CASE WHEN ?5 THEN ?7 ELSE test_loss END "
             "WHERE id = ?1 AND state = 'running' AND pid = ?8", e))
        return -1;
    bind_i(&q, 1, run_id);
    bind_t(&q, 2, run_state_name(state));
    bind_t(&q, 3, reason);
    bind_d(&q, 4, now_s());
    bind_i(&q, 5, has_result);
    bind_d(&q, 6, test_err);
    bind_d(&q, 7, test_loss);
    bind_i(&q, 8, getpid());
    int rc = begin(st, e) ? -1 : step(&q, e);
    fin(&q);
    if (rc < 0) {
        rollback(st);
        return -1;
    }
    return commit(st, e);
}

int store_set_state(Store *st, int64_t run_id, RunState state, const char *reason, Err *e)
{
    Stmt q;
    if (prep(&q, st, "UPDATE runs SET state = ?2, failure = ?3, ended = ?4 WHERE id = ?1", e))
        return -1;
    bind_i(&q, 1, run_id);
    bind_t(&q, 2, run_state_name(state));
    bind_t(&q, 3, reason);
    bind_d(&q, 4, now_s());
    int rc = begin(st, e) ? -1 : step(&q, e);
    fin(&q);
    if (rc < 0) {
        rollback(st);
        return -1;
    }
    return commit(st, e);
}

int store_requeue(Store *st, int64_t run_id, const char *runs_root, int64_t *new_id, Err *e)
{
    RunRec r;
    if (store_get_run(st, run_id, &r, e))
        return -1;
    int rc = -1;
    *new_id = run_id;
    if (r.state == RUN_RUNNING) {
        err_set(e, "run %lld is running (pid %d on %s)", (long long)run_id, r.pid,
                r.host ? r.host : "?");
        goto done;
    }
    if (begin(st, e))
        goto done;
    Stmt q;
    if (r.state == RUN_DONE) {
        /* a fresh successor; the done run stays as history */
        char root[PATH_MAX], *cfg = NULL;
        if (!realpath(runs_root, root)) {
            err_set(e, "%s: %s", runs_root, strerror(errno));
            goto fail;
        }
        if (prep(&q, st, "SELECT config_json FROM cells WHERE id = ?1", e))
            goto fail;
        bind_i(&q, 1, r.cell_id);
        if (step(&q, e) == 1)
            cfg = col_text(&q, 0);
        fin(&q);
        if (!cfg) {
            err_set(e, "run %lld: its cell is gone", (long long)run_id);
            goto fail;
        }
        int bad = insert_run(st, r.cell_id, r.sweep_key, cfg, r.repeat, root, new_id, e);
        free(cfg);
        if (bad)
            goto fail;
    } else {
        if (prep(&q, st, "UPDATE runs SET state = 'pending', attempts = 0 WHERE id = ?1", e))
            goto fail;
        bind_i(&q, 1, run_id);
        int s = step(&q, e);
        fin(&q);
        if (s < 0)
            goto fail;
    }
    rc = commit(st, e);
    goto done;
fail:
    rollback(st);
done:
    run_rec_free(&r);
    return rc;
}
