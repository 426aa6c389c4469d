/*
 * Provenance: the build's commit (embedded by cmake/buildinfo.cmake) and,
 * through libgit2, the state of the repository a sweep runs from.
 *
 * Invariants:
 *  - No repository, an unborn HEAD, a detached HEAD and a bare repository are
 *    states, recorded as such; only a real libgit2 failure (or a folder that
 *    does not exist) is an error, reported as "git: <where>: <what>: <why>".
 *  - libgit2 is initialised and shut down around each provenance_read. Its
 *    init is reference-counted, so a caller that holds its own init (the
 *    tests) is unaffected; no libgit2 object outlives the call, and what the
 *    Provenance owns (repo_diff) is plain malloc'd memory, so provenance_free
 *    needs no libgit2.
 *  - Each libgit2 acquisition is freed in the function that made it, at its
 *    single `done` label.
 */
#include "provenance.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <git2.h>

/* The diff is for recovering the code; a tree that differs from HEAD by more
 * than this is not a code change worth storing whole, so it is cut at a line
 * boundary and marked. */
#define DIFF_MAX ((size_t)64 << 20)
#define DIFF_TRUNCATED_MARK "[shakeshake provenance: diff truncated at 64 MiB]\n"
/* Files above this are reported as binary without being read: sources are far
 * smaller, and a large untracked data file must not be loaded to be diffed.
 * Unread, such a file has no blob id, and libgit2 1.5 prints it as
 * "Binary files /dev/null and /dev/null differ" under its own
 * "diff --git a/<path> b/<path>" header. */
#define DIFF_FILE_MAX ((git_off_t)8 << 20)

/* The one checker: a negative libgit2 status becomes -1 with libgit2's own
 * message, naming the repository and the step. */
static int git_check(int rc, const char *where, const char *what, Err *e)
{
    if (rc >= 0)
        return 0;
    const git_error *ge = git_error_last();
    return err_set(e, "git: %s: %s: %s", where, what,
                   ge && ge->message ? ge->message : "unknown error");
}

/* Copies src into a fixed field; a record that would be cut is an error,
 * since a truncated path or branch name would silently name something else. */
static int copy_field(char *dst, size_t size, const char *src, const char *what,
                      const char *where, Err *e)
{
    size_t n = strlen(src);
    if (n >= size)
        return err_set(e, "git: %s: %s is longer than %zu bytes", where, what, size - 1);
    memcpy(dst, src, n + 1);
    return 0;
}

/* HEAD: the commit and branch, or the unborn branch's name. */
static int read_head(Provenance *p, git_repository *repo, const char *where, Err *e)
{
    git_reference *head = NULL, *sym = NULL;
    git_object *commit = NULL;
    int rc = git_repository_head(&head, repo);
    if (rc == GIT_EUNBORNBRANCH) {
        /* No commit yet: HEAD is a symbolic ref to a branch that does not
         * exist; its target still names the branch. */
        git_error_clear();
        strcpy(p->repo_state, "unborn");
        rc = git_reference_lookup(&sym, repo, "HEAD");
        if ((rc = git_check(rc, where, "reading HEAD", e)) != 0)
            goto done;
        const char *target = git_reference_symbolic_target(sym);
        if (target) {
            if (strncmp(target, "refs/heads/", 11) == 0)
                target += 11;
            rc = copy_field(p->repo_branch, sizeof p->repo_branch, target, "the branch name",
                            where, e);
        }
        goto done;
    }
    if ((rc = git_check(rc, where, "reading HEAD", e)) != 0)
        goto done;
    strcpy(p->repo_state, "ok");
    /* git_repository_head resolves a symbolic HEAD to its branch; a HEAD
     * that is not a branch is detached. */
    rc = copy_field(p->repo_branch, sizeof p->repo_branch,
                    git_reference_is_branch(head) ? git_reference_shorthand(head) : "(detached)",
                    "the branch name", where, e);
    if (rc != 0)
        goto done;
    rc = git_reference_peel(&commit, head, GIT_OBJECT_COMMIT);
    if ((rc = git_check(rc, where, "reading HEAD's commit", e)) != 0)
        goto done;
    git_oid_tostr(p->repo_commit, sizeof p->repo_commit, git_object_id(commit));
done:
    git_object_free(commit);
    git_reference_free(sym);
    git_reference_free(head);
    return rc;
}

