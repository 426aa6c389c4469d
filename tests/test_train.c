/*
 * The training loop end to end on small CIFAR-10 folders written in the real
 * binary format: exact resume (at an epoch boundary and mid-epoch, on the
 * cpu and ref backends), same seed = same run, a network that memorizes 256
 * images, the JSON-lines log, divergence reported as such, and a run killed
 * while an epoch's checkpoint is written in the background resuming exactly.
 */
#include "testutil.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "checkpoint.h"
#include "config.h"
#include "model.h"
#include "train.h"

static char *data_dir;
static const char *self_exe = "/proc/self/exe";  /* for a child run that dies */

static int setup(void **s)
{
    (void)s;
    data_dir = tu_tempdir("train-data");
    tu_write_cifar10(data_dir, 120, 40, 17, 0);
    return 0;
}

static int teardown(void **s)
{
    (void)s;
    tu_rmtree(data_dir);
    free(data_dir);
    return 0;
}

static void base_config(TrainConfig *c, const char *backend, const char *out)
{
    Err e = {{0}};
    config_defaults(c);
    const char *kv[] = {"dataset=cifar10", "depth=8", "width=16", "epochs=4", "batch=32",
                        "lr=0.1", "seed=5", "threads=2"};
    for (size_t i = 0; i < sizeof kv / sizeof kv[0]; i++)
        if (config_set(c, kv[i], &e))
            fail_msg("%s", e.msg);
    snprintf(c->data_dir, sizeof c->data_dir, "%s", data_dir);
    snprintf(c->backend, sizeof c->backend, "%s", backend);
    snprintf(c->out, sizeof c->out, "%s", out);
}


static void resume_case(const char *backend, int64_t stop_step, int epochs)
{
    char *root = tu_tempdir("resume");
    TrainConfig c;
    base_config(&c, backend, root);
    c.epochs = epochs;
    tu_resume_case(&c, root, stop_step);
    tu_rmtree(root);
    free(root);
}

/* 120 images, batch 32: 4 steps per epoch. */
static void test_resume_epoch_boundary_cpu(void **s)
{
    (void)s;
    resume_case("cpu", 8, 4);   /* 2 epochs + 2 */
}

static void test_resume_mid_epoch_cpu(void **s)
{
    (void)s;
    resume_case("cpu", 6, 3);   /* stops in the middle of epoch 2 */
}

static void test_resume_ref(void **s)
{
    (void)s;
    resume_case("ref", 3, 2);
}

static void test_same_seed_same_run(void **s)
{
    (void)s;
    char *root = tu_tempdir("seed");
    char a[400], b[400], c3[400];
    snprintf(a, sizeof a, "%s/a", root);
    snprintf(b, sizeof b, "%s/b", root);
    snprintf(c3, sizeof c3, "%s/c", root);
    TrainConfig c;
    base_config(&c, "cpu", a);
    c.epochs = 1;
    tu_train(&c, TRAIN_DONE);
    snprintf(c.out, sizeof c.out, "%s", b);
    tu_train(&c, TRAIN_DONE);
    tu_assert_same_run(a, b, &c);
    c.seed = 6;
    snprintf(c.out, sizeof c.out, "%s", c3);
    tu_train(&c, TRAIN_DONE);
    TuCheckpoint x, y;
    tu_checkpoint_load(&x, a, &c);
    tu_checkpoint_load(&y, c3, &c);
    assert_true(memcmp(x.params, y.params, x.m.nparams * sizeof(float)) != 0);
    tu_checkpoint_free(&x);
    tu_checkpoint_free(&y);
    tu_rmtree(root);
    free(root);
}

/* what on_start was told, and how often */
typedef struct {
    char hw[600];
    int calls;
} StartSeen;

static void seen_start(void *ctx, const char *hardware)
{
    StartSeen *s = ctx;
    snprintf(s->hw, sizeof s->hw, "%s", hardware);
    s->calls++;
}

