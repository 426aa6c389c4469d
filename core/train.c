/*
 * The training loop. A run is a pure function of its config: the epoch
 * order, augmentation and shake coefficients are drawn from Philox keyed by
 * (seed, epoch or step, position), so a run resumed from any step boundary
 * continues exactly as if it had not stopped (same backend).
 *
 * Per step: assemble the batch, draw alpha/beta for the step, forward,
 * softmax cross-entropy, backward, SGD with the cosine learning rate of the
 * 1-based iteration t (lr = 0 at t = T). On the host with the per-call
 * backend ops; or, where the backend keeps the data (set_data, batch), the
 * batches are made there, and where it also runs whole steps (train_step)
 * the step is one call whose loss and error sums are read at the epoch's end
 * (step_stats) -- the same functions, drawn from the same Philox counters.
 */
#include "train.h"

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "backend.h"
#include "checkpoint.h"
#include "data.h"
#include "model.h"
#include "optim.h"
#include "shake.h"

volatile sig_atomic_t train_interrupt = 0;

double softmax_xent(float *dlogits, int *correct, const float *logits,
                    const int *labels, int n, int classes)
{
    double total = 0;
    int right = 0;
    for (int i = 0; i < n; i++) {
        const float *z = logits + (size_t)i * classes;
        int arg = 0;
        float zmax = z[0];
        for (int c = 1; c < classes; c++)
            if (z[c] > zmax) {
                zmax = z[c];
                arg = c;
            }
        double sum = 0;
        for (int c = 0; c < classes; c++)
            sum += exp((double)z[c] - zmax);
        double logsum = log(sum) + zmax;
        total += logsum - z[labels[i]];
        right += arg == labels[i];
        if (dlogits) {
            float *d = dlogits + (size_t)i * classes;
            for (int c = 0; c < classes; c++)
                d[c] = (float)((exp((double)z[c] - logsum) - (c == labels[i])) / n);
        }
    }
    if (correct)
        *correct = right;
    return total / n;
}

typedef struct {
    const TrainConfig *cfg;
    Dataset train, test;
    Model model;
    const BackendOps *ops;
    Backend *be;
    float *params, *state, *momentum;
    float *x, *logits, *dlogits, *alpha, *beta;
    int *labels, *order;
    int device_data;            /* the backend keeps the data and makes batches */
    FILE *log;
    char ckpt_path[1100];
    CheckpointWriter ckw;       /* the epoch's checkpoint, written while the next trains */
    double ckpt_wait;           /* seconds the loop stood still for checkpoints */
    double ckpt_write;          /* seconds spent writing them (mostly in the background) */
} Run;

/* Waits for the checkpoint being written, if any; its time into ckpt_write. */
static int run_checkpoint_wait(Run *r, Err *e)
{
    if (!r->ckw.running)
        return 0;
    int rc = checkpoint_save_wait(&r->ckw, e);
    r->ckpt_write += r->ckw.seconds;
    return rc;
}

static void run_free(Run *r)
{
    Err ignored;                /* a failing run reports its own error */
    run_checkpoint_wait(r, &ignored);   /* before the arrays it reads go */
    if (r->be)
        r->ops->destroy(r->be);
    dataset_free(&r->train);
    dataset_free(&r->test);
    model_free(&r->model);
    mem_free(r->params);
    mem_free(r->state);
    mem_free(r->momentum);
    mem_free(r->x);
    mem_free(r->logits);
    mem_free(r->dlogits);
    mem_free(r->alpha);
    mem_free(r->beta);
    mem_free(r->labels);
    mem_free(r->order);
    if (r->log)
        fclose(r->log);
}

/* The record of the convolution algorithms a run picked, in its folder
 * (core/algo_record.h; the cuda backend writes it). */
#define ALGO_RECORD_NAME "cuda-algorithms.json"

/* Data, model, backend and host buffers for cfg; state initialized by
 * model_init (the caller may then load a checkpoint over it). train: a
 * training run, whose folder (cfg->out) is made first and keeps the
 * backend's algorithm record. */