/* A growing, NUL-terminated text that git_diff_print appends to. */
typedef struct {
    char *data;
    size_t len, cap;
    int truncated, oom;
} DiffText;

static int diff_append(DiffText *t, const char *s, size_t n)
{
    if (t->len + n + 1 > t->cap) {
        size_t cap = t->cap ? t->cap : (size_t)64 << 10;
        while (cap < t->len + n + 1)
            cap *= 2;
        char *grown = realloc(t->data, cap);
        if (!grown) {
            t->oom = 1;
            return -1;
        }
        t->data = grown;
        t->cap = cap;
    }
    memcpy(t->data + t->len, s, n);
    t->len += n;
    t->data[t->len] = '\0';
    return 0;
}

/* A path changed in the index and changed back in the work tree comes out of
 * the merged diff as "modified" to the same blob: a header with no hunks,
 * which `git apply` rejects, so it is left out. */
static int delta_is_noop(const git_diff_delta *d)
{
    return d->status == GIT_DELTA_MODIFIED &&
           (d->old_file.flags & d->new_file.flags & GIT_DIFF_FLAG_VALID_ID) &&
           git_oid_equal(&d->old_file.id, &d->new_file.id) &&
           d->old_file.mode == d->new_file.mode;
}

static int diff_line(const git_diff_delta *delta, const git_diff_hunk *hunk,
                     const git_diff_line *line, void *payload)
{
    (void)hunk;
    DiffText *t = payload;
    if (delta_is_noop(delta))
        return 0;
    /* Only content lines carry their origin as a prefix; headers and the
     * "no newline" markers are whole lines in content. */
    char origin = line->origin;
    int prefixed = origin == GIT_DIFF_LINE_CONTEXT || origin == GIT_DIFF_LINE_ADDITION ||
                   origin == GIT_DIFF_LINE_DELETION;
    if (t->len + (size_t)prefixed + line->content_len > DIFF_MAX) {
        t->truncated = 1;
        return GIT_EUSER;
    }
    if ((prefixed && diff_append(t, &origin, 1) != 0) ||
        diff_append(t, line->content, line->content_len) != 0)
        return GIT_EUSER;
    return 0;
}

/* Dirty state from the status list, and when dirty the diff of HEAD's tree
 * (nothing, for an unborn HEAD) against the work tree. */
static int read_changes(Provenance *p, git_repository *repo, const char *where, Err *e)
{
    git_status_list *status = NULL;
    git_object *tree = NULL;
    git_diff *diff = NULL;
    DiffText text = {0};

    /* Ignored files are left out by not asking for them. */
    git_status_options so;
    git_status_options_init(&so, GIT_STATUS_OPTIONS_VERSION);
    so.show = GIT_STATUS_SHOW_INDEX_AND_WORKDIR;
    so.flags = GIT_STATUS_OPT_INCLUDE_UNTRACKED | GIT_STATUS_OPT_RECURSE_UNTRACKED_DIRS;
    int rc = git_status_list_new(&status, repo, &so);
    if ((rc = git_check(rc, where, "reading the status", e)) != 0)
        goto done;
    size_t n = git_status_list_entrycount(status);
    for (size_t i = 0; i < n && !p->repo_dirty; i++) {
        unsigned s = git_status_byindex(status, i)->status;
        p->repo_dirty = (s & ~(unsigned)GIT_STATUS_IGNORED) != GIT_STATUS_CURRENT;
    }
    if (!p->repo_dirty)
        goto done;

    /* The tree of the commit recorded above, not HEAD again: HEAD may have
     * moved since. */
    if (p->repo_commit[0]) {
        char spec[80];
        snprintf(spec, sizeof spec, "%s^{tree}", p->repo_commit);
        rc = git_revparse_single(&tree, repo, spec);
        if ((rc = git_check(rc, where, "reading HEAD's tree", e)) != 0)
            goto done;
    }
    git_diff_options dopts;
    git_diff_options_init(&dopts, GIT_DIFF_OPTIONS_VERSION);
    dopts.flags |= GIT_DIFF_INCLUDE_UNTRACKED | GIT_DIFF_RECURSE_UNTRACKED_DIRS |
                   GIT_DIFF_SHOW_UNTRACKED_CONTENT;
    dopts.max_size = DIFF_FILE_MAX;
    rc = git_diff_tree_to_workdir_with_index(&diff, repo, (git_tree *)tree, &dopts);
    if ((rc = git_check(rc, where, "diffing HEAD against the work tree", e)) != 0)
        goto done;
    rc = git_diff_print(diff, GIT_DIFF_FORMAT_PATCH, diff_line, &text);
    if (text.oom) {
        rc = err_set(e, "git: %s: out of memory holding the diff", where);
        goto done;
    }
    if (text.truncated) {
        git_error_clear();
        rc = 0;
        if ((text.len && text.data[text.len - 1] != '\n' && diff_append(&text, "\n", 1) != 0) ||
            diff_append(&text, DIFF_TRUNCATED_MARK, strlen(DIFF_TRUNCATED_MARK)) != 0) {
            rc = err_set(e, "git: %s: out of memory holding the diff", where);
            goto done;
        }
    }
    if ((rc = git_check(rc, where, "printing the diff", e)) != 0)
        goto done;
    /* Dirty with an empty diff happens (a change staged, then undone in the
     * work tree): "" says "dirty, nothing to apply" where NULL says clean. */
    if (!text.data && diff_append(&text, "", 0) != 0) {
        rc = err_set(e, "git: %s: out of memory holding the diff", where);
        goto done;
    }
    p->repo_diff = text.data;
    text.data = NULL;
done:
    free(text.data);
    git_diff_free(diff);
    git_object_free(tree);
    git_status_list_free(status);
    return rc;
}

