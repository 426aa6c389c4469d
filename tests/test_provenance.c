/*
 * Provenance through libgit2: throwaway repositories made with libgit2 itself
 * (a fixed signature, no user or global git config) in each state a sweep can
 * start from, and the code version results are grouped by.
 */
#include "testutil.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <git2.h>

#include "provenance.h"

#define GIT_OK(call) git_ok((call), #call)

static void git_ok(int rc, const char *what)
{
    if (rc < 0) {
        const git_error *ge = git_error_last();
        fail_msg("%s: %d %s", what, rc, ge && ge->message ? ge->message : "");
    }
}

static void assert_contains(const char *haystack, const char *needle)
{
    if (!haystack || !strstr(haystack, needle))
        fail_msg("expected \"%s\" in \"%s\"", needle, haystack ? haystack : "(null)");
}

/* libgit2 resolves the work tree through realpath; compare against that. */
static const char *real(const char *path)
{
    static char buf[PATH_MAX];
    if (!realpath(path, buf))
        fail_msg("realpath %s", path);
    return buf;
}

static const char *join(const char *dir, const char *rel)
{
    static char buf[PATH_MAX];
    snprintf(buf, sizeof buf, "%s/%s", dir, rel);
    return buf;
}

/* Writes root/rel, making its parent folders. */
static void put(const char *root, const char *rel, const char *text)
{
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/%s", root, rel);
    for (char *s = strchr(path + strlen(root) + 1, '/'); s; s = strchr(s + 1, '/')) {
        *s = '\0';
        mkdir(path, 0755);
        *s = '/';
    }
    tu_write_file(path, text, strlen(text));
}

/* A repository whose unborn HEAD names `branch`, so the test does not depend
 * on init.defaultBranch. */
static git_repository *repo_new(const char *dir, const char *branch)
{
    git_repository *repo = NULL;
    git_repository_init_options o;
    GIT_OK(git_repository_init_options_init(&o, GIT_REPOSITORY_INIT_OPTIONS_VERSION));
    o.flags |= GIT_REPOSITORY_INIT_MKPATH;
    o.initial_head = branch;
    GIT_OK(git_repository_init_ext(&repo, dir, &o));
    return repo;
}

static void stage(git_repository *repo, const char *rel)
{
    git_index *index = NULL;
    GIT_OK(git_repository_index(&index, repo));
    GIT_OK(git_index_add_bypath(index, rel));
    GIT_OK(git_index_write(index));
    git_index_free(index);
}

/* Commits the tree `tree_id` on HEAD (with HEAD's commit as parent if born)
 * under a fixed signature; the sha goes to sha[41]. */
static void commit_tree(git_repository *repo, const git_oid *tree_id, char *sha)
{
    git_tree *tree = NULL;
    git_commit *parent = NULL;
    git_signature *sig = NULL;
    git_oid head_id, id;
    GIT_OK(git_tree_lookup(&tree, repo, tree_id));
    int unborn = git_repository_head_unborn(repo);
    GIT_OK(unborn);
    if (!unborn) {
        GIT_OK(git_reference_name_to_id(&head_id, repo, "HEAD"));
        GIT_OK(git_commit_lookup(&parent, repo, &head_id));
    }
    GIT_OK(git_signature_new(&sig, "Provenance Test", "test@example.invalid", 1700000000, 0));
    GIT_OK(git_commit_create_v(&id, repo, "HEAD", sig, sig, NULL, "test commit", tree,
                               parent ? 1 : 0, parent));
    git_oid_tostr(sha, 41, &id);
    git_signature_free(sig);
    git_commit_free(parent);
    git_tree_free(tree);
}

/* Commits what the index holds. */
static void commit_index(git_repository *repo, char *sha)
{
    git_index *index = NULL;
    git_oid tree_id;
    GIT_OK(git_repository_index(&index, repo));
    GIT_OK(git_index_write_tree(&tree_id, index));
    git_index_free(index);
    commit_tree(repo, &tree_id, sha);
}

