/*
 * Sweep files: Lua 5.4 scripts that return a sweep (a name, a base config,
 * cells, repeats, reference values, a report layout). The script runs in a
 * sandbox (no io, os, require of arbitrary modules, binary chunks, debug)
 * under an instruction and memory budget, with the embedded library of
 * lua/sweep.lua available as require "sweep". Everything a sweep file gets
 * wrong is reported as "file:line: message" before anything runs.
 */
#ifndef SHAKE_SWEEPFILE_H
#define SHAKE_SWEEPFILE_H

#include <stdint.h>

#include "config.h"
#include "util.h"

typedef struct {
    TrainConfig cfg;            /* defaults + base + cell + overrides; seed = the cell's */
    char *settings;             /* the cell's own keys, canonical "k=v k=v" (sorted) */
    char *key;                  /* identity: canonical JSON of cfg without the keys of
                                 * where/how it runs (seed, out, threads, backend,
                                 * data_dir, init, resume, steps) */
    char *label;                /* human name, e.g. "Shake-Shake-Image 26 2x32d" */
    char *row, *col;            /* report layout labels */
    int row_order, col_order;   /* positions of row and col in the layout */
    int repeats;                /* runs of this cell; repeat k uses seed cfg.seed + k */
    int has_ref;
    double ref;                 /* reference test error in percent (the paper's) */
    int line;                   /* sweep-file line the cell came from (0 if unknown) */
} SweepCell;

typedef struct {
    char *name;                 /* as the file names it, e.g. "table1" */
    char *id;                   /* name plus overrides, e.g. "table1[epochs=30]":
                                 * what the results store keys the sweep by */
    char *title;                /* for reports; may be "" */
    char *file;                 /* the path it was loaded from */
    char *text;                 /* the file's text, kept with the results */
    char hash[65];              /* sha256 of the text, hex */
    char *overrides;            /* canonical "k=v ..." of --set, "" if none */
    int ncells;
    SweepCell *cells;
    int nrows, ncols;
    char **rows, **cols;        /* layout labels in order */
} Sweep;

/*
 * Loads and validates path. overrides: "key=value" strings applied to every
 * cell after base and cell settings (--set). Errors: "file:line: message".
 */
int sweep_load(Sweep *s, const char *path, char **overrides, int noverrides, Err *e);
void sweep_free(Sweep *s);

/* Total runs: the sum of the cells' repeats. */
int sweep_nruns(const Sweep *s);

#endif