static void test_log(void **s)
{
    (void)s;
    char *root = tu_tempdir("log");
    TrainConfig c;
    base_config(&c, "cpu", root);
    c.epochs = 2;
    StartSeen seen = {"", 0};
    TrainHooks h = {.ctx = &seen, .on_start = seen_start};
    Err e = {{0}};
    if (train_run_hooked(&c, NULL, &h, &e) != TRAIN_DONE)
        fail_msg("%s", e.msg);
    /* what the run computed on, once: this machine's processor and the
     * backend's library */
    char cpu[300];
    host_cpu(cpu, sizeof cpu);
    assert_int_equal(seen.calls, 1);
    if (strncmp(seen.hw, cpu, strlen(cpu)) != 0 || !strstr(seen.hw, "with oneDNN "))
        fail_msg("on_start: \"%s\" does not name the processor (%s) and oneDNN", seen.hw, cpu);
    char path[4200];
    snprintf(path, sizeof path, "%s/log.jsonl", root);
    char *text = tu_read_file(path, NULL);
    assert_non_null(text);
    int epochs = 0, starts = 0, ends = 0;
    for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) {
        json_error_t je;
        json_t *o = json_loads(line, 0, &je);
        assert_non_null(o);
        const char *ev = json_string_value(json_object_get(o, "event"));
        assert_non_null(ev);
        if (strcmp(ev, "epoch") == 0) {
            epochs++;
            assert_int_equal(json_integer_value(json_object_get(o, "epoch")), epochs);
            assert_int_equal(json_integer_value(json_object_get(o, "step")), 4 * epochs);
            double err = json_real_value(json_object_get(o, "test_err"));
            assert_true(err >= 0 && err <= 1);
            assert_true(json_real_value(json_object_get(o, "images_per_s")) > 0);
            if (epochs == 2) /* the last iteration's learning rate is 0 */
                assert_true(json_real_value(json_object_get(o, "lr")) == 0.0);
        }
        if (strcmp(ev, "start") == 0) {
            starts++;
            assert_string_equal(json_string_value(json_object_get(o, "hardware")), seen.hw);
        }
        if (strcmp(ev, "end") == 0) {
            ends++;
            /* two checkpoints written (one in the background): their time,
             * and the loop's wait for them, which cannot exceed the run's */
            json_t *w = json_object_get(o, "checkpoint_write_seconds");
            json_t *t = json_object_get(o, "checkpoint_wait_seconds");
            assert_true(json_is_real(w) && json_is_real(t));
            assert_true(json_real_value(w) > 0 && json_real_value(w) < 60);
            assert_true(json_real_value(t) > 0 && json_real_value(t) < 60);
        }
        json_decref(o);
    }
    assert_int_equal(epochs, 2);
    assert_int_equal(starts, 1);
    assert_int_equal(ends, 1);
    free(text);
    tu_rmtree(root);
    free(root);
}

static void test_memorizes_256_images(void **s)
{
    (void)s;
    char *dir = tu_tempdir("memorize");
    tu_write_cifar10(dir, 256, 256, 23, 1); /* test split = training split */
    TrainConfig c;
    base_config(&c, "cpu", dir);
    snprintf(c.data_dir, sizeof c.data_dir, "%s", dir);
    Err e = {{0}};
    const char *kv[] = {"epochs=40", "batch=32", "lr=0.05", "wd=0", "augment=0",
                        "forward=shake", "backward=shake"};
    for (size_t i = 0; i < sizeof kv / sizeof kv[0]; i++)
        assert_int_equal(config_set(&c, kv[i], &e), 0);
    tu_train(&c, TRAIN_DONE);
    char ck[4200];
    snprintf(ck, sizeof ck, "%s/checkpoint.safetensors", dir);
    EvalResult r;
    if (eval_checkpoint(ck, dir, "", 2, &r, &e))
        fail_msg("%s", e.msg);
    /* the test split holds the 256 training images, random pixels with
     * random labels: only memorizing every one of them gets them right */
    assert_int_equal(r.n, 256);
    int wrong = (int)lround(r.err * r.n);
    if (wrong != 0)
        fail_msg("%d of the 256 training images still wrong (loss %.3f)", wrong, r.loss);
    tu_rmtree(dir);
    free(dir);
}

