/*
 * `sweep run`, `sweep rerun` and the internal `sweep exec-run`.
 *
 * The orchestrator plans a sweep into the results store, then keeps up to
 * --jobs runs going, each in its own child process (`sweep exec-run`, in its
 * own process group, so a crash or a terminal's Ctrl-C reaches the
 * orchestrator first). A run records itself in the store as it goes: its
 * start and provenance, every epoch, its end; the orchestrator records only
 * what a dead child could not (killed, crashed). Claims are transactions, so
 * two orchestrators on one store never run the same run; a run whose process
 * is gone is found by pid (this host) or heartbeat (elsewhere) and resumes
 * from its checkpoint. First Ctrl-C (or SIGTERM): no new runs, running ones
 * checkpoint and stop; second: they are killed. Either way they are left
 * interrupted, to resume.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "backend.h"
#include "checkpoint.h"
#include "commands.h"
#include "data.h"
#include "fetch.h"
#include "model.h"
#include "provenance.h"
#include "store.h"
#include "sweepfile.h"
#include "train.h"

#define MAX_ATTEMPTS 5
#define STALE_S 600.0           /* no heartbeat for this long: the run is gone */
#define HEARTBEAT_S 30

static volatile sig_atomic_t stop_requests = 0;

static void on_stop(int sig)
{
    (void)sig;
    stop_requests++;
}