static int run_setup(Run *r, const TrainConfig *cfg, int train, Err *e)
{
    memset(r, 0, sizeof *r);
    r->cfg = cfg;
    char record[1100], seed[1100] = "";
    if (train) {
        if (mkdir_p(cfg->out, e))
            return -1;
        snprintf(record, sizeof record, "%s/" ALGO_RECORD_NAME, cfg->out);
        /* the half-written record a killed run left goes (as its checkpoint does) */
        file_replace_stale(record);
        /* resumed from another folder: that run's record, until this one has its own */
        if (cfg->resume[0]) {
            char dir[1024];
            path_parent(cfg->resume, dir, sizeof dir);
            snprintf(seed, sizeof seed, "%s/" ALGO_RECORD_NAME, dir);
        }
    }
    if (cfg->threads > 0)
        omp_set_num_threads(cfg->threads);
    const char *dir = cfg->data_dir[0] ? cfg->data_dir : dataset_default_dir(cfg->dataset);
    if (dataset_load(&r->train, &r->test, cfg->dataset, dir, (uint64_t)cfg->subset_seed, e)) {
        size_t len = strlen(e->msg);
        snprintf(e->msg + len, sizeof e->msg - len, " (data_dir=%s should hold %s)", dir,
                 dataset_source(cfg->dataset));
        return -1;
    }
    if (cfg->train_subset > 0 &&
        dataset_subset(&r->train, cfg->train_subset, (uint64_t)cfg->subset_seed, e))
        return err_wrap(e, "train_subset=%d", cfg->train_subset);
    ModelSpec spec;
    config_model_spec(cfg, r->train.classes, r->train.c, r->train.h, r->train.w, &spec);
    if (model_build(&r->model, &spec, e))
        return -1;
    r->ops = backend_find(cfg->backend);
    if (!r->ops)
        return err_set(e, "backend '%s' is not built into this binary (have: %s)",
                       cfg->backend, backend_names());
    BackendOptions bo = {.max_batch = cfg->batch, .threads = cfg->threads,
                         .device = cfg->device, .precision = PRECISION_FP32};
    if (cfg->precision == CFG_PRECISION_BF16 ||
        (cfg->precision == CFG_PRECISION_AUTO && strcmp(cfg->backend, "cuda") == 0))
        bo.precision = PRECISION_BF16;
    if (train) {
        bo.algo_record = record;
        bo.algo_record_seed = seed[0] ? seed : NULL;
    }
    r->be = r->ops->create(&r->model, &bo, e);
    if (!r->be)
        return err_wrap(e, "backend %s", cfg->backend);
    const Model *m = &r->model;
    size_t img = (size_t)r->train.c * r->train.h * r->train.w;
    int B = cfg->batch;
    if (!(r->params = mem_alloc(m->nparams * sizeof(float), "parameters", e)) ||
        !(r->state = mem_alloc(m->nstate * sizeof(float), "batch-norm statistics", e)) ||
        !(r->momentum = mem_alloc(m->nparams * sizeof(float), "momentum", e)) ||
        !(r->x = mem_alloc((size_t)B * img * sizeof(float), "input batch", e)) ||
        !(r->logits = mem_alloc((size_t)B * spec.classes * sizeof(float), "logits", e)) ||
        !(r->dlogits = mem_alloc((size_t)B * spec.classes * sizeof(float), "logits", e)) ||
        !(r->alpha = mem_alloc((size_t)m->nblocks * B * sizeof(float), "coefficients", e)) ||
        !(r->beta = mem_alloc((size_t)m->nblocks * B * sizeof(float), "coefficients", e)) ||
        !(r->labels = mem_alloc((size_t)B * sizeof(int), "labels", e)) ||
        !(r->order = mem_alloc((size_t)(r->train.n > r->test.n ? r->train.n : r->test.n) *
                               sizeof(int), "epoch order", e)))
        return -1;
    model_init(m, (uint64_t)cfg->seed, r->params, r->state);
    return 0;
}

/*
 * The input of the next forward: on the host (r->x), or where the backend
 * keeps the data itself, assembled there (*x = NULL). Labels always on
 * the host, as data_batch gives them.
 */