/* A work tree at dir on branch "main" with a.txt = "old line\n" committed. */
static git_repository *repo_one_commit(const char *dir, char *sha)
{
    git_repository *repo = repo_new(dir, "main");
    put(dir, "a.txt", "old line\n");
    stage(repo, "a.txt");
    commit_index(repo, sha);
    return repo;
}

static void read_ok(Provenance *p, const char *dir)
{
    Err e = {{0}};
    if (provenance_read(p, dir, &e) != 0)
        fail_msg("provenance_read %s: %s", dir, e.msg);
}

static void test_not_a_repository(void **state)
{
    (void)state;
    char *dir = tu_tempdir("prov-none");
    /* The search goes upward; a scratch folder inside some checkout would
     * find that checkout, which is right but not this case. */
    git_repository *outer = NULL;
    if (git_repository_open_ext(&outer, dir, 0, NULL) == 0) {
        git_repository_free(outer);
        tu_rmtree(dir);
        free(dir);
        skip();
    }
    git_error_clear();
    Provenance p;
    memset(&p, 0x5a, sizeof p);         /* read must overwrite everything */
    p.repo_diff = NULL;
    read_ok(&p, dir);
    assert_string_equal(p.repo_state, "none");
    assert_string_equal(p.repo_path, "");
    assert_string_equal(p.repo_commit, "");
    assert_string_equal(p.repo_branch, "");
    assert_int_equal(p.repo_dirty, 0);
    assert_null(p.repo_diff);
    assert_string_equal(p.build_commit, shake_build_commit[0] ? shake_build_commit : "unknown");
    assert_int_equal(p.build_dirty, shake_build_dirty);
    provenance_free(&p);
    tu_rmtree(dir);
    free(dir);
}

static void test_missing_folder(void **state)
{
    (void)state;
    char *dir = tu_tempdir("prov-missing");
    char missing[PATH_MAX];
    snprintf(missing, sizeof missing, "%s/no-such-folder", dir);
    Provenance p;
    Err e = {{0}};
    assert_int_equal(provenance_read(&p, missing, &e), -1);
    assert_contains(e.msg, missing);
    assert_null(p.repo_diff);
    /* a file is not a folder either */
    put(dir, "file", "x");
    assert_int_equal(provenance_read(&p, join(dir, "file"), &e), -1);
    assert_contains(e.msg, "not a folder");
    tu_rmtree(dir);
    free(dir);
}

static void test_unborn(void **state)
{
    (void)state;
    char *dir = tu_tempdir("prov-unborn");
    git_repository *repo = repo_new(dir, "trunk");
    Provenance p;
    read_ok(&p, dir);
    assert_string_equal(p.repo_state, "unborn");
    assert_string_equal(p.repo_branch, "trunk");
    assert_string_equal(p.repo_commit, "");
    assert_string_equal(p.repo_path, real(dir));
    assert_int_equal(p.repo_dirty, 0);
    assert_null(p.repo_diff);
    provenance_free(&p);

    /* untracked: diffed against the empty tree, content included */
    put(dir, "new.txt", "hello unborn\n");
    read_ok(&p, dir);
    assert_string_equal(p.repo_state, "unborn");
    assert_int_equal(p.repo_dirty, 1);
    assert_contains(p.repo_diff, "new.txt");
    assert_contains(p.repo_diff, "+hello unborn\n");
    provenance_free(&p);

    /* staged in an unborn repository: still an addition */
    stage(repo, "new.txt");
    read_ok(&p, dir);
    assert_int_equal(p.repo_dirty, 1);
    assert_contains(p.repo_diff, "+hello unborn\n");
    provenance_free(&p);
    git_repository_free(repo);
    tu_rmtree(dir);
    free(dir);
}