static double wall(void)
{
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static int ncpus(void)
{
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}

/* The run folders live beside the store: results/sweep.db -> results/runs. */
static void runs_root(const char *db, char *buf, size_t len)
{
    const char *slash = strrchr(db, '/');
    if (slash)
        snprintf(buf, len, "%.*s/runs", (int)(slash - db), db);
    else
        snprintf(buf, len, "runs");
}

/* ---- Data present? ------------------------------------------------------------ */

static int file_exists(const char *path)
{
    struct stat s;
    return stat(path, &s) == 0 && S_ISREG(s.st_mode);
}

/* Before anything runs: each data set the sweep needs is where its runs will
 * look, or the error says how to get it. */
static int check_data(const Sweep *sw, Err *e)
{
    for (int i = 0; i < sw->ncells; i++) {
        const TrainConfig *c = &sw->cells[i].cfg;
        const char *dir = c->data_dir[0] ? c->data_dir : dataset_default_dir(c->dataset);
        const char *name = dataset_name(c->dataset);
        char path[PATH_MAX];
        if (c->dataset == DS_CIFAR10 || c->dataset == DS_CIFAR100) {
            const DataSource *src = data_source(name);
            for (int f = 0; src && src->files[f]; f++) {
                if (!strstr(src->files[f], ".bin"))
                    continue;
                snprintf(path, sizeof path, "%s/%s", dir, src->files[f]);
                if (!file_exists(path))
                    return err_set(e, "%s:%d: the %s data is missing (%s not found); fetch it "
                                   "with `sweep data fetch %s`%s", sw->file, sw->cells[i].line,
                                   name, path, name,
                                   c->data_dir[0] ? " --dir and point data_dir at it" : "");
            }
        } else if (c->dataset == DS_FASHION_MNIST || c->dataset == DS_MNIST) {
            static const char *const idx[] = {"train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                                              "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"};
            for (int f = 0; f < 4; f++) {
                char gz[PATH_MAX + 8];
                snprintf(path, sizeof path, "%s/%s", dir, idx[f]);
                snprintf(gz, sizeof gz, "%s.gz", path);
                if (!file_exists(path) && !file_exists(gz))
                    return err_set(e, "%s:%d: the %s data is missing (%s[.gz] not found): %s",
                                   sw->file, sw->cells[i].line, name, path,
                                   dataset_source(c->dataset));
            }
        }
    }
    return 0;
}

/* ---- Children ----------------------------------------------------------------- */

typedef struct {
    pid_t pid;
    int64_t run_id;
    int last_epoch;             /* last epoch announced (plain log lines) */
    int gpu;                    /* the GPU it runs on (--gpus), -1 for the CPU */
} Child;

typedef struct {
    Store *st;
    const char *db;
    int64_t sweep_id;
    const char *sweep_key;
    const int64_t *only;        /* rerun: just these runs */
    int nonly;
    int jobs, threads;
    const int *gpus;            /* --gpus: one run per listed GPU; NULL: the CPU */
    int tty;
    Child *kids;
    int nkids;
    int started, done, failed, interrupted;
    int drawn;                  /* lines of the live display on screen */
    double t0;
} Sched;

static int spawn(Sched *S, int64_t run_id, Err *e)
{
    char self[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n <= 0)
        return err_set(e, "cannot find the sweep binary: %s", strerror(errno));
    self[n] = 0;
    RunRec r;
    if (store_get_run(S->st, run_id, &r, e))
        return -1;
    char log[PATH_MAX + 16], runarg[32], thr[32], dev[32];
    if (mkdir_p(r.run_dir, e)) {
        run_rec_free(&r);
        return -1;
    }
    snprintf(log, sizeof log, "%s/output.log", r.run_dir);
    snprintf(runarg, sizeof runarg, "%lld", (long long)run_id);
    snprintf(thr, sizeof thr, "%d", S->threads);
    run_rec_free(&r);
    /* the first listed GPU that no running child holds */
    int gpu = -1;
    if (S->gpus)
        for (int g = 0; g < S->jobs && gpu < 0; g++) {
            int busy = 0;
            for (int i = 0; i < S->nkids; i++)
                busy |= S->kids[i].gpu == S->gpus[g];
            if (!busy)
                gpu = S->gpus[g];
        }
    snprintf(dev, sizeof dev, "%d", gpu);
    pid_t pid = fork();
    if (pid < 0)
        return err_set(e, "fork: %s", strerror(errno));
    if (pid == 0) {
        setpgid(0, 0);
        signal(SIGINT, SIG_DFL);
        signal(SIGTERM, SIG_DFL);
        int fd = open(log, O_WRONLY | O_CREAT | O_APPEND, 0666);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
            close(fd);
        }
        int null = open("/dev/null", O_RDONLY);
        if (null >= 0) {
            dup2(null, 0);
            close(null);
        }
        if (gpu >= 0)
            execl(self, self, "exec-run", "--db", S->db, "--run", runarg, "--threads", thr,
                  "--device", dev, (char *)NULL);
        else
            execl(self, self, "exec-run", "--db", S->db, "--run", runarg, "--threads", thr,
                  (char *)NULL);
        _exit(127);
    }
    setpgid(pid, pid);
    Child *k = &S->kids[S->nkids++];
    k->pid = pid;
    k->run_id = run_id;
    k->last_epoch = 0;
    k->gpu = gpu;
    S->started++;
    return 0;
}

static const char *signal_name(int sig)
{
    const char *s = strsignal(sig);
    return s ? s : "?";
}

/* After a child exits: its own record stands if it made one; otherwise the
 * orchestrator records why it ended. */
static void reap(Sched *S, Child *k, int status)
{
    Err e = {{0}};
    RunRec r;
    if (store_get_run(S->st, k->run_id, &r, &e)) {
        fprintf(stderr, "sweep run: %s\n", e.msg);
        return;
    }
    char why[PATH_MAX + 160] = "";
    if (r.state == RUN_RUNNING) {
        RunState to = RUN_FAILED;
        if (WIFSIGNALED(status)) {
            int sig = WTERMSIG(status);
            if (sig == SIGKILL || sig == SIGTERM || sig == SIGINT || sig == SIGHUP) {
                to = RUN_INTERRUPTED;
                snprintf(why, sizeof why, "killed by signal %d (%s)%s", sig, signal_name(sig),
                         sig == SIGKILL ? "; if nobody killed it, maybe out of memory" : "");
            } else {
                snprintf(why, sizeof why, "crashed: signal %d (%s); see %s/output.log", sig,
                         signal_name(sig), r.run_dir);
            }
        } else {
            snprintf(why, sizeof why, "exited with status %d before recording its end; see "
                     "%s/output.log", WEXITSTATUS(status), r.run_dir);
        }
        if (store_set_state(S->st, k->run_id, to, why, &e))
            fprintf(stderr, "sweep run: %s\n", e.msg);
        r.state = to;
    }
    if (r.state == RUN_DONE)
        S->done++;
    else if (r.state == RUN_FAILED)
        S->failed++;
    else if (r.state == RUN_INTERRUPTED)
        S->interrupted++;
    {
        /* a line per finished run; on a terminal, above the live display */
        if (S->tty && S->drawn) {
            printf("\033[%dF\033[J", S->drawn);
            S->drawn = 0;
        }
        RunRec now;
        if (store_get_run(S->st, k->run_id, &now, &e) == 0) {
            if (now.state == RUN_DONE)
                printf("run %lld %s seed %lld: done, test error %.2f%%\n", (long long)now.id,
                       now.label, (long long)now.seed, now.test_err);
            else
                printf("run %lld %s seed %lld: %s%s%s\n", (long long)now.id, now.label,
                       (long long)now.seed, run_state_name(now.state),
                       now.failure ? ": " : "", now.failure ? now.failure : "");
            run_rec_free(&now);
        }
        fflush(stdout);
    }
    run_rec_free(&r);
}

static void fmt_duration(double s, char *buf, size_t len)
{
    if (!(s >= 0) || s > 1e8)
        snprintf(buf, len, "?");
    else if (s >= 3600)
        snprintf(buf, len, "%dh%02dm", (int)(s / 3600), (int)fmod(s / 60, 60));
    else if (s >= 60)
        snprintf(buf, len, "%dm%02ds", (int)(s / 60), (int)fmod(s, 60));
    else
        snprintf(buf, len, "%.0fs", s);
}

/* Progress of the sweep's runs (or the rerun's): counts, and the time left
 * from the epochs measured so far. */
static void progress(Sched *S, char *line, size_t len, RunRec **runs_out, int *nruns_out)
{
    Err e = {{0}};
    RunRec *runs = NULL;
    int n = 0;
    *runs_out = NULL;
    *nruns_out = 0;
    if (store_runs(S->st, S->sweep_id, 0, &runs, &n, &e)) {
        snprintf(line, len, "(store: %.400s)", e.msg);
        return;
    }
    int count[RUN_NSTATES] = {0}, total = 0;
    double left_epochs = 0, secs = 0;
    int measured = 0;
    for (int i = 0; i < n; i++) {
        RunRec *r = &runs[i];
        int in_plan = !S->only;
        for (int j = 0; j < S->nonly; j++)
            in_plan |= S->only[j] == r->id;
        /* only the latest run of each (cell, repeat) counts */
        int latest = 1;
        for (int j = i + 1; j < n; j++)
            if (runs[j].cell_id == r->cell_id && runs[j].repeat == r->repeat)
                latest = 0;
        if (!in_plan || !latest)
            continue;
        total++;
        count[r->state]++;
        if (r->state != RUN_DONE && r->state != RUN_FAILED)
            left_epochs += r->epochs_total - r->epochs_done;
        if (r->epochs_done > 0 && r->started > 0) {
            double t = (r->state == RUN_RUNNING ? wall() : r->ended) - r->started;
            if (t > 0) {
                secs += t / r->epochs_done;
                measured++;
            }
        }
    }
    char eta[32] = "?";
    if (measured)
        fmt_duration(left_epochs * (secs / measured) / (S->jobs > 0 ? S->jobs : 1), eta,
                     sizeof eta);
    snprintf(line, len, "%s: %d/%d done, %d running, %d failed, %d interrupted, %d pending; "
             "ETA %s", S->sweep_key, count[RUN_DONE], total, count[RUN_RUNNING],
             count[RUN_FAILED], count[RUN_INTERRUPTED], count[RUN_PENDING], eta);
    *runs_out = runs;
    *nruns_out = n;
}

/* The live display on a terminal; plain lines (one per new epoch) otherwise. */
static void show(Sched *S)
{
    char head[512];
    RunRec *runs;
    int n;
    progress(S, head, sizeof head, &runs, &n);
    Err e = {{0}};
    if (S->tty) {
        if (S->drawn)
            printf("\033[%dF\033[J", S->drawn);
        printf("%s\n", head);
        S->drawn = 1;
    }
    for (int i = 0; i < S->nkids; i++) {
        Child *k = &S->kids[i];
        RunRec *r = NULL;
        for (int j = 0; j < n; j++)
            if (runs[j].id == k->run_id)
                r = &runs[j];
        if (!r)
            continue;
        EpochRec *ep = NULL;
        int nep = 0;
        store_epochs(S->st, r->id, &ep, &nep, &e);
        EpochRec *last = nep ? &ep[nep - 1] : NULL;
        char test[32] = "-", speed[32] = "-";
        if (last) {
            snprintf(test, sizeof test, "%.2f%%", last->test_err);
            snprintf(speed, sizeof speed, "%.0f img/s", last->images_per_s);
        }
        if (S->tty) {
            printf("  run %-5lld %-34.34s seed %-3lld epoch %5d/%-5d test err %-8s %s\n",
                   (long long)r->id, r->label, (long long)r->seed, r->epochs_done,
                   r->epochs_total, test, speed);
            S->drawn++;
        } else if (last && last->epoch > k->last_epoch) {
            printf("run %lld %s seed %lld: epoch %d/%d test error %s, %s\n", (long long)r->id,
                   r->label, (long long)r->seed, last->epoch, r->epochs_total, test, speed);
            k->last_epoch = last->epoch;
        }
        free(ep);
    }
    fflush(stdout);
    run_recs_free(runs, n);
}

/* Runs the claimable runs of the sweep (or `only`) until none is left. */
static int schedule(Sched *S, Err *e)
{
    S->kids = calloc((size_t)S->jobs, sizeof *S->kids);
    S->t0 = wall();
    double last_show = 0;
    int handled_stops = 0, rc = 0;
    for (;;) {
        if (stop_requests > handled_stops) {
            handled_stops = stop_requests;
            int sig = handled_stops == 1 ? SIGTERM : SIGKILL;
            if (S->tty && S->drawn) {
                printf("\033[%dF\033[J", S->drawn);
                S->drawn = 0;
            }
            if (S->nkids)
                printf(handled_stops == 1
                           ? "stopping: %d running runs checkpoint and stop (again to kill them)\n"
                           : "killing %d runs; they resume from their last checkpoint\n",
                       S->nkids);
            fflush(stdout);
            for (int i = 0; i < S->nkids; i++)
                kill(-S->kids[i].pid, sig);
        }
        while (!stop_requests && S->nkids < S->jobs) {
            int64_t id;
            if (store_claim(S->st, S->sweep_id, S->only, S->nonly, MAX_ATTEMPTS, &id, e))
                return -1;
            if (!id)
                break;
            if (spawn(S, id, e)) {
                store_set_state(S->st, id, RUN_INTERRUPTED, "could not start", e);
                return -1;
            }
        }
        if (S->nkids == 0)
            break;
        int status;
        pid_t pid = waitpid(-1, &status, WNOHANG);
        if (pid > 0) {
            for (int i = 0; i < S->nkids; i++)
                if (S->kids[i].pid == pid) {
                    reap(S, &S->kids[i], status);
                    S->kids[i] = S->kids[--S->nkids];
                    break;
                }
            continue;
        }
        if (wall() - last_show >= 1.0) {
            show(S);
            last_show = wall();
        }
        sleep_s(0.2);
    }
    if (S->tty && S->drawn) {
        printf("\033[%dF\033[J", S->drawn);
        S->drawn = 0;
    }
    free(S->kids);
    S->kids = NULL;
    if (stop_requests)
        rc = 1;
    return rc;
}

/* ---- Options ------------------------------------------------------------------ */

typedef struct {
    const char *db, *file, *sweep;
    char *sets[64];
    int nsets;
    char *cells[64];
    int ncells;
    int jobs, dry_run, failed, interrupted, done;
    int gpus[64], ngpus;        /* --gpus 0,1,...: one run per GPU */
} Opts;

static int want_value(int argc, char **argv, int *i, const char **out, const char *cmd)
{
    if (*i + 1 >= argc) {
        fprintf(stderr, "sweep %s: %s needs a value\n", cmd, argv[*i]);
        return -1;
    }
    *out = argv[++*i];
    return 0;
}

/* "0,1,3": distinct GPU ordinals */
static int parse_gpus(Opts *o, const char *v, const char *cmd)
{
    const char *p = v;
    o->ngpus = 0;
    for (;;) {
        char *end;
        long g = strtol(p, &end, 10);
        if (end == p || g < 0 || g > 1023 || (*end && *end != ',')) {
            fprintf(stderr, "sweep %s: bad value '%s' for --gpus: expected GPU numbers such as "
                            "0,1,2\n", cmd, v);
            return -1;
        }
        for (int i = 0; i < o->ngpus; i++)
            if (o->gpus[i] == g) {
                fprintf(stderr, "sweep %s: --gpus %s lists GPU %ld twice\n", cmd, v, g);
                return -1;
            }
        if (o->ngpus == 64) {
            fprintf(stderr, "sweep %s: --gpus lists more than 64 GPUs\n", cmd);
            return -1;
        }
        o->gpus[o->ngpus++] = (int)g;
        if (!*end)
            return 0;
        p = end + 1;
    }
}

static int parse_opts(Opts *o, int argc, char **argv, const char *cmd, int want_file)
{
    memset(o, 0, sizeof *o);
    o->db = DEFAULT_DB;
    o->jobs = 1;
    int jobs_given = 0;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i], *v;
        if (strcmp(a, "--db") == 0) {
            if (want_value(argc, argv, &i, &o->db, cmd))
                return -1;
        } else if (strcmp(a, "--jobs") == 0 || strcmp(a, "-j") == 0) {
            if (want_value(argc, argv, &i, &v, cmd))
                return -1;
            char *end;
            long n = strtol(v, &end, 10);
            if (*end || n < 1 || n > 1024) {
                fprintf(stderr, "sweep %s: bad value '%s' for --jobs: expected 1..1024\n", cmd, v);
                return -1;
            }
            o->jobs = (int)n;
            jobs_given = 1;
        } else if (strcmp(a, "--gpus") == 0) {
            if (want_value(argc, argv, &i, &v, cmd) || parse_gpus(o, v, cmd))
                return -1;
        } else if (strcmp(a, "--set") == 0 || strcmp(a, "--cell") == 0) {
            int set = strcmp(a, "--set") == 0;
            int *count = set ? &o->nsets : &o->ncells;
            if (want_value(argc, argv, &i, &v, cmd))
                return -1;
            if (*count == 64) {
                fprintf(stderr, "sweep %s: more than 64 %s options\n", cmd, a);
                return -1;
            }
            (set ? o->sets : o->cells)[(*count)++] = (char *)v;
        } else if (strcmp(a, "--sweep") == 0) {
            if (want_value(argc, argv, &i, &o->sweep, cmd))
                return -1;
        } else if (strcmp(a, "--dry-run") == 0) {
            o->dry_run = 1;
        } else if (strcmp(a, "--failed") == 0) {
            o->failed = 1;
        } else if (strcmp(a, "--interrupted") == 0) {
            o->interrupted = 1;
        } else if (strcmp(a, "--done") == 0) {
            o->done = 1;
        } else if (a[0] == '-') {
            fprintf(stderr, "sweep %s: unknown option '%s'\n", cmd, a);
            return -1;
        } else if (want_file && !o->file) {
            o->file = a;
        } else {
            fprintf(stderr, "sweep %s: unexpected argument '%s'\n", cmd, a);
            return -1;
        }
    }
    if (want_file && !o->file) {
        fprintf(stderr, "usage: sweep run FILE.lua [--db PATH] [--jobs N | --gpus 0,1,...] "
                        "[--set key=value ...] [--dry-run]\n");
        return -1;
    }
    if (o->ngpus && !backend_find("cuda")) {
        fprintf(stderr, "sweep %s: --gpus needs the cuda backend, which this binary does not "
                        "have (built without CUDA); use --jobs N for the CPU\n", cmd);
        return -1;
    }
    if (o->ngpus) {
        if (jobs_given) {
            fprintf(stderr, "sweep %s: --jobs and --gpus both given; --gpus runs one run per "
                            "listed GPU, so give one or the other\n", cmd);
            return -1;
        }
        o->jobs = o->ngpus;
    }
    return 0;
}