static int run_batch(Run *r, const float **x, int set, const int *idx, int count, uint64_t seed,
                     int epoch, int augment, Err *e)
{
    const Dataset *d = set == 0 ? &r->train : &r->test;
    if (!r->device_data) {
        data_batch(r->x, r->labels, d, idx, count, seed, epoch, augment);
        *x = r->x;
        return 0;
    }
    for (int j = 0; j < count; j++)
        r->labels[j] = d->labels[idx[j]];
    *x = NULL;
    return r->ops->batch(r->be, set, idx, count, seed, epoch, augment, e);
}

/* Test loss and error with running statistics and even coefficients. */
static int run_evaluate(Run *r, EvalResult *res, Err *e)
{
    const Dataset *d = &r->test;
    int B = r->cfg->batch, wrong = 0;
    double loss = 0;
    for (int i = 0; i < d->n; i++)
        r->order[i] = i;
    for (int start = 0; start < d->n; start += B) {
        int count = d->n - start < B ? d->n - start : B;
        const float *x;
        if (run_batch(r, &x, 1, r->order + start, count, 0, 0, 0, e) ||
            r->ops->forward(r->be, r->logits, x, NULL, count, 0, e))
            return -1;
        int right;
        loss += softmax_xent(NULL, &right, r->logits, r->labels, count, d->classes) * count;
        wrong += count - right;
    }
    res->n = d->n;
    res->loss = loss / d->n;
    res->err = (double)wrong / d->n;
    return 0;
}

/*
 * The checkpoint after `step`: the backend's state into params, state and
 * momentum (which nothing but checkpoints uses between loads), then the file,
 * in the background when async (the next epoch trains meanwhile; the next
 * checkpoint, or the end of the run, waits for it), else before returning.
 * Either way the previous write is finished first, so the files land in
 * order. A run killed before a background write lands resumes from the one
 * before, and redoes that epoch, as one killed just before a write would.
 */
static int run_checkpoint(Run *r, int64_t step, int64_t epoch, int async, Err *e)
{
    const double t0 = time_now();
    if (run_checkpoint_wait(r, e) ||
        r->ops->store(r->be, r->params, r->state, r->momentum, NULL, e))
        return -1;
    CheckpointMeta meta = {step, epoch, (uint64_t)r->cfg->seed, config_to_json(r->cfg)};
    int rc;
    if (async) {
        rc = checkpoint_save_start(&r->ckw, r->ckpt_path, &r->model, r->params, r->state,
                                   r->momentum, &meta, e);
    } else {
        const double tw = time_now();
        rc = checkpoint_save(r->ckpt_path, &r->model, r->params, r->state, r->momentum, &meta,
                             e);
        r->ckpt_write += time_now() - tw;
    }
    free(meta.config_json);
    r->ckpt_wait += time_now() - t0;
    return rc;
}

static void log_event(Run *r, json_t *obj)
{
    if (!r->log) {
        json_decref(obj);
        return;
    }
    char *s = json_dumps(obj, JSON_COMPACT | JSON_REAL_PRECISION(10));
    if (s) {
        fprintf(r->log, "%s\n", s);
        fflush(r->log);
        free(s);
    }
    json_decref(obj);
}

int train_run(const TrainConfig *cfg, FILE *progress, Err *e)
{
    return train_run_hooked(cfg, progress, NULL, e);
}