static void test_clean_commit(void **state)
{
    (void)state;
    char *dir = tu_tempdir("prov-clean");
    char sha[41];
    git_repository *repo = repo_one_commit(dir, sha);
    Provenance p;
    read_ok(&p, dir);
    assert_string_equal(p.repo_state, "ok");
    assert_string_equal(p.repo_commit, sha);
    assert_int_equal(strlen(p.repo_commit), 40);
    assert_string_equal(p.repo_branch, "main");
    assert_string_equal(p.repo_path, real(dir));
    assert_int_equal(p.repo_dirty, 0);
    assert_null(p.repo_diff);
    provenance_free(&p);
    git_repository_free(repo);
    tu_rmtree(dir);
    free(dir);
}

static void test_modified(void **state)
{
    (void)state;
    char *dir = tu_tempdir("prov-modified");
    char sha[41];
    git_repository *repo = repo_one_commit(dir, sha);
    /* a different size, so no stat-cache coincidence can hide the change */
    put(dir, "a.txt", "new line, longer\n");
    Provenance p;
    read_ok(&p, dir);
    assert_string_equal(p.repo_commit, sha);
    assert_int_equal(p.repo_dirty, 1);
    assert_contains(p.repo_diff, "diff --git a/a.txt b/a.txt\n");
    assert_contains(p.repo_diff, "\n-old line\n");
    assert_contains(p.repo_diff, "\n+new line, longer\n");
    provenance_free(&p);
    git_repository_free(repo);
    tu_rmtree(dir);
    free(dir);
}

static void test_staged_only(void **state)
{
    (void)state;
    char *dir = tu_tempdir("prov-staged");
    char sha[41];
    git_repository *repo = repo_one_commit(dir, sha);
    put(dir, "a.txt", "staged line\n");
    stage(repo, "a.txt");
    Provenance p;
    read_ok(&p, dir);
    assert_int_equal(p.repo_dirty, 1);
    assert_contains(p.repo_diff, "\n+staged line\n");
    provenance_free(&p);

    /* staged, then undone in the work tree: still dirty (the index differs),
     * though HEAD and the work tree hold the same code, so there is nothing
     * to apply: not even a bare header, which `git apply` would refuse */
    put(dir, "a.txt", "old line\n");
    read_ok(&p, dir);
    assert_int_equal(p.repo_dirty, 1);
    assert_string_equal(p.repo_diff, "");
    provenance_free(&p);
    git_repository_free(repo);
    tu_rmtree(dir);
    free(dir);
}

static void test_untracked(void **state)
{
    (void)state;
    char *dir = tu_tempdir("prov-untracked");
    char sha[41];
    git_repository *repo = repo_one_commit(dir, sha);
    /* nested folders: untracked directories are recursed into */
    put(dir, "notes/deep/u.txt", "untracked content\n");
    Provenance p;
    read_ok(&p, dir);
    assert_int_equal(p.repo_dirty, 1);
    assert_contains(p.repo_diff, "b/notes/deep/u.txt");
    assert_contains(p.repo_diff, "\n+untracked content\n");
    assert_null(strstr(p.repo_diff, "a.txt"));  /* unchanged files stay out */
    provenance_free(&p);
    git_repository_free(repo);
    tu_rmtree(dir);
    free(dir);
}

