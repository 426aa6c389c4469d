/*
 * `sweep data fetch`: downloads an official data archive with libcurl, checks
 * its MD5 against the published one, and unpacks it with libarchive where
 * `sweep train` looks by default (data/cifar-10-batches-bin, ...). A partial
 * download never replaces a good copy: it goes to a temporary file first.
 */
#ifndef SHAKE_FETCH_H
#define SHAKE_FETCH_H

#include <stdio.h>

#include "util.h"

typedef struct {
    const char *name;           /* "cifar10", "cifar100" */
    const char *url;            /* the official archive */
    const char *md5;            /* its published MD5, hex */
    const char *subdir;         /* the folder the archive unpacks to */
    const char *files[8];       /* files that must be there afterwards (NULL-terminated) */
} DataSource;

/* The source for a data set name, NULL if unknown. */
const DataSource *data_source(const char *name);

/*
 * Fetches `name` into dir (default "data"): dir/<subdir>/... url and md5
 * override the official ones when not NULL (mirrors, tests). Progress lines
 * go to `progress` (may be NULL). Returns 0 and leaves the files in place;
 * an existing complete copy is kept and nothing is downloaded.
 */
int data_fetch(const char *name, const char *dir, const char *url, const char *md5,
               FILE *progress, Err *e);

#endif
