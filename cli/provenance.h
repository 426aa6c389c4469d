/*
 * Where results come from: the commit the binary was built from (embedded at
 * build time) and, through libgit2, the commit, branch and dirty state of the
 * repository a sweep runs from, with the diff of a dirty tree so that the
 * exact code can be recovered. No repository, an unborn HEAD or a detached
 * HEAD are recorded as such, never an error.
 */
#ifndef SHAKE_PROVENANCE_H
#define SHAKE_PROVENANCE_H

#include "util.h"

/* Written by cmake/buildinfo.cmake at every build. */
extern const char shake_build_commit[];
extern const int shake_build_dirty;

typedef struct {
    char build_commit[64];      /* SHAKE_BUILD_COMMIT, "unknown" if not built in a checkout */
    int build_dirty;            /* the build tree had uncommitted changes */
    char repo_state[16];        /* "ok", "none" (not a repository), "unborn" (no commit yet) */
    char repo_path[1024];       /* the work tree's root, "" if none */
    char repo_commit[64];       /* HEAD's full sha, "" if none or unborn */
    char repo_branch[256];      /* branch name, "(detached)" or "" */
    int repo_dirty;             /* tracked files changed, staged or not, or untracked
                                 * files not ignored */
    char *repo_diff;            /* unified diff of HEAD against the work tree (tracked
                                 * changes, plus untracked files as additions); NULL if
                                 * clean or no repository, "" if dirty with nothing to
                                 * show (a staged change undone in the work tree). Owned,
                                 * malloc'd; at most 64 MiB, then a truncation mark. */
} Provenance;

/*
 * Fills p (overwritten: it must not own a diff) with the build's fields and
 * the repository containing dir (searching upward, as git does). dir must be
 * an existing folder. Initialises and shuts down libgit2 itself (reference-
 * counted, so safe beside a caller's own init). On failure returns -1 with a
 * message ("git: <where>: <step>: <libgit2's reason>") and p owns nothing.
 */
int provenance_read(Provenance *p, const char *dir, Err *e);
/* Frees repo_diff; safe on a zeroed Provenance and twice. */
void provenance_free(Provenance *p);

/* The build commit's first 12 hex digits, "+dirty" if the build tree was
 * dirty ("0123456789ab+dirty"), or "unknown": the code version results are
 * grouped by. */
void provenance_code_version(const Provenance *p, char *buf, int len);

#endif