static void test_binary(void **state)
{
    (void)state;
    char *dir = tu_tempdir("prov-binary");
    char sha[41];
    git_repository *repo = repo_one_commit(dir, sha);
    static const unsigned char bytes[] = {0x00, 0x01, 0xff, 0x00, 0x7f, 0x00};
    tu_write_file(join(dir, "blob.bin"), bytes, sizeof bytes);
    /* text, but over the 8 MiB per-file limit: marked binary unread */
    size_t big = (9u << 20);
    char *text = malloc(big);
    assert_non_null(text);
    for (size_t i = 0; i < big; i++)
        text[i] = i % 64 == 63 ? '\n' : 'x';
    tu_write_file(join(dir, "big.txt"), text, big);
    free(text);
    Provenance p;
    read_ok(&p, dir);
    assert_int_equal(p.repo_dirty, 1);
    assert_contains(p.repo_diff, "Binary files /dev/null and b/blob.bin differ");
    /* unread, so libgit2 1.5 has no blob id for it and prints both sides
     * as /dev/null: named, marked binary, none of its bytes in the diff */
    assert_contains(p.repo_diff, "diff --git a/big.txt b/big.txt\n");
    assert_contains(p.repo_diff, "Binary files /dev/null and /dev/null differ");
    assert_null(strstr(p.repo_diff, "xxxx"));
    assert_true(strlen(p.repo_diff) < 4096);
    provenance_free(&p);
    git_repository_free(repo);
    tu_rmtree(dir);
    free(dir);
}

static void test_ignored(void **state)
{
    (void)state;
    char *dir = tu_tempdir("prov-ignored");
    git_repository *repo = repo_new(dir, "main");
    char sha[41];
    put(dir, ".gitignore", "*.log\nout/\n");
    put(dir, "a.txt", "old line\n");
    stage(repo, ".gitignore");
    stage(repo, "a.txt");
    commit_index(repo, sha);
    put(dir, "run.log", "ignored\n");
    put(dir, "out/deep/result.bin", "ignored too\n");
    Provenance p;
    read_ok(&p, dir);
    assert_string_equal(p.repo_state, "ok");
    assert_int_equal(p.repo_dirty, 0);
    assert_null(p.repo_diff);
    provenance_free(&p);
    /* the same tree with one file not ignored is dirty, so the check above
     * is the ignore rule at work */
    put(dir, "run.txt", "not ignored\n");
    read_ok(&p, dir);
    assert_int_equal(p.repo_dirty, 1);
    assert_contains(p.repo_diff, "run.txt");
    assert_null(strstr(p.repo_diff, "run.log"));
    provenance_free(&p);
    git_repository_free(repo);
    tu_rmtree(dir);
    free(dir);
}

static void test_detached(void **state)
{
    (void)state;
    char *dir = tu_tempdir("prov-detached");
    char first[41], second[41];
    git_repository *repo = repo_one_commit(dir, first);
    put(dir, "b.txt", "second\n");
    stage(repo, "b.txt");
    commit_index(repo, second);
    assert_string_not_equal(first, second);
    git_oid id;
    GIT_OK(git_oid_fromstr(&id, first));
    GIT_OK(git_repository_set_head_detached(repo, &id));
    /* b.txt is still in the work tree but not in `first`: move it aside so
     * the tree is clean and only HEAD's state is under test */
    GIT_OK(remove(join(dir, "b.txt")) == 0 ? 0 : -1);
    git_index *index = NULL;
    GIT_OK(git_repository_index(&index, repo));
    GIT_OK(git_index_remove_bypath(index, "b.txt"));
    GIT_OK(git_index_write(index));
    git_index_free(index);
    Provenance p;
    read_ok(&p, dir);
    assert_string_equal(p.repo_state, "ok");
    assert_string_equal(p.repo_branch, "(detached)");
    assert_string_equal(p.repo_commit, first);
    assert_int_equal(p.repo_dirty, 0);
    assert_null(p.repo_diff);
    provenance_free(&p);
    git_repository_free(repo);
    tu_rmtree(dir);
    free(dir);
}

static void test_subfolder(void **state)
{
    (void)state;
    char *dir = tu_tempdir("prov-sub");
    git_repository *repo = repo_new(dir, "feature/x");
    char sha[41];
    put(dir, "src/lib/a.c", "int a;\n");
    stage(repo, "src/lib/a.c");
    commit_index(repo, sha);
    Provenance p;
    read_ok(&p, join(dir, "src/lib"));
    assert_string_equal(p.repo_state, "ok");
    assert_string_equal(p.repo_path, real(dir));
    assert_string_equal(p.repo_commit, sha);
    assert_string_equal(p.repo_branch, "feature/x");  /* the whole name, not "x" */
    assert_int_equal(p.repo_dirty, 0);
    provenance_free(&p);
    git_repository_free(repo);
    tu_rmtree(dir);
    free(dir);
}

