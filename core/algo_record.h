/*
 * A run's record of the convolution algorithms its backend picked: one
 * entry per (GPU, library version, precision, search, convolution shape,
 * batch size), holding for each direction (forward, backward data,
 * backward filter) the candidates best first, as (algo, math) pairs in the
 * library's own numbering.
 *
 * Why: the cuda backend asks cuDNN which algorithms to use. With its
 * heuristics the answer repeats on the same GPU and cuDNN; with its Find
 * (SHAKE_CUDA_FIND=1, which times the candidates) it can change from one
 * process to the next. Different algorithms round differently, so a run
 * resumed in a new process -- after preemption or a crash -- would no
 * longer repeat the uninterrupted run bit for bit. The backend reads the
 * record before it asks cuDNN and adds what it had to ask, so a resumed run
 * uses the algorithms its first part used (and skips the search).
 *
 * The file is JSON, rewritten whole: a temporary file, fsync, rename over
 * the old one, fsync of the folder. Entries for another GPU or library
 * version stay in the file and are never used. A file that cannot be read
 * or parsed, or entries that do not have the expected form, are not an
 * error: the record starts without them, algo_record_warning says why, and
 * the next save replaces the file (what is lost is only the exact repeat
 * of the algorithms, never a result).
 */
#ifndef SHAKE_ALGO_RECORD_H
#define SHAKE_ALGO_RECORD_H

#include "util.h"

enum { ALGO_DIRS = 3, ALGO_MAX = 8 };

/* The directions, in the order of AlgoLists and of the file's keys. */
extern const char *const algo_dir_names[ALGO_DIRS];

typedef struct {
    const char *gpu;            /* e.g. "NVIDIA H200 (sm_90)" */
    const char *library;        /* e.g. "cuDNN 9.14.0" */
    const char *precision;      /* "fp32", "bf16" */
    const char *search;         /* how the lists were made: "heuristics", "find" */
    const char *conv;           /* the convolution's shape, as the backend words it */
    int batch;
} AlgoKey;

typedef struct {
    int algo[ALGO_DIRS][ALGO_MAX];
    int math[ALGO_DIRS][ALGO_MAX];
    int count[ALGO_DIRS];       /* 1..ALGO_MAX in a stored entry */
} AlgoLists;

typedef struct AlgoRecord AlgoRecord;

/*
 * The record kept at path: read from path if it exists, else from seed if
 * that is given and exists (a run resumed from another run's folder; the
 * record is then written to path at the next save). NULL only when out of
 * memory (e says so).
 */
AlgoRecord *algo_record_open(const char *path, const char *seed, Err *e);
void algo_record_close(AlgoRecord *r);

/* Why the file or some of its entries were not taken when it was opened:
 * NULL if all were (or there was no file). */
const char *algo_record_warning(const AlgoRecord *r);

/* The lists stored for k: 1 and *out filled, or 0 if none. */
int algo_record_get(const AlgoRecord *r, const AlgoKey *k, AlgoLists *out);
/* Stores l for k (replacing what k had); 0, or -1 with e set (a count
 * outside 1..ALGO_MAX, or out of memory). */
int algo_record_put(AlgoRecord *r, const AlgoKey *k, const AlgoLists *l, Err *e);

/* Writes the file if anything changed since it was read or last written;
 * 0, or -1 with e naming the file. */
int algo_record_save(AlgoRecord *r, Err *e);

#endif
