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
                                 * clean or no repository. Owned. */
} Provenance;

/* Reads the repository containing dir (searching upward). */
int provenance_read(Provenance *p, const char *dir, Err *e);
void provenance_free(Provenance *p);

/* "abc1234" or "abc1234+dirty": the code version results are grouped by. */
void provenance_code_version(const Provenance *p, char *buf, int len);

#endif