static void test_bare(void **state)
{
    (void)state;
    char *dir = tu_tempdir("prov-bare");
    git_repository *repo = NULL;
    GIT_OK(git_repository_init(&repo, dir, 1));
    Provenance p;
    read_ok(&p, dir);
    assert_string_equal(p.repo_state, "unborn");
    assert_true(p.repo_branch[0] != '\0');
    assert_string_equal(p.repo_path, "");
    assert_int_equal(p.repo_dirty, 0);
    assert_null(p.repo_diff);
    provenance_free(&p);

    /* a commit of the empty tree, made without a work tree */
    git_treebuilder *tb = NULL;
    git_oid tree_id;
    char sha[41];
    GIT_OK(git_treebuilder_new(&tb, repo, NULL));
    GIT_OK(git_treebuilder_write(&tree_id, tb));
    git_treebuilder_free(tb);
    commit_tree(repo, &tree_id, sha);
    read_ok(&p, dir);
    assert_string_equal(p.repo_state, "ok");
    assert_string_equal(p.repo_commit, sha);
    assert_string_equal(p.repo_path, "");
    assert_int_equal(p.repo_dirty, 0);
    assert_null(p.repo_diff);
    provenance_free(&p);
    git_repository_free(repo);
    tu_rmtree(dir);
    free(dir);
}

static void test_git_failure(void **state)
{
    (void)state;
    char *dir = tu_tempdir("prov-corrupt");
    char sha[41];
    git_repository *repo = repo_one_commit(dir, sha);
    git_repository_free(repo);
    put(dir, "a.txt", "changed so the index is read\n");
    put(dir, ".git/index", "this is not an index file at all, not even close\n");
    Provenance p;
    Err e = {{0}};
    assert_int_equal(provenance_read(&p, dir, &e), -1);
    assert_true(strncmp(e.msg, "git: ", 5) == 0);
    assert_contains(e.msg, real(dir));
    assert_contains(e.msg, "status");
    assert_null(p.repo_diff);
    provenance_free(&p);
    tu_rmtree(dir);
    free(dir);
}

/* The diff is capped at 64 MiB and ends with a mark when cut. Files stay
 * under the 8 MiB per-file limit (above it they would be reported as binary
 * and add nothing), so it takes several. */
static void test_diff_truncated(void **state)
{
    (void)state;
    char *dir = tu_tempdir("prov-huge");
    char sha[41];
    git_repository *repo = repo_one_commit(dir, sha);
    size_t line = 100, lines = (7u << 20) / line;
    char *text = malloc(line * lines);
    assert_non_null(text);
    for (size_t i = 0; i < lines; i++) {
        memset(text + i * line, 'a' + (int)(i % 26), line - 1);
        text[i * line + line - 1] = '\n';
    }
    for (int f = 0; f < 10; f++) {
        char name[32];
        snprintf(name, sizeof name, "big%d.txt", f);
        tu_write_file(join(dir, name), text, line * lines);
    }
    free(text);
    Provenance p;
    read_ok(&p, dir);
    assert_int_equal(p.repo_dirty, 1);
    size_t n = strlen(p.repo_diff);
    assert_true(n <= ((size_t)64 << 20) + 100);
    assert_true(n > ((size_t)63 << 20));
    assert_contains(p.repo_diff + n - 200, "\n[shakeshake provenance: diff truncated at 64 MiB]\n");
    provenance_free(&p);
    git_repository_free(repo);
    tu_rmtree(dir);
    free(dir);
}