/* CPU threads per run: the cores shared by the runs; a GPU run needs few */
static int jobs_threads(const Opts *o)
{
    int t = ncpus() / o->jobs;
    return t > 0 ? t : 1;
}

/* ---- sweep run ------------------------------------------------------------------ */

static void print_plan(const Sweep *sw, Store *st, int64_t sweep_id)
{
    Err e = {{0}};
    RunRec *runs = NULL;
    int n = 0;
    if (st && sweep_id)
        store_runs(st, sweep_id, 0, &runs, &n, &e);
    printf("%s (%s): %d cells, %d runs%s%s\n", sw->id, sw->file, sw->ncells, sweep_nruns(sw),
           sw->overrides[0] ? "; overrides: " : "", sw->overrides);
    int todo_total = 0, done_total = 0;
    double macs_todo = 0;
    printf("  %-40s %-8s %5s %5s %5s  %s\n", "cell", "seeds", "done", "to do", "failed",
           "reference");
    for (int i = 0; i < sw->ncells; i++) {
        const SweepCell *c = &sw->cells[i];
        int done = 0, failed = 0;
        for (int j = 0; j < n; j++) {
            if (strcmp(runs[j].label, c->label) != 0 || runs[j].repeat >= c->repeats)
                continue;
            int latest = 1;
            for (int k = j + 1; k < n; k++)
                if (runs[k].cell_id == runs[j].cell_id && runs[k].repeat == runs[j].repeat)
                    latest = 0;
            if (!latest)
                continue;
            done += runs[j].state == RUN_DONE;
            failed += runs[j].state == RUN_FAILED;
        }
        int todo = c->repeats - done - failed;
        todo_total += todo;
        done_total += done;
        ModelSpec spec;
        int classes = c->cfg.dataset == DS_CIFAR100 ? 100 : 10;
        int ch = (c->cfg.dataset == DS_FASHION_MNIST || c->cfg.dataset == DS_MNIST) ? 1 : 3;
        int hw = ch == 1 ? 28 : 32;
        config_model_spec(&c->cfg, classes, ch, hw, hw, &spec);
        Model m;
        Err me = {{0}};
        if (model_build(&m, &spec, &me) == 0) {
            int images = c->cfg.train_subset > 0 ? c->cfg.train_subset
                         : ch == 1                 ? 60000
                                                   : 50000;
            /* forward + backward = 3x forward; plus evaluation of 10,000 per epoch */
            macs_todo += (double)todo * c->cfg.epochs * model_macs(&m) *
                         (3.0 * images + 10000.0);
            model_free(&m);
        }
        char ref[32] = "";
        if (c->has_ref)
            snprintf(ref, sizeof ref, "%.2f%%", c->ref);
        printf("  %-40.40s %-8d %5d %5d %5d  %s\n", c->label, c->repeats, done, todo, failed,
               ref);
    }
    static const char *const units[] = {"", "k", "M", "G", "T", "P", "E", "Z"};
    double flop = 2.0 * macs_todo;
    int u = 0;
    while (flop >= 1000 && u < 7) {
        flop /= 1000;
        u++;
    }
    printf("%d runs done, %d to run: about %.3g %sFLOP of training and evaluation "
           "(at 10 TFLOP/s sustained, %.3g hours)\n", done_total, todo_total, flop, units[u],
           2.0 * macs_todo / 1e13 / 3600);
    run_recs_free(runs, n);
}