/*
 * A run killed at the end of epoch 3 (before its checkpoint), while epoch 2's
 * checkpoint may still be being written in the background: the folder holds
 * epoch 1's or epoch 2's checkpoint, whole, and the run resumed from it in
 * the same folder (as `sweep run` resumes) ends where the uninterrupted run
 * does, to the bit, and leaves no temporary file of the dead run's behind
 * (checkpoint or algorithm record).
 * The dying run is this program again (--die-at-epoch-3), a fresh process:
 * a forked copy of one that has used OpenMP may hang in its first parallel
 * loop.
 */
static void die_at_epoch_3(void *ctx, const EpochStats *s)
{
    (void)ctx;
    if (s->epoch == 3)
        _exit(0);   /* no cleanup: threads, a half-written file and all */
}

static int child_run(const char *dir, const char *out)
{
    data_dir = (char *)dir;
    TrainConfig c;
    base_config(&c, "cpu", out);
    TrainHooks h = {.on_epoch = die_at_epoch_3};
    Err e = {{0}};
    train_run_hooked(&c, NULL, &h, &e);
    fprintf(stderr, "child run did not die at epoch 3: %s\n", e.msg);
    return 2;
}

static void test_killed_while_checkpointing(void **s)
{
    (void)s;
    char *root = tu_tempdir("killed");
    char straight[480], part[480], ck[520], stale[560], rstale[580];
    snprintf(straight, sizeof straight, "%.400s/straight", root);
    snprintf(part, sizeof part, "%.400s/part", root);
    TrainConfig c;
    base_config(&c, "cpu", straight);  /* 4 epochs */
    tu_train(&c, TRAIN_DONE);

    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        execl(self_exe, self_exe, "--die-at-epoch-3", data_dir, part, (char *)NULL);
        _exit(3);
    }
    int status = 0;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);

    snprintf(ck, sizeof ck, "%s/checkpoint.safetensors", part);
    Err e = {{0}};
    CheckpointMeta meta = {0};
    if (checkpoint_read_meta(ck, &meta, &e))
        fail_msg("%s", e.msg);
    if (meta.epoch != 1 && meta.epoch != 2)
        fail_msg("the dead run left epoch %lld's checkpoint, not 1's or 2's",
                 (long long)meta.epoch);
    checkpoint_meta_free(&meta);
    /* as if it had died mid-write (it may have): its temporary file, and
     * one of the algorithm record that the cuda backend writes there */
    snprintf(stale, sizeof stale, "%s.tmp.%ld", ck, (long)pid);
    tu_write_file(stale, "half", 4);
    snprintf(rstale, sizeof rstale, "%s/cuda-algorithms.json.tmp.%ld", part, (long)pid);
    tu_write_file(rstale, "{\"ha", 4);
    char outkv[500];
    snprintf(outkv, sizeof outkv, "out=%s", part);
    char *assign[] = {outkv};
    if (train_resume_config(&c, ck, assign, 1, &e))
        fail_msg("%s", e.msg);
    tu_train(&c, TRAIN_DONE);
    tu_assert_same_run(straight, part, &c);
    assert_int_equal(access(stale, F_OK), -1);
    assert_int_equal(access(rstale, F_OK), -1);
    tu_rmtree(root);
    free(root);
}

static void test_divergence_reported(void **s)
{
    (void)s;
    char *root = tu_tempdir("diverge");
    TrainConfig c;
    base_config(&c, "cpu", root);
    c.lr = 1e30;
    c.epochs = 3;
    Err e = {{0}};
    assert_int_equal(train_run(&c, NULL, &e), TRAIN_FAILED);
    assert_non_null(strstr(e.msg, "diverged"));
    tu_rmtree(root);
    free(root);
}

int main(int argc, char **argv)
{
    if (argc == 4 && strcmp(argv[1], "--die-at-epoch-3") == 0)
        return child_run(argv[2], argv[3]);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_resume_epoch_boundary_cpu),
        cmocka_unit_test(test_resume_mid_epoch_cpu),
        cmocka_unit_test(test_resume_ref),
        cmocka_unit_test(test_same_seed_same_run),
        cmocka_unit_test(test_log),
        cmocka_unit_test(test_memorizes_256_images),
        cmocka_unit_test(test_divergence_reported),
        cmocka_unit_test(test_killed_while_checkpointing),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