static void test_code_version(void **state)
{
    (void)state;
    Provenance p;
    memset(&p, 0, sizeof p);
    char buf[64];
    strcpy(p.build_commit, "0123456789abcdef0123456789abcdef01234567");
    provenance_code_version(&p, buf, sizeof buf);
    assert_string_equal(buf, "0123456789ab");
    p.build_dirty = 1;
    provenance_code_version(&p, buf, sizeof buf);
    assert_string_equal(buf, "0123456789ab+dirty");
    /* the repository's commit plays no part: results group by the binary */
    strcpy(p.repo_commit, "fedcba9876543210fedcba9876543210fedcba98");
    provenance_code_version(&p, buf, sizeof buf);
    assert_string_equal(buf, "0123456789ab+dirty");
    /* a short buffer is cut and terminated */
    memset(buf, 'X', sizeof buf);
    provenance_code_version(&p, buf, 5);
    assert_string_equal(buf, "0123");
    /* len 0 writes nothing */
    buf[0] = 'Q';
    provenance_code_version(&p, buf, 0);
    assert_int_equal(buf[0], 'Q');
    strcpy(p.build_commit, "unknown");
    provenance_code_version(&p, buf, sizeof buf);
    assert_string_equal(buf, "unknown");
    p.build_commit[0] = '\0';
    provenance_code_version(&p, buf, sizeof buf);
    assert_string_equal(buf, "unknown");
    strcpy(p.build_commit, "0123abc");  /* too short to be a commit */
    provenance_code_version(&p, buf, sizeof buf);
    assert_string_equal(buf, "unknown");
    strcpy(p.build_commit, "0123456789AB");  /* not what git prints */
    provenance_code_version(&p, buf, sizeof buf);
    assert_string_equal(buf, "unknown");
}

static void test_free_zeroed(void **state)
{
    (void)state;
    Provenance p;
    memset(&p, 0, sizeof p);
    provenance_free(&p);
    provenance_free(&p);
    assert_null(p.repo_diff);
    p.repo_diff = malloc(16);
    provenance_free(&p);
    assert_null(p.repo_diff);
    provenance_free(&p);
}

/* Runs with libgit2 held initialised and every config level but the
 * repository's own pointed at an empty folder, so neither the machine's nor
 * the user's git config (init.defaultBranch, core.excludesFile, ...) reaches
 * the tests. */
int main(void)
{
    git_libgit2_init();
    char *cfg = tu_tempdir("prov-config");
    static const int levels[] = {GIT_CONFIG_LEVEL_SYSTEM, GIT_CONFIG_LEVEL_XDG,
                                 GIT_CONFIG_LEVEL_GLOBAL, GIT_CONFIG_LEVEL_PROGRAMDATA};
    for (size_t i = 0; i < sizeof levels / sizeof levels[0]; i++)
        if (git_libgit2_opts(GIT_OPT_SET_SEARCH_PATH, levels[i], cfg) < 0) {
            fprintf(stderr, "setting libgit2's config search path failed\n");
            return 1;
        }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_not_a_repository),
        cmocka_unit_test(test_missing_folder),
        cmocka_unit_test(test_unborn),
        cmocka_unit_test(test_clean_commit),
        cmocka_unit_test(test_modified),
        cmocka_unit_test(test_staged_only),
        cmocka_unit_test(test_untracked),
        cmocka_unit_test(test_binary),
        cmocka_unit_test(test_ignored),
        cmocka_unit_test(test_detached),
        cmocka_unit_test(test_subfolder),
        cmocka_unit_test(test_bare),
        cmocka_unit_test(test_git_failure),
        cmocka_unit_test(test_diff_truncated),
        cmocka_unit_test(test_code_version),
        cmocka_unit_test(test_free_zeroed),
    };
    int failed = cmocka_run_group_tests(tests, NULL, NULL);
    tu_rmtree(cfg);
    free(cfg);
    git_libgit2_shutdown();
    return failed;
}