int cmd_run(int argc, char **argv)
{
    Opts o;
    if (parse_opts(&o, argc, argv, "run", 1))
        return EXIT_USAGE;
    Err e = {{0}};
    Sweep sw;
    if (sweep_load(&sw, o.file, o.sets, o.nsets, &e)) {
        fprintf(stderr, "%s\n", e.msg);
        return EXIT_USAGE;
    }
    int rc = EXIT_FAIL;
    Store *st = NULL;
    if (o.dry_run) {
        /* reads an existing store; creates nothing */
        int64_t sid = 0;
        if (access(o.db, F_OK) == 0 && store_open(&st, o.db, &e) == 0)
            store_find_sweep(st, sw.id, &sid, NULL, &e);
        print_plan(&sw, st, sid);
        store_close(st);
        sweep_free(&sw);
        return EXIT_OK;
    }
    if (check_data(&sw, &e)) {
        fprintf(stderr, "sweep run: %s\n", e.msg);
        sweep_free(&sw);
        return EXIT_FAIL;
    }
    char root[PATH_MAX];
    runs_root(o.db, root, sizeof root);
    int64_t sweep_id, *cell_ids = calloc((size_t)sw.ncells, sizeof *cell_ids);
    int created = 0, recovered = 0;
    if (store_open(&st, o.db, &e) ||
        store_put_sweep(st, &sw, root, &sweep_id, cell_ids, &created, &e) ||
        store_recover(st, sweep_id, STALE_S, &recovered, &e)) {
        fprintf(stderr, "sweep run: %s\n", e.msg);
        goto done;
    }
    if (recovered)
        printf("%d runs whose process was gone are marked interrupted and will resume\n",
               recovered);
    signal(SIGINT, on_stop);
    signal(SIGTERM, on_stop);
    Sched S = {0};
    S.st = st;
    S.db = o.db;
    S.sweep_id = sweep_id;
    S.sweep_key = sw.id;
    S.jobs = o.jobs;
    S.gpus = o.ngpus ? o.gpus : NULL;
    S.threads = jobs_threads(&o);
    S.tty = isatty(STDOUT_FILENO);
    printf("%s: %d cells, %d runs (%d new) in %s; %d at a time, %d threads each\n", sw.id,
           sw.ncells, sweep_nruns(&sw), created, o.db, S.jobs, S.threads);
    fflush(stdout);
    if (schedule(&S, &e) < 0) {
        fprintf(stderr, "sweep run: %s\n", e.msg);
        goto done;
    }
    char line[512];
    RunRec *runs;
    int n;
    progress(&S, line, sizeof line, &runs, &n);
    int failed = 0, capped = 0;
    for (int i = 0; i < n; i++) {
        failed += runs[i].state == RUN_FAILED;
        capped += runs[i].state == RUN_INTERRUPTED && runs[i].attempts >= MAX_ATTEMPTS;
    }
    run_recs_free(runs, n);
    printf("%s\n", line);
    if (failed)
        printf("%d failed runs are not retried by `sweep run`: `sweep status` says why, "
               "`sweep rerun --failed` retries them\n", failed);
    if (capped)
        printf("%d interrupted runs reached %d attempts: `sweep rerun --interrupted` retries "
               "them\n", capped, MAX_ATTEMPTS);
    rc = stop_requests ? EXIT_INTERRUPTED : failed ? EXIT_FAIL : EXIT_OK;
done:
    free(cell_ids);
    store_close(st);
    sweep_free(&sw);
    return rc;
}

