/*
 * `sweep train` and `sweep eval` as a user meets them: bad keys and values,
 * missing, truncated and mis-sized data files, a corrupt checkpoint. Each
 * must exit non-zero (1 for a failed run, 2 for bad usage) with a message
 * that names what is wrong, and never crash. And a good run prints its
 * epoch lines and leaves a checkpoint that `sweep eval` reads.
 */
#include "testutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char *root, *data;

static int setup(void **s)
{
    (void)s;
    root = tu_tempdir("cli");
    data = malloc(strlen(root) + 16);
    sprintf(data, "%s/data", root);
    mkdir(data, 0777);
    tu_write_cifar10(data, 50, 20, 3, 0);
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

/* Runs sweep; asserts the exit status and that the output contains want. */
static void expect(int status, const char *want, const char *args)
{
    char *out = NULL;
    int rc = tu_run_sweep(&out, "%s", args);
    if (rc != status || (want && !strstr(out, want)))
        fail_msg("sweep %s\nexit %d (want %d), output:\n%s\n(wanted it to contain '%s')", args,
                 rc, status, out, want ? want : "");
    free(out);
}

static void test_bad_keys_and_values(void **s)
{
    (void)s;
    expect(2, "did you mean 'depth'", "train deph=8");
    expect(2, "did you mean 'epochs'", "train epoch=3");
    expect(2, "'abc'", "train depth=abc");
    expect(2, "6n+2", "train depth=27");
    expect(2, "9n+2", "train arch=resnext depth=26");
    expect(2, "expected one of", "train forward=sideways");
    expect(2, "=", "train depth");
    expect(2, "unknown command", "trian");
    expect(0, "depth", "train --help");
}

static void test_missing_data(void **s)
{
    (void)s;
    char args[600];
    snprintf(args, sizeof args, "train dataset=cifar10 data_dir=%s/nowhere epochs=1 out=%s/o",
             root, root);
    expect(1, "nowhere/data_batch_1.bin", args);
}

static void copy_data(const char *to)
{
    char cmd[1200];
    snprintf(cmd, sizeof cmd, "rm -rf '%s' && cp -r '%s' '%s'", to, data, to);
    assert_int_equal(system(cmd), 0);
}

static void test_truncated_data(void **s)
{
    (void)s;
    char dir[500], path[600], args[1200];
    snprintf(dir, sizeof dir, "%s/trunc", root);
    copy_data(dir);
    snprintf(path, sizeof path, "%s/data_batch_3.bin", dir);
    assert_int_equal(truncate(path, 3073 * 5 + 100), 0);
    snprintf(args, sizeof args, "train dataset=cifar10 data_dir=%s epochs=1 depth=8 width=16 "
             "out=%s/o", dir, root);
    expect(1, "data_batch_3.bin", args);
    /* a CIFAR-100 name in a CIFAR-10 folder: the file is missing */
    snprintf(args, sizeof args, "train dataset=cifar100 data_dir=%s epochs=1 out=%s/o", dir, root);
    expect(1, "train.bin", args);
}

static void test_wrong_record_size(void **s)
{
    (void)s;
    char dir[500], path[600], args[1200];
    snprintf(dir, sizeof dir, "%s/c100", root);
    mkdir(dir, 0777);
    /* CIFAR-10 records (3073 bytes) where CIFAR-100 (3074) belong */
    size_t len = 3073 * 7;
    char *buf = calloc(1, len);
    snprintf(path, sizeof path, "%s/train.bin", dir);
    tu_write_file(path, buf, len);
    snprintf(path, sizeof path, "%s/test.bin", dir);
    tu_write_file(path, buf, len);
    free(buf);
    snprintf(args, sizeof args, "train dataset=cifar100 data_dir=%s epochs=1 out=%s/o", dir, root);
    expect(1, "3074", args);
}

static void test_train_eval_and_corrupt_checkpoint(void **s)
{
    (void)s;
    char args[1200], ck[600];
    snprintf(args, sizeof args, "train dataset=cifar10 data_dir=%s epochs=2 depth=8 width=16 "
             "batch=16 out=%s/run", data, root);
    char *out = NULL;
    assert_int_equal(tu_run_sweep(&out, "%s", args), 0);
    assert_non_null(strstr(out, "epoch    1/2"));
    assert_non_null(strstr(out, "epoch    2/2"));
    assert_non_null(strstr(out, "test loss"));
    free(out);
    snprintf(ck, sizeof ck, "%s/run/checkpoint.safetensors", root);
    snprintf(args, sizeof args, "eval checkpoint=%s", ck);
    expect(0, "test error", args);

    /* corrupt: cut it short */
    size_t len;
    char *bytes = tu_read_file(ck, &len);
    assert_non_null(bytes);
    char bad[600];
    snprintf(bad, sizeof bad, "%s/run/bad.safetensors", root);
    tu_write_file(bad, bytes, len / 2);
    snprintf(args, sizeof args, "eval checkpoint=%s", bad);
    expect(1, "bad.safetensors", args);
    snprintf(args, sizeof args, "train resume=%s out=%s/r2", bad, root);
    expect(1, "bad.safetensors", args);  /* its header is whole: the run fails on the data */
    /* corrupt: garbage header size */
    memset(bytes, 0xff, 8);
    tu_write_file(bad, bytes, len);
    snprintf(args, sizeof args, "eval checkpoint=%s", bad);
    expect(1, "bad.safetensors", args);
    free(bytes);
    snprintf(args, sizeof args, "eval checkpoint=%s/none.safetensors", root);
    expect(1, "none.safetensors", args);

    /* resume keeps the trajectory: a changed learning rate is refused */
    snprintf(args, sizeof args, "train resume=%s lr=0.3 out=%s/r3", ck, root);
    expect(2, "'lr'", args);
    /* a finished run resumes to nothing more, successfully */
    snprintf(args, sizeof args, "train resume=%s out=%s/r4", ck, root);
    expect(0, NULL, args);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bad_keys_and_values),
        cmocka_unit_test(test_missing_data),
        cmocka_unit_test(test_truncated_data),
        cmocka_unit_test(test_wrong_record_size),
        cmocka_unit_test(test_train_eval_and_corrupt_checkpoint),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
