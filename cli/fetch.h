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
    int record_bytes;           /* one image record in the .bin files (3073, 3074) */
    long long sizes[8];         /* official size of files[i]; nonzero marks a record
                                 * file, 0 a text file that need only be non-empty */
} DataSource;

/* The source for a data set name, NULL if unknown. */
const DataSource *data_source(const char *name);

/*
 * Fetches `name` into dir (default "data"): dir/<subdir>/... url and md5
 * override the official ones when not NULL (mirrors, tests). Progress lines
 * go to `progress` (may be NULL). Returns 0 and leaves the files in place;
 * an existing complete copy is kept and nothing is downloaded.
 *
 * "Complete" means every file of DataSource.files is a non-empty regular
 * file and every record file a whole number of records; with the official
 * url (url NULL) record files must also have their official sizes, so a
 * small copy from a test server or a partial mirror is fetched again.
 * On failure dir/<subdir> is left exactly as it was.
 */
int data_fetch(const char *name, const char *dir, const char *url, const char *md5,
               FILE *progress, Err *e);

#endif