/* ---- sweep rerun ---------------------------------------------------------------- */

/* Does the run's config have every key=value of the --cell filters? */
static int cell_matches(const RunRec *r, char **cells, int ncells, Err *e)
{
    TrainConfig cfg, want;
    config_defaults(&cfg);
    if (config_from_json(&cfg, r->config_json, e))
        return -1;
    for (int i = 0; i < ncells; i++) {
        const char *eq = strchr(cells[i], '=');
        if (!eq)
            return err_set(e, "--cell %s: expected key=value", cells[i]);
        char key[64];
        snprintf(key, sizeof key, "%.*s", (int)(eq - cells[i]), cells[i]);
        want = cfg;
        if (config_set(&want, cells[i], e))
            return err_wrap(e, "--cell");
        for (int k = 0; k < config_nkeys(); k++) {
            if (strcmp(config_key_name(k), key) != 0)
                continue;
            char a[600], b[600];
            config_key_value(&cfg, k, a, sizeof a);
            config_key_value(&want, k, b, sizeof b);
            if (strcmp(a, b) != 0)
                return 0;
        }
    }
    return 1;
}

int cmd_rerun(int argc, char **argv)
{
    Opts o;
    if (parse_opts(&o, argc, argv, "rerun", 0))
        return EXIT_USAGE;
    if (!o.failed && !o.interrupted && !o.done)
        o.failed = o.interrupted = 1;
    Err e = {{0}};
    Store *st = NULL;
    int rc = EXIT_FAIL;
    int64_t sweep_id = 0, *only = NULL;
    char *key = NULL;
    RunRec *runs = NULL;
    int n = 0, nonly = 0, recovered;
    if (access(o.db, F_OK) != 0) {
        fprintf(stderr, "sweep rerun: no results store at %s\n", o.db);
        return EXIT_USAGE;
    }
    if (store_open(&st, o.db, &e) || store_find_sweep(st, o.sweep, &sweep_id, &key, &e))
        goto fail;
    if (!sweep_id) {
        fprintf(stderr, "sweep rerun: no sweep %s in %s\n", o.sweep ? o.sweep : "at all", o.db);
        rc = EXIT_USAGE;
        goto done;
    }
    if (store_recover(st, sweep_id, STALE_S, &recovered, &e) ||
        store_runs(st, sweep_id, 0, &runs, &n, &e))
        goto fail;
    only = calloc((size_t)n + 1, sizeof *only);
    char root[PATH_MAX];
    runs_root(o.db, root, sizeof root);
    for (int i = 0; i < n; i++) {
        RunRec *r = &runs[i];
        int latest = 1;
        for (int j = i + 1; j < n; j++)
            if (runs[j].cell_id == r->cell_id && runs[j].repeat == r->repeat)
                latest = 0;
        int want = (o.failed && r->state == RUN_FAILED) ||
                   (o.interrupted && r->state == RUN_INTERRUPTED) ||
                   (o.done && r->state == RUN_DONE);
        if (!latest || !want)
            continue;
        int m = cell_matches(r, o.cells, o.ncells, &e);
        if (m < 0) {
            fprintf(stderr, "sweep rerun: %s\n", e.msg);
            rc = EXIT_USAGE;
            goto done;
        }
        if (!m)
            continue;
        if (store_requeue(st, r->id, root, &only[nonly], &e))
            goto fail;
        printf("run %lld %s seed %lld (%s)%s\n", (long long)r->id, r->label, (long long)r->seed,
               run_state_name(r->state),
               r->state == RUN_DONE ? ": runs again as a new run" : ": resumes from its checkpoint");
        nonly++;
    }
    if (!nonly) {
        printf("nothing to rerun in %s\n", key);
        rc = EXIT_OK;
        goto done;
    }
    signal(SIGINT, on_stop);
    signal(SIGTERM, on_stop);
    Sched S = {0};
    S.st = st;
    S.db = o.db;
    S.sweep_id = sweep_id;
    S.sweep_key = key;
    S.only = only;
    S.nonly = nonly;
    S.jobs = o.jobs;
    S.gpus = o.ngpus ? o.gpus : NULL;
    S.threads = jobs_threads(&o);
    S.tty = isatty(STDOUT_FILENO);
    if (schedule(&S, &e) < 0)
        goto fail;
    rc = stop_requests ? EXIT_INTERRUPTED : S.failed ? EXIT_FAIL : EXIT_OK;
    goto done;
fail:
    fprintf(stderr, "sweep rerun: %s\n", e.msg);
done:
    run_recs_free(runs, n);
    free(only);
    free(key);
    store_close(st);
    return rc;
}