int train_run_hooked(const TrainConfig *cfg, FILE *progress, const TrainHooks *hooks, Err *e)
{
    Run run, *r = &run;
    int status = TRAIN_FAILED;
    if (run_setup(r, cfg, 1, e))
        goto done;
    const Model *m = &r->model;
    snprintf(r->ckpt_path, sizeof r->ckpt_path, "%s/checkpoint.safetensors", cfg->out);
    /* a killed run's half-written checkpoint (26 2x96d: 210 MB) goes */
    file_replace_stale(r->ckpt_path);

    int64_t step = 0;
    if (cfg->resume[0] || cfg->init[0]) {
        const char *path = cfg->resume[0] ? cfg->resume : cfg->init;
        CheckpointMeta meta = {0};
        if (checkpoint_load(path, m, r->params, r->state,
                            cfg->resume[0] ? r->momentum : NULL, &meta, e)) {
            err_wrap(e, "%s %s", cfg->resume[0] ? "resume" : "init", path);
            goto done;
        }
        if (cfg->resume[0])
            step = meta.step;
        checkpoint_meta_free(&meta);
    }
    if (r->ops->load(r->be, r->params, r->state, r->momentum, e))
        goto done;
    if (r->ops->set_data && r->ops->batch) {
        if (r->ops->set_data(r->be, &r->train, &r->test, e))
            goto done;
        r->device_data = 1;
    }

    const int B = cfg->batch, n = r->train.n;
    const int64_t spe = (n + B - 1) / B, T = (int64_t)cfg->epochs * spe;
    const uint64_t seed = (uint64_t)cfg->seed;
    char logpath[1100];
    snprintf(logpath, sizeof logpath, "%s/log.jsonl", cfg->out);
    r->log = fopen(logpath, step > 0 ? "a" : "w");
    if (!r->log) {
        err_set(e, "cannot write %s: %s", logpath, strerror(errno));
        goto done;
    }
    char desc[128], hw[600] = "";
    model_describe(m, desc, sizeof desc);
    if (r->ops->describe)
        r->ops->describe(r->be, hw, sizeof hw);
    json_t *start = json_object();
    json_object_set_new(start, "event", json_string(step > 0 ? "resume" : "start"));
    json_object_set_new(start, "model", json_string(desc));
    json_object_set_new(start, "params", json_integer((json_int_t)m->nparams));
    json_object_set_new(start, "step", json_integer(step));
    json_object_set_new(start, "total_steps", json_integer(T));
    json_object_set_new(start, "hardware", json_string(hw));
    char *cj = config_to_json(cfg);
    json_object_set_new(start, "config", json_loads(cj, 0, NULL));
    free(cj);
    log_event(r, start);
    if (progress) {
        fprintf(progress, "%s, %zu parameters, %s backend; %d training and %d test images "
                "(%s), %d epochs of %lld steps%s\n", desc, m->nparams, cfg->backend, n,
                r->test.n, dataset_name(cfg->dataset), cfg->epochs, (long long)spe,
                step > 0 ? " (resumed)" : "");
        if (hw[0])
            fprintf(progress, "on %s\n", hw);
        fflush(progress);
    }
    if (hooks && hooks->on_start)
        hooks->on_start(hooks->ctx, hw);

    /* backends that run whole steps where the data is */
    const int device_steps = r->device_data && r->ops->train_step && r->ops->step_stats;
    const char *sc = getenv("SHAKE_SYNC_CHECKPOINTS");
    const int sync_ckpt = sc && strcmp(sc, "1") == 0;
    status = TRAIN_DONE;
    for (int epoch = (int)(step / spe); epoch < cfg->epochs; epoch++) {
        data_epoch_order(r->order, n, seed, epoch, cfg->shuffle);
        double t0 = time_now(), loss_sum = 0, lr = 0;
        int64_t wrong = 0, seen = 0;
        for (int64_t it = step - (int64_t)epoch * spe; it < spe; it++) {
            if (cfg->steps > 0 && step >= cfg->steps) {
                status = TRAIN_STOPPED;
                break;
            }
            if (train_interrupt) {
                status = TRAIN_INTERRUPTED;
                break;
            }
            int count = (int)(n - it * B < B ? n - it * B : B);
            lr = cosine_lr(cfg->lr, step + 1, T);
            if (device_steps) {
                /* the whole step where the data is; sums read at the epoch's end */
                TrainStep ts = {r->order,    n,           (int)(it * B), count,
                                seed,        epoch,       step,          cfg->augment,
                                cfg->forward, cfg->backward, cfg->level, (float)lr,
                                (float)cfg->momentum, (float)cfg->wd};
                if (r->ops->train_step(r->be, &ts, e))
                    goto fail;
                step++;
                seen += count;
                continue;
            }
            const float *x;
            if (run_batch(r, &x, 0, r->order + it * B, count, seed, epoch, cfg->augment, e))
                goto fail;
            shake_draw(r->alpha, r->beta, m->nblocks, count, seed, step,
                       (ShakeMode)cfg->forward, (ShakeMode)cfg->backward,
                       (ShakeLevel)cfg->level);
            if (r->ops->forward(r->be, r->logits, x, r->alpha, count, 1, e))
                goto fail;
            int right;
            double loss = softmax_xent(r->dlogits, &right, r->logits, r->labels, count,
                                       m->spec.classes);
            if (!isfinite(loss)) {
                err_set(e, "diverged: training loss is %g at step %lld (epoch %d)", loss,
                        (long long)step + 1, epoch + 1);
                goto fail;
            }
            if (r->ops->backward(r->be, r->dlogits, r->beta, count, e))
                goto fail;
            if (r->ops->update(r->be, (float)lr, (float)cfg->momentum, (float)cfg->wd, e))
                goto fail;
            step++;
            loss_sum += loss * count;
            wrong += count - right;
            seen += count;
        }
        if (device_steps) {
            double dl;
            int64_t dw, bad;
            if (r->ops->step_stats(r->be, &dl, &dw, &bad, e))
                goto fail;
            if (bad >= 0) {
                err_set(e, "diverged: training loss is not finite at step %lld (epoch %d)",
                        (long long)bad + 1, epoch + 1);
                goto fail;
            }
            loss_sum = dl;
            wrong = dw;
        }
        double secs = time_now() - t0;
        if (status != TRAIN_DONE) {
            if (run_checkpoint(r, step, epoch, 0, e))
                goto fail;
            json_t *ev = json_object();
            json_object_set_new(ev, "event", json_string(status == TRAIN_STOPPED ? "stop"
                                                                               : "interrupt"));
            json_object_set_new(ev, "step", json_integer(step));
            json_object_set_new(ev, "epoch", json_integer(epoch));
            log_event(r, ev);
            if (progress)
                fprintf(progress, "%s at step %lld (epoch %d, step %lld of %lld); "
                        "checkpoint %s\n", status == TRAIN_STOPPED ? "stopped" : "interrupted",
                        (long long)step, epoch + 1, (long long)(step - (int64_t)epoch * spe),
                        (long long)spe, r->ckpt_path);
            break;
        }
        EvalResult ev;
        double te = time_now();
        if (run_evaluate(r, &ev, e))
            goto fail;
        double eval_secs = time_now() - te;
        EpochStats s = {epoch + 1, cfg->epochs, step, lr,
                        seen ? loss_sum / seen : 0, seen ? (double)wrong / seen : 0,
                        ev.loss, ev.err, secs, seen / (secs > 0 ? secs : 1e-9)};
        /* The epoch's numbers are recorded before its checkpoint: a run
         * killed in between redoes the epoch from the previous checkpoint
         * and records the same numbers again, instead of skipping them. */
        json_t *o = json_object();
        json_object_set_new(o, "event", json_string("epoch"));
        json_object_set_new(o, "epoch", json_integer(s.epoch));
        json_object_set_new(o, "step", json_integer(s.step));
        json_object_set_new(o, "lr", json_real(s.lr));
        json_object_set_new(o, "train_loss", json_real(s.train_loss));
        json_object_set_new(o, "train_err", json_real(s.train_err));
        json_object_set_new(o, "test_loss", json_real(s.test_loss));
        json_object_set_new(o, "test_err", json_real(s.test_err));
        json_object_set_new(o, "seconds", json_real(s.seconds));
        json_object_set_new(o, "eval_seconds", json_real(eval_secs));
        json_object_set_new(o, "images_per_s", json_real(s.images_per_s));
        log_event(r, o);
        if (hooks && hooks->on_epoch)
            hooks->on_epoch(hooks->ctx, &s);
        if (progress) {
            fprintf(progress, "epoch %4d/%d  lr %.5f  train loss %.4f err %6.2f%%  "
                    "test loss %.4f err %6.2f%%  %7.1f s  %7.1f img/s\n", s.epoch, s.epochs,
                    s.lr, s.train_loss, 100 * s.train_err, s.test_loss, 100 * s.test_err,
                    s.seconds, s.images_per_s);
            fflush(progress);
        }
        /* the last one before the run reports done, the others while the
         * next epoch trains (SHAKE_SYNC_CHECKPOINTS=1: all before it) */
        if (run_checkpoint(r, step, epoch + 1, epoch + 1 < cfg->epochs && !sync_ckpt, e))
            goto fail;
    }
    if (run_checkpoint_wait(r, e))
        goto fail;
    if (status == TRAIN_DONE) {
        json_t *o = json_object();
        json_object_set_new(o, "event", json_string("end"));
        json_object_set_new(o, "step", json_integer(step));
        json_object_set_new(o, "checkpoint_wait_seconds", json_real(r->ckpt_wait));
        json_object_set_new(o, "checkpoint_write_seconds", json_real(r->ckpt_write));
        log_event(r, o);
    }
    goto done;
fail:
    status = TRAIN_FAILED;
    if (r->log) {
        json_t *o = json_object();
        json_object_set_new(o, "event", json_string("failed"));
        json_object_set_new(o, "reason", json_string(e->msg));
        json_object_set_new(o, "step", json_integer(step));
        log_event(r, o);
    }
done:
    run_free(r);
    return status;
}