static void read_build(Provenance *p)
{
    snprintf(p->build_commit, sizeof p->build_commit, "%s",
             shake_build_commit[0] ? shake_build_commit : "unknown");
    p->build_dirty = shake_build_dirty;
}

int provenance_read(Provenance *p, const char *dir, Err *e)
{
    memset(p, 0, sizeof *p);
    read_build(p);
    /* libgit2 reports a missing folder as "no repository"; a typo in the
     * path must not be recorded as a run outside version control. */
    struct stat st;
    if (stat(dir, &st) != 0)
        return err_set(e, "provenance: %s: %s", dir, strerror(errno));
    if (!S_ISDIR(st.st_mode))
        return err_set(e, "provenance: %s: not a folder", dir);

    git_libgit2_init();
    git_repository *repo = NULL;
    /* Flags 0: search upward from dir, not across filesystems and without
     * $GIT_DIR, as `git status` run in dir would. */
    int rc = git_repository_open_ext(&repo, dir, 0, NULL);
    if (rc == GIT_ENOTFOUND) {
        git_error_clear();
        strcpy(p->repo_state, "none");
        rc = 0;
        goto done;
    }
    if ((rc = git_check(rc, dir, "opening the repository", e)) != 0)
        goto done;

    /* A bare repository has no work tree: nothing can be dirty and there is
     * no diff, so only HEAD is read and repo_path stays "". */
    const char *workdir = git_repository_workdir(repo);
    const char *where = workdir ? workdir : git_repository_path(repo);
    if (workdir) {
        size_t n = strlen(workdir);
        while (n > 1 && workdir[n - 1] == '/')
            n--;
        if (n >= sizeof p->repo_path) {
            rc = err_set(e, "git: %s: the work tree's path is longer than %zu bytes", workdir,
                         sizeof p->repo_path - 1);
            goto done;
        }
        memcpy(p->repo_path, workdir, n);
        p->repo_path[n] = '\0';
        where = p->repo_path;
    }
    if ((rc = read_head(p, repo, where, e)) != 0)
        goto done;
    if (workdir)
        rc = read_changes(p, repo, where, e);
done:
    git_repository_free(repo);
    git_libgit2_shutdown();
    if (rc != 0)
        provenance_free(p);
    return rc;
}

void provenance_free(Provenance *p)
{
    free(p->repo_diff);
    p->repo_diff = NULL;
}

void provenance_code_version(const Provenance *p, char *buf, int len)
{
    if (len <= 0)
        return;
    /* The binary's commit, not the repository's: the numbers come from the
     * code that was compiled. Anything but a full sha is "unknown". */
    const char *c = p->build_commit;
    size_t n = strspn(c, "0123456789abcdef");
    if (n < 12 || c[n] != '\0') {
        snprintf(buf, (size_t)len, "unknown");
        return;
    }
    snprintf(buf, (size_t)len, "%.12s%s", c, p->build_dirty ? "+dirty" : "");
}