/* ---- sweep exec-run: one run in its own process ------------------------------- */

typedef struct {
    const char *db;
    int64_t run_id;
    Store *st;                  /* the run's own connection (main thread) */
    int has_last;
    EpochStats last;
    pthread_mutex_t lock;
    pthread_cond_t quit;
    int stopping;
} ExecCtx;

static void on_epoch(void *ctx, const EpochStats *s)
{
    ExecCtx *x = ctx;
    Err e = {{0}};
    x->last = *s;
    x->has_last = 1;
    if (store_run_epoch(x->st, x->run_id, s, &e))
        fprintf(stderr, "sweep exec-run: recording epoch %d: %s (it stays in log.jsonl)\n",
                s->epoch, e.msg);
}

static void on_start(void *ctx, const char *hardware)
{
    ExecCtx *x = ctx;
    Err e = {{0}};
    if (hardware[0] && store_run_hardware(x->st, x->run_id, hardware, &e))
        fprintf(stderr, "sweep exec-run: recording what the run computes on: %s (it stays in "
                        "log.jsonl)\n",
                e.msg);
}

/* Beats every HEARTBEAT_S seconds on a connection of its own. */
static void *heartbeat(void *arg)
{
    ExecCtx *x = arg;
    Store *st = NULL;
    Err e = {{0}};
    if (store_open(&st, x->db, &e)) {
        fprintf(stderr, "sweep exec-run: heartbeat: %s\n", e.msg);
        return NULL;
    }
    pthread_mutex_lock(&x->lock);
    while (!x->stopping) {
        struct timespec t;
        clock_gettime(CLOCK_REALTIME, &t);
        t.tv_sec += HEARTBEAT_S;
        pthread_cond_timedwait(&x->quit, &x->lock, &t);
        if (x->stopping)
            break;
        pthread_mutex_unlock(&x->lock);
        if (store_heartbeat(st, x->run_id, &e))
            fprintf(stderr, "sweep exec-run: heartbeat: %s\n", e.msg);
        pthread_mutex_lock(&x->lock);
    }
    pthread_mutex_unlock(&x->lock);
    store_close(st);
    return NULL;
}