/* The resolved config a checkpoint was written with. */
static int checkpoint_config(TrainConfig *cfg, const char *path, Err *e)
{
    CheckpointMeta meta = {0};
    if (checkpoint_read_meta(path, &meta, e))
        return -1;
    config_defaults(cfg);
    int rc = meta.config_json ? config_from_json(cfg, meta.config_json, e)
                              : err_set(e, "%s has no config in its metadata", path);
    checkpoint_meta_free(&meta);
    return rc ? err_wrap(e, "%s", path) : 0;
}

/* Keys that may differ between a checkpoint and the run that resumes it. */
static int resume_free_key(const char *k)
{
    static const char *const free_keys[] = {"backend", "threads", "device", "precision",
                                            "data_dir", "out", "steps", "resume",
                                            "init"};
    for (size_t i = 0; i < sizeof free_keys / sizeof free_keys[0]; i++)
        if (strcmp(k, free_keys[i]) == 0)
            return 1;
    return 0;
}

int train_resume_config(TrainConfig *cfg, const char *path, char **assignments,
                        int n, Err *e)
{
    TrainConfig base;
    if (checkpoint_config(&base, path, e))
        return err_wrap(e, "resume");
    *cfg = base;
    for (int i = 0; i < n; i++)
        if (config_set(cfg, assignments[i], e))
            return -1;
    for (int k = 0; k < config_nkeys(); k++) {
        const char *key = config_key_name(k);
        if (resume_free_key(key))
            continue;
        char a[600], b[600];
        config_key_value(&base, k, a, sizeof a);
        config_key_value(cfg, k, b, sizeof b);
        if (strcmp(a, b) != 0)
            return err_set(e, "resume %s: key '%s' is %s in the checkpoint but %s here; "
                           "a resumed run keeps its trajectory (use init= to start a new "
                           "run from these weights)", path, key, a, b);
    }
    snprintf(cfg->resume, sizeof cfg->resume, "%s", path);
    return 0;
}

int eval_checkpoint(const char *path, const char *data_dir, const char *backend,
                    int threads, EvalResult *res, Err *e)
{
    TrainConfig cfg;
    if (checkpoint_config(&cfg, path, e))
        return -1;
    if (data_dir && data_dir[0])
        snprintf(cfg.data_dir, sizeof cfg.data_dir, "%s", data_dir);
    if (backend && backend[0])
        snprintf(cfg.backend, sizeof cfg.backend, "%s", backend);
    cfg.threads = threads;
    cfg.train_subset = 0; /* evaluation needs only the test split */
    Run run, *r = &run;
    int rc = -1;
    if (run_setup(r, &cfg, 0, e))
        goto done;
    if (checkpoint_load(path, &r->model, r->params, r->state, NULL, NULL, e))
        goto done;
    if (r->ops->load(r->be, r->params, r->state, NULL, e))
        goto done;
    rc = run_evaluate(r, res, e);
done:
    run_free(r);
    return rc;
}