static void exec_signal(int sig)
{
    if (train_interrupt)
        signal(sig, SIG_DFL), raise(sig);
    train_interrupt = 1;
}

int cmd_exec_run(int argc, char **argv)
{
    const char *db = NULL;
    int64_t run_id = 0;
    int threads = 0, device = -1;
    for (int i = 0; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--db") == 0)
            db = argv[i + 1];
        else if (strcmp(argv[i], "--run") == 0)
            run_id = atoll(argv[i + 1]);
        else if (strcmp(argv[i], "--threads") == 0)
            threads = atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--device") == 0)
            device = atoi(argv[i + 1]);
    }
    if (!db || run_id <= 0) {
        fprintf(stderr, "usage: sweep exec-run --db PATH --run ID [--threads N] [--device GPU] "
                        "(internal)\n");
        return EXIT_USAGE;
    }
    signal(SIGINT, exec_signal);
    signal(SIGTERM, exec_signal);
    Err e = {{0}};
    ExecCtx x = {db, run_id, NULL, 0, {0}, PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0};
    Provenance prov = {0};
    RunRec r = {0};
    int rc = EXIT_FAIL, started = 0;
    pthread_t beat;
    int beating = 0;
    if (store_open(&x.st, db, &e) || store_get_run(x.st, run_id, &r, &e))
        goto fail;
    if (r.state != RUN_RUNNING) {
        err_set(&e, "run %lld is %s, not claimed for running", (long long)run_id,
                run_state_name(r.state));
        goto fail;
    }
    TrainConfig cfg;
    config_defaults(&cfg);
    if (config_from_json(&cfg, r.config_json, &e))
        goto fail;
    if (threads > 0 && cfg.threads == 0)
        cfg.threads = threads;
    /* --gpus: the orchestrator placed this run on a GPU */
    if (device >= 0) {
        snprintf(cfg.backend, sizeof cfg.backend, "cuda");
        cfg.device = device;
    }
    char devname[32];
    if (strcmp(cfg.backend, "cuda") == 0)
        snprintf(devname, sizeof devname, "cuda:%d", cfg.device);
    else
        snprintf(devname, sizeof devname, "%s", cfg.backend);
    char cwd[PATH_MAX];
    if (!getcwd(cwd, sizeof cwd))
        snprintf(cwd, sizeof cwd, ".");
    if (provenance_read(&prov, cwd, &e) ||
        store_run_started(x.st, run_id, getpid(), cfg.backend, devname, &prov, &e))
        goto fail;
    started = 1;
    /* resume where a valid checkpoint is; otherwise start over */
    char ck[PATH_MAX + 32];
    snprintf(ck, sizeof ck, "%s/checkpoint.safetensors", r.run_dir);
    if (file_exists(ck)) {
        TrainConfig res;
        char outkv[PATH_MAX + 8], thr[32], *assign[2] = {outkv, thr};
        snprintf(outkv, sizeof outkv, "out=%s", cfg.out);
        snprintf(thr, sizeof thr, "threads=%d", cfg.threads);
        Err ce = {{0}};
        if (train_resume_config(&res, ck, assign, 2, &ce) == 0) {
            /* placement is today's: the checkpoint may come from another device */
            snprintf(res.backend, sizeof res.backend, "%s", cfg.backend);
            res.device = cfg.device;
            cfg = res;
            printf("resuming from %s\n", ck);
        } else {
            char bad[PATH_MAX + 64];
            snprintf(bad, sizeof bad, "%s.unusable", ck);
            rename(ck, bad);
            printf("not resuming: %s; the checkpoint is kept as %s and the run starts over\n",
                   ce.msg, bad);
        }
    }
    beating = pthread_create(&beat, NULL, heartbeat, &x) == 0;
    TrainHooks hooks = {.on_epoch = on_epoch, .ctx = &x, .on_start = on_start};
    int st = train_run_hooked(&cfg, stdout, &hooks, &e);
    if (beating) {
        pthread_mutex_lock(&x.lock);
        x.stopping = 1;
        pthread_cond_signal(&x.quit);
        pthread_mutex_unlock(&x.lock);
        pthread_join(beat, NULL);
    }
    Err se = {{0}};
    if (st == TRAIN_DONE) {
        double err = 0, loss = 0;
        int has = 0;
        if (x.has_last) {
            err = 100 * x.last.test_err;
            loss = x.last.test_loss;
            has = 1;
        } else {
            /* resumed at the very end: the result is the last recorded epoch */
            EpochRec *ep;
            int nep;
            if (store_epochs(x.st, run_id, &ep, &nep, &se) == 0 && nep) {
                err = ep[nep - 1].test_err;
                loss = ep[nep - 1].test_loss;
                has = 1;
            }
            if (nep)
                free(ep);
        }
        if (store_run_ended(x.st, run_id, has ? RUN_DONE : RUN_FAILED,
                            has ? NULL : "finished without a recorded epoch", has, err, loss, &se))
            fprintf(stderr, "sweep exec-run: %s\n", se.msg);
        rc = has ? EXIT_OK : EXIT_FAIL;
    } else if (st == TRAIN_INTERRUPTED || st == TRAIN_STOPPED) {
        if (store_run_ended(x.st, run_id, RUN_INTERRUPTED,
                            st == TRAIN_STOPPED ? "stopped by its steps setting"
                                                : "stopped by a signal (checkpoint written)",
                            0, 0, 0, &se))
            fprintf(stderr, "sweep exec-run: %s\n", se.msg);
        rc = EXIT_INTERRUPTED;
    } else {
        goto fail;
    }
    goto done;
fail:
    fprintf(stderr, "sweep exec-run: %s\n", e.msg);
    if (x.st && (started || r.state == RUN_RUNNING)) {
        Err fe = {{0}};
        if (!started) {
            /* the claim was the orchestrator's: take the run over to end it */
            store_run_started(x.st, run_id, getpid(), "", "", &prov, &fe);
        }
        if (store_run_ended(x.st, run_id, RUN_FAILED, e.msg, 0, 0, 0, &fe))
            fprintf(stderr, "sweep exec-run: %s\n", fe.msg);
    }
    rc = EXIT_FAIL;
done:
    provenance_free(&prov);
    run_rec_free(&r);
    store_close(x.st);
    return rc;
}
