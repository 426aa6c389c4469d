/*
 * Sweep files: the four shipped ones load and say what the paper says; the
 * sandbox keeps a sweep file from the system and from running forever or
 * growing without bound; every mistake is reported as file:line with the
 * engine's own words; identities ignore where a run executes.
 */
#define _GNU_SOURCE
#include "testutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sweepfile.h"

static char *dir;
static int nfiles;

static int setup(void **state)
{
    (void)state;
    dir = tu_tempdir("sweepfile");
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    tu_rmtree(dir);
    free(dir);
    return 0;
}

static void assert_contains(const char *haystack, const char *needle)
{
    if (!strstr(haystack, needle))
        fail_msg("expected \"%s\" in \"%s\"", needle, haystack);
}

/* Writes text to a fresh file in dir; returns its path (caller frees). */
static char *write_sweep(const char *text)
{
    char *path;
    if (asprintf(&path, "%s/s%d.lua", dir, ++nfiles) < 0)
        fail_msg("asprintf");
    tu_write_file(path, text, strlen(text));
    return path;
}

static void load_ok(Sweep *s, const char *path, char **sets, int nsets)
{
    Err e = {{0}};
    if (sweep_load(s, path, sets, nsets, &e))
        fail_msg("%s", e.msg);
}

/*
 * text must fail to load, with a message that begins "FILE:LINE:" (line > 0
 * unless line is 0, then "FILE:") and contains part.
 */
static void expect_error(const char *text, int line, const char *part, char **sets, int nsets)
{
    char *path = write_sweep(text);
    Sweep s;
    Err e = {{0}};
    assert_int_equal(sweep_load(&s, path, sets, nsets, &e), -1);
    assert_int_equal(s.ncells, 0);      /* nothing half-loaded is left behind */
    assert_null(s.cells);
    char prefix[600];
    if (line > 0)
        snprintf(prefix, sizeof prefix, "%s:%d: ", path, line);
    else
        snprintf(prefix, sizeof prefix, "%s: ", path);
    if (strncmp(e.msg, prefix, strlen(prefix)) != 0)
        fail_msg("expected the message to begin \"%s\": \"%s\"", prefix, e.msg);
    assert_contains(e.msg, part);
    free(path);
}

/* ---- the shipped sweep files ---- */

typedef struct {
    const char *forward, *backward, *level;
    int width;
    double ref;
    const char *row, *col;
} PaperCell;

/* Table 1 of the paper, cell for cell, in the order the table reads. */
static const PaperCell TABLE1[] = {
    {"even", "even", "batch", 32, 4.27, "Even-Even n/a", "26 2x32d"},
    {"even", "even", "batch", 64, 3.76, "Even-Even n/a", "26 2x64d"},
    {"even", "even", "batch", 96, 3.58, "Even-Even n/a", "26 2x96d"},
    {"even", "shake", "batch", 32, 4.44, "Even-Shake Batch", "26 2x32d"},
    {"shake", "keep", "batch", 32, 4.11, "Shake-Keep Batch", "26 2x32d"},
    {"shake", "even", "batch", 32, 3.47, "Shake-Even Batch", "26 2x32d"},
    {"shake", "even", "batch", 64, 3.30, "Shake-Even Batch", "26 2x64d"},
    {"shake", "shake", "batch", 32, 3.67, "Shake-Shake Batch", "26 2x32d"},
    {"shake", "shake", "batch", 64, 3.07, "Shake-Shake Batch", "26 2x64d"},
    {"even", "shake", "image", 32, 4.11, "Even-Shake Image", "26 2x32d"},
    {"shake", "keep", "image", 32, 4.09, "Shake-Keep Image", "26 2x32d"},
    {"shake", "even", "image", 32, 3.47, "Shake-Even Image", "26 2x32d"},
    {"shake", "even", "image", 64, 3.20, "Shake-Even Image", "26 2x64d"},
    {"shake", "shake", "image", 32, 3.55, "Shake-Shake Image", "26 2x32d"},
    {"shake", "shake", "image", 64, 2.98, "Shake-Shake Image", "26 2x64d"},
    {"shake", "shake", "image", 96, 2.86, "Shake-Shake Image", "26 2x96d"},
    {"shake", "shake", "image", 112, 2.82, "Shake-Shake Image", "26 2x112d"},
};
#define NTABLE1 ((int)(sizeof TABLE1 / sizeof TABLE1[0]))

static const char *const ROWS1[] = {
    "Even-Even n/a", "Even-Shake Batch", "Shake-Keep Batch", "Shake-Even Batch",
    "Shake-Shake Batch", "Even-Shake Image", "Shake-Keep Image", "Shake-Even Image",
    "Shake-Shake Image",
};
static const char *const COLS1[] = {"26 2x32d", "26 2x64d", "26 2x96d", "26 2x112d"};

static int mode_index(const char *name)
{
    /* the engine's enum order: ShakeMode even, shake, keep; level batch, image */
    static const char *const names[] = {"even", "shake", "keep"};
    for (int i = 0; i < 3; i++)
        if (strcmp(names[i], name) == 0)
            return i;
    return strcmp(name, "batch") == 0 ? 0 : 1;
}

static void check_layout(const Sweep *s, const char *const *rows, int nrows,
                         const char *const *cols, int ncols)
{
    assert_int_equal(s->nrows, nrows);
    assert_int_equal(s->ncols, ncols);
    for (int i = 0; i < nrows; i++)
        assert_string_equal(s->rows[i], rows[i]);
    for (int i = 0; i < ncols; i++)
        assert_string_equal(s->cols[i], cols[i]);
    for (int i = 0; i < s->ncells; i++) {
        assert_string_equal(s->rows[s->cells[i].row_order], s->cells[i].row);
        assert_string_equal(s->cols[s->cells[i].col_order], s->cells[i].col);
    }
}

static void test_table1(void **state)
{
    (void)state;
    Sweep s;
    load_ok(&s, tu_source_path("sweeps/table1.lua"), NULL, 0);
    assert_string_equal(s.name, "table1");
    assert_string_equal(s.id, "table1");
    assert_string_equal(s.overrides, "");
    assert_int_equal(s.ncells, NTABLE1);
    assert_int_equal(sweep_nruns(&s), 55);
    for (int i = 0; i < NTABLE1; i++) {
        const SweepCell *c = &s.cells[i];
        const PaperCell *p = &TABLE1[i];
        assert_int_equal(c->cfg.dataset, DS_CIFAR10);
        assert_int_equal(c->cfg.arch, ARCH_RESNET);
        assert_int_equal(c->cfg.depth, 26);
        assert_int_equal(c->cfg.width, p->width);
        assert_int_equal(c->cfg.forward, mode_index(p->forward));
        assert_int_equal(c->cfg.backward, mode_index(p->backward));
        assert_int_equal(c->cfg.level, mode_index(p->level));
        assert_int_equal(c->cfg.epochs, 1800);
        assert_int_equal(c->cfg.batch, 128);
        assert_true(c->cfg.lr == 0.2);
        assert_true(c->cfg.wd == 1e-4);
        assert_true(c->has_ref);
        assert_true(c->ref == p->ref);
        assert_int_equal(c->repeats, p->width == 96 ? 5 : 3);
        assert_string_equal(c->row, p->row);
        assert_string_equal(c->col, p->col);
        assert_true(c->line > 0);
        char label[96];
        snprintf(label, sizeof label, "%s %s", p->row, p->col);
        assert_string_equal(c->label, label);
    }
    check_layout(&s, ROWS1, 9, COLS1, 4);
    /* the cells' own settings, canonical */
    assert_string_equal(s.cells[0].settings, "backward=even forward=even level=batch width=32");
    assert_int_equal(strlen(s.hash), 64);
    sweep_free(&s);
}

static void test_other_sweeps(void **state)
{
    (void)state;
    Sweep s;
    load_ok(&s, tu_source_path("sweeps/cifar100.lua"), NULL, 0);
    assert_int_equal(s.ncells, 1);
    assert_int_equal(sweep_nruns(&s), 3);
    const TrainConfig *c = &s.cells[0].cfg;
    assert_int_equal(c->dataset, DS_CIFAR100);
    assert_int_equal(c->arch, ARCH_RESNEXT);
    assert_int_equal(c->depth, 29);
    assert_int_equal(c->groups, 4);
    assert_int_equal(c->width, 64);
    assert_int_equal(c->forward, SHAKE_SHAKE);
    assert_int_equal(c->backward, SHAKE_EVEN);
    assert_int_equal(c->level, LEVEL_IMAGE);
    assert_int_equal(c->batch, 32);
    assert_true(c->lr == 0.025);
    assert_true(c->wd == 5e-4);
    assert_int_equal(c->epochs, 1800);
    assert_true(s.cells[0].has_ref && s.cells[0].ref == 15.85);
    assert_string_equal(s.cells[0].col, "29 2x4x64d");
    sweep_free(&s);

    load_ok(&s, tu_source_path("sweeps/reduced_cifar10.lua"), NULL, 0);
    assert_int_equal(s.ncells, 1);
    assert_int_equal(sweep_nruns(&s), 3);
    c = &s.cells[0].cfg;
    assert_int_equal(c->dataset, DS_CIFAR10);
    assert_int_equal(c->train_subset, 4000);
    assert_int_equal(c->width, 96);
    assert_int_equal(c->depth, 26);
    assert_int_equal(c->forward, SHAKE_SHAKE);
    assert_int_equal(c->backward, SHAKE_SHAKE);
    assert_int_equal(c->level, LEVEL_IMAGE);
    assert_true(s.cells[0].has_ref && s.cells[0].ref == 17.05);
    sweep_free(&s);

    /* the demo: Table 1's shape and modes, smaller, on Fashion-MNIST */
    load_ok(&s, tu_source_path("sweeps/demo.lua"), NULL, 0);
    assert_int_equal(s.ncells, NTABLE1);
    assert_int_equal(s.nrows, 9);
    assert_int_equal(s.ncols, 4);
    for (int i = 0; i < 9; i++)
        assert_string_equal(s.rows[i], ROWS1[i]);
    int widths[4] = {0};
    for (int i = 0; i < s.ncells; i++) {
        const SweepCell *d = &s.cells[i];
        assert_int_equal(d->cfg.dataset, DS_FASHION_MNIST);
        assert_int_equal(d->cfg.forward, mode_index(TABLE1[i].forward));
        assert_int_equal(d->cfg.backward, mode_index(TABLE1[i].backward));
        assert_int_equal(d->cfg.level, mode_index(TABLE1[i].level));
        assert_string_equal(d->row, TABLE1[i].row);
        assert_false(d->has_ref);
        assert_true(d->repeats >= 2);   /* a mean and a spread */
        widths[d->col_order] = d->cfg.width;
    }
    /* its columns keep the paper's order of widths */
    assert_true(widths[0] < widths[1] && widths[1] < widths[2] && widths[2] < widths[3]);
    sweep_free(&s);
}

/* ---- the sandbox ---- */

#define HEAD "local sweep = require 'sweep'\n"
#define CELLS "return sweep.sweep{name = 'x', cells = {{width = 32}}}\n"

static void test_sandbox(void **state)
{
    (void)state;
    expect_error(HEAD "os.execute('touch /tmp/sweepfile-pwned')\n" CELLS, 2, "os", NULL, 0);
    expect_error(HEAD "local f = io.open('/etc/passwd')\n" CELLS, 2, "io", NULL, 0);
    expect_error(HEAD "local os = require 'os'\n" CELLS, 2, "module 'os' is not available",
                 NULL, 0);
    expect_error(HEAD "local d = require 'debug'\n" CELLS, 2, "module 'debug'", NULL, 0);
    expect_error(HEAD "\nlocal i = debug.getinfo(1)\n" CELLS, 3, "debug", NULL, 0);
    expect_error(HEAD "local f = loadfile('/etc/passwd')\n" CELLS, 2, "loadfile", NULL, 0);
    expect_error(HEAD "dofile('/etc/passwd')\n" CELLS, 2, "dofile", NULL, 0);
    expect_error(HEAD "local dump = string.dump(function() end)\n" CELLS, 2, "dump", NULL, 0);
    expect_error(HEAD "local dump = ('').dump(function() end)\n" CELLS, 2, "dump", NULL, 0);
    expect_error(HEAD "collectgarbage()\n" CELLS, 2, "collectgarbage", NULL, 0);
    expect_error(HEAD "local p = package.loaded\n" CELLS, 2, "package", NULL, 0);
    /* a binary chunk (Lua's signature) is refused; text chunks still load */
    expect_error(HEAD "local f = assert(load('\\27Lua\\84\\0'))\n" CELLS, 2, "binary chunk",
                 NULL, 0);
    expect_error(HEAD "assert(load('return 1'))()\nlocal f = assert(load('x ='))\n" CELLS, 3,
                 "unexpected symbol", NULL, 0);
    /* the string metatable is out of reach, so string methods stay the library's */
    expect_error(HEAD "getmetatable('').__index = nil\n" CELLS, 2, "index", NULL, 0);
    /* nothing ran: os.execute was never reachable */
    FILE *f = fopen("/tmp/sweepfile-pwned", "r");
    assert_null(f);
}

static void test_lua_errors(void **state)
{
    (void)state;
    expect_error(HEAD "local x = = 1\n" CELLS, 2, "unexpected symbol", NULL, 0);
    expect_error(HEAD "\nlocal t = nil\nlocal y = t.field\n" CELLS, 4, "attempt to index", NULL,
                 0);
    expect_error(HEAD "error('no line', 0)\n" CELLS, 2, "no line", NULL, 0);
    expect_error(HEAD "error({})\n" CELLS, 2, "table value", NULL, 0);
    /* an error inside a function the sweep returns names the function's line */
    expect_error(HEAD "return sweep.sweep{name = 'x', cells = {{width = 32}},\n"
                 "  repeats = function(c) return c.nothing.field end}\n", 3, "attempt to index",
                 NULL, 0);
    /* runaway loops stop, even inside the file's own pcall */
    expect_error(HEAD "\nwhile true do end\n" CELLS, 3, "instruction budget exceeded", NULL, 0);
    expect_error(HEAD "while true do pcall(function() while true do end end) end\n" CELLS, 2,
                 "instruction budget exceeded", NULL, 0);
    expect_error(HEAD "return sweep.sweep{name = 'x', cells = {{width = 32}},\n"
                 "  label = function(c) while true do end end}\n", 3,
                 "instruction budget exceeded", NULL, 0);
    /* so does unbounded memory; the line is where it ran out */
    expect_error(HEAD "local s = string.rep('x', 1 << 30)\n" CELLS, 2, "not enough memory",
                 NULL, 0);
    expect_error(HEAD "local t = {}\nfor i = 1, 1e9 do t[i] = {i} end\n" CELLS, 3,
                 "not enough memory", NULL, 0);
    expect_error(HEAD "local ok = pcall(string.rep, 'x', 1 << 30)\n" CELLS, 2,
                 "not enough memory", NULL, 0);
    /* what the file returns */
    expect_error(HEAD "local x = 1\n", 0, "returned nothing", NULL, 0);
    expect_error(HEAD "return 42\n", 0, "returned number", NULL, 0);
}

/* ---- the sweep's shape ---- */

static void test_shape_errors(void **state)
{
    (void)state;
    expect_error(HEAD "\nreturn sweep.sweep{name = 'x', cells = {}}\n", 3, "no cells", NULL, 0);
    expect_error(HEAD "return sweep.sweep{name = 'x'}\n", 2, "no cells", NULL, 0);
    expect_error(HEAD "return sweep.sweep{name = 'table 1', cells = {{}}}\n", 2, "name", NULL,
                 0);
    expect_error(HEAD "return sweep.sweep{name = 'a/b', cells = {{}}}\n", 2, "name", NULL, 0);
    expect_error(HEAD "return sweep.sweep{name = 'x', cells = {{}}, repeats = 0}\n", 2,
                 "repeats must be a positive integer", NULL, 0);
    expect_error(HEAD "return sweep.sweep{name = 'x', cells = {{}}, reps = 3}\n", 2,
                 "unknown field 'reps'", NULL, 0);
    expect_error(HEAD "return sweep.sweep{name = 'x', cells = {{}},\n"
                 "  repeats = function(c) return 0 end}\n", 2, "repeats is 0", NULL, 0);
    expect_error(HEAD "return sweep.sweep{name = 'x', cells = {{}},\n"
                 "  reference = function(c) return 'low' end}\n", 2, "reference is a string",
                 NULL, 0);
    expect_error(HEAD "return sweep.sweep{name = 'x', cells = {sweep.cell{width = 32},\n"
                 "  sweep.cell{width = 64}}, label = function(c) return 'same' end}\n", 3,
                 "label 'same'", NULL, 0);
    expect_error(HEAD "return sweep.sweep{name = 'x', cells = {{}, 'width=32'}}\n", 2,
                 "cells[2] is a string", NULL, 0);
    expect_error(HEAD "local g = sweep.grid{width = {}}\n" CELLS, 2, "axis 'width'", NULL, 0);
    expect_error(HEAD "local g = sweep.grid{{{width = 8}}, width = {16}}\n" CELLS, 2,
                 "set by two axes", NULL, 0);
    expect_error(HEAD "local m = sweep.mode('shake-shake')\n" CELLS, 2, "not a mode", NULL, 0);
}

/* ---- config errors name the cell's line and the engine's message ---- */

static void test_config_errors(void **state)
{
    (void)state;
    /* unknown key in base: the sweep{} line, with the suggestion */
    expect_error(HEAD "\nreturn sweep.sweep{name = 'x', base = {epoch = 3},\n"
                 "  cells = {{width = 32}}}\n", 3, "unknown key 'epoch' (did you mean 'epochs'?)",
                 NULL, 0);
    /* unknown key in a cell: the cell's line */
    expect_error(HEAD "return sweep.sweep{name = 'x', cells = {\n"
                 "  sweep.cell{width = 32},\n"
                 "  sweep.cell{widht = 64},\n"
                 "}}\n", 4, "cell {widht=64}: unknown key 'widht' (did you mean 'width'?)", NULL,
                 0);
    /* a grid's cells carry the grid's line */
    expect_error(HEAD "return sweep.sweep{name = 'x',\n"
                 "  cells = sweep.grid{width = {32, 33}, depth = 26}}\n", 3,
                 "width=33: a Shake-Shake ResNet needs an even width", NULL, 0);
    /* bad value */
    expect_error(HEAD "return sweep.sweep{name = 'x', cells = {sweep.cell{forward = 'wobble'}}}\n",
                 2, "bad value 'wobble' for key 'forward'", NULL, 0);
    expect_error(HEAD "return sweep.sweep{name = 'x', cells = {sweep.cell{width = 3.5}}}\n", 2,
                 "bad value '3.5' for key 'width'", NULL, 0);
    expect_error(HEAD "return sweep.sweep{name = 'x', cells = {sweep.cell{width = {32}}}}\n", 2,
                 "width is a table", NULL, 0);
    /* validation: depth 27 */
    expect_error(HEAD "return sweep.sweep{name = 'x', cells = {\n"
                 "  sweep.cell{depth = 26},\n"
                 "  sweep.cell{depth = 27},\n"
                 "}}\n", 4, "cell {depth=27}: depth=27: a Shake-Shake ResNet needs depth 6n+2",
                 NULL, 0);
    /* a plain table (no sweep.sweep) says which cell */
    expect_error("return {name = 'x', cells = {{depth = 26}, {depth = 27}}}\n", 0,
                 "cells[2] {depth=27}", NULL, 0);
    /* duplicates: the same computation twice, even if spelled differently */
    expect_error(HEAD "return sweep.sweep{name = 'x', cells = {\n"
                 "  sweep.cell{lr = 0.1},\n"
                 "  sweep.cell{lr = '0.10', threads = 2},\n"
                 "}}\n", 4, "the same run as the cell {lr=0.1}", NULL, 0);
    expect_error(HEAD "local g = sweep.grid{width = {32, 64}}\n"
                 "return sweep.sweep{name = 'x', cells = sweep.concat(g, g)}\n", 2,
                 "the same run", NULL, 0);
    /* `ref` is a cell's field, not a config key, but base has no ref */
    expect_error(HEAD "return sweep.sweep{name = 'x', base = {ref = 3}, cells = {{}}}\n", 2,
                 "unknown key 'ref'", NULL, 0);
}

/* ---- values, overrides and identities ---- */

static void test_values(void **state)
{
    (void)state;
    char *path = write_sweep(HEAD "return sweep.sweep{name = 'v',\n"
                             "  base = {lr = 0.2, wd = 1e-4, momentum = 0.95, epochs = 1800.0,\n"
                             "          augment = false, dataset = 'cifar100'},\n"
                             "  cells = {sweep.cell{width = 64, ref = 3.5}, {width = 32, wd = 5e-4}},\n"
                             "  repeats = 2}\n");
    Sweep s;
    load_ok(&s, path, NULL, 0);
    assert_int_equal(s.ncells, 2);
    assert_int_equal(sweep_nruns(&s), 4);
    const TrainConfig *c = &s.cells[0].cfg;
    assert_true(c->lr == 0.2);
    assert_true(c->wd == 1e-4);
    assert_true(c->momentum == 0.95);
    assert_int_equal(c->epochs, 1800);
    assert_int_equal(c->augment, 0);
    assert_int_equal(c->dataset, DS_CIFAR100);
    assert_int_equal(c->width, 64);
    assert_int_equal(c->seed, 1);
    assert_string_equal(s.cells[0].settings, "width=64");
    assert_true(s.cells[0].has_ref && s.cells[0].ref == 3.5);
    assert_false(s.cells[1].has_ref);
    assert_string_equal(s.cells[1].settings, "wd=0.0005 width=32");
    assert_true(s.cells[1].cfg.wd == 5e-4);
    assert_int_equal(s.cells[0].line, 5);
    /* a literal cell has no line of its own: the sweep{} call's */
    assert_int_equal(s.cells[1].line, 2);
    /* default label (the settings) and layout (one column) */
    assert_string_equal(s.cells[0].label, "width=64");
    assert_string_equal(s.cells[0].row, "width=64");
    assert_int_equal(s.ncols, 1);
    assert_string_equal(s.cols[0], "test error %");
    assert_string_equal(s.title, "");
    sweep_free(&s);
    free(path);
}

static void test_overrides(void **state)
{
    (void)state;
    Sweep s;
    char *sets[] = {"epochs=30", "lr=0.10", "batch=64", "epochs=31"};
    load_ok(&s, tu_source_path("sweeps/table1.lua"), sets, 4);
    /* canonical: one per key (the last), sorted, as the engine prints values */
    assert_string_equal(s.overrides, "batch=64 epochs=31 lr=0.1");
    assert_string_equal(s.id, "table1[batch=64,epochs=31,lr=0.1]");
    for (int i = 0; i < s.ncells; i++) {
        assert_int_equal(s.cells[i].cfg.epochs, 31);
        assert_int_equal(s.cells[i].cfg.batch, 64);
        assert_true(s.cells[i].cfg.lr == 0.1);
        assert_non_null(strstr(s.cells[i].key, "\"epochs\":31"));
    }
    /* the cells' own settings are still what the file says */
    assert_string_equal(s.cells[0].settings, "backward=even forward=even level=batch width=32");
    sweep_free(&s);

    char *one[] = {"epochs=30"};
    load_ok(&s, tu_source_path("sweeps/table1.lua"), one, 1);
    assert_string_equal(s.id, "table1[epochs=30]");
    assert_string_equal(s.overrides, "epochs=30");
    sweep_free(&s);

    /* a bad override names itself and suggests the key */
    Err e = {{0}};
    char *bad[] = {"epoch=3"};
    assert_int_equal(sweep_load(&s, tu_source_path("sweeps/table1.lua"), bad, 1, &e), -1);
    assert_contains(e.msg, "--set epoch=3");
    assert_contains(e.msg, "did you mean 'epochs'?");
    char *badval[] = {"epochs=many"};
    assert_int_equal(sweep_load(&s, tu_source_path("sweeps/table1.lua"), badval, 1, &e), -1);
    assert_contains(e.msg, "--set epochs=many");
    /* an override that breaks a cell's validation says it came from --set */
    char *deep[] = {"depth=27"};
    expect_error(HEAD "return sweep.sweep{name = 'x', cells = {sweep.cell{width = 32}}}\n", 2,
                 "with --set depth=27", deep, 1);
    /* an override that makes two cells one */
    char *flat[] = {"width=32"};
    expect_error(HEAD "return sweep.sweep{name = 'x', cells = {sweep.cell{width = 32},\n"
                 "  sweep.cell{width = 64}}}\n", 3, "the same run", flat, 1);
}

static void test_identity(void **state)
{
    (void)state;
    /* where a run executes is not what it computes */
    char *a = write_sweep(HEAD "return sweep.sweep{name = 'a', base = {backend = 'cpu', threads = 1,\n"
                          "  seed = 7, out = 'here', data_dir = '/data', steps = 10},\n"
                          "  cells = {{width = 32}}}\n");
    char *b = write_sweep(HEAD "return sweep.sweep{name = 'a', base = {backend = 'ref'},\n"
                          "  cells = {{width = 32}}}\n");
    char *c = write_sweep(HEAD "return sweep.sweep{name = 'a', base = {backend = 'ref'},\n"
                          "  cells = {{width = 32, lr = 0.1}}}\n");
    Sweep sa, sb, sc;
    load_ok(&sa, a, NULL, 0);
    load_ok(&sb, b, NULL, 0);
    load_ok(&sc, c, NULL, 0);
    assert_string_equal(sa.cells[0].key, sb.cells[0].key);
    assert_string_not_equal(sa.cells[0].key, sc.cells[0].key);
    assert_int_equal(sa.cells[0].cfg.seed, 7);
    assert_string_equal(sa.cells[0].cfg.backend, "cpu");
    assert_string_equal(sb.cells[0].cfg.backend, "ref");
    static const char *const placement[] = {"\"seed\"", "\"out\"", "\"threads\"", "\"backend\"",
                                            "\"data_dir\"", "\"init\"", "\"resume\"", "\"steps\""};
    for (int i = 0; i < 8; i++)
        assert_null(strstr(sa.cells[0].key, placement[i]));
    assert_non_null(strstr(sa.cells[0].key, "\"width\":32"));
    assert_string_not_equal(sa.hash, sb.hash);
    sweep_free(&sa);
    sweep_free(&sb);
    sweep_free(&sc);

    /* the same file twice: the same cells, keys, labels and hash */
    Sweep s1, s2;
    load_ok(&s1, tu_source_path("sweeps/table1.lua"), NULL, 0);
    load_ok(&s2, tu_source_path("sweeps/table1.lua"), NULL, 0);
    assert_string_equal(s1.hash, s2.hash);
    assert_string_equal(s1.text, s2.text);
    assert_int_equal(s1.ncells, s2.ncells);
    for (int i = 0; i < s1.ncells; i++) {
        assert_string_equal(s1.cells[i].key, s2.cells[i].key);
        assert_string_equal(s1.cells[i].settings, s2.cells[i].settings);
        assert_string_equal(s1.cells[i].label, s2.cells[i].label);
        assert_int_equal(s1.cells[i].line, s2.cells[i].line);
        assert_memory_equal(&s1.cells[i].cfg, &s2.cells[i].cfg, sizeof(TrainConfig));
    }
    sweep_free(&s1);
    sweep_free(&s2);
    free(a);
    free(b);
    free(c);
}

/* ---- the library's helpers ---- */

static void test_library(void **state)
{
    (void)state;
    char *path = write_sweep(
        HEAD
        "local g = sweep.grid{{{forward = 'even', backward = 'even'}, {forward = 'shake'}},\n"
        "                     width = {16, 32}, depth = {8, 14}}\n"
        "local odd = sweep.filter(g, function(c) return not (c.width == 32 and c.depth == 14) end)\n"
        "return sweep.sweep{name = 'lib', base = {dataset = 'fashion-mnist'},\n"
        "  cells = sweep.concat(odd, {sweep.cell(sweep.mode('shake-keep-image'))}),\n"
        "  repeats = function(c) return c.width == 16 and 2 or 1 end,\n"
        "  reference = function(c) return c.depth == 8 and 1.5 or nil end,\n"
        "  label = function(c) return sweep.describe(c) .. ' @' .. c.dataset end,\n"
        "  layout = {row = sweep.mode_name, col = sweep.net_name}}\n");
    Sweep s;
    load_ok(&s, path, NULL, 0);
    /* positional axis, then depth, then width (sorted), the last fastest;
     * one of the 8 filtered out per positional value, then the concat */
    static const char *const settings[] = {
        "backward=even depth=8 forward=even width=16", "backward=even depth=8 forward=even width=32",
        "backward=even depth=14 forward=even width=16",
        "depth=8 forward=shake width=16", "depth=8 forward=shake width=32",
        "depth=14 forward=shake width=16",
        "backward=keep forward=shake level=image",
    };
    assert_int_equal(s.ncells, 7);
    for (int i = 0; i < 7; i++)
        assert_string_equal(s.cells[i].settings, settings[i]);
    assert_int_equal(s.cells[0].line, 2);       /* the grid's line */
    assert_int_equal(s.cells[6].line, 6);       /* sweep.cell's */
    assert_int_equal(sweep_nruns(&s), 2 + 1 + 2 + 2 + 1 + 2 + 1);
    assert_true(s.cells[0].has_ref && s.cells[0].ref == 1.5);
    assert_false(s.cells[2].has_ref);
    assert_string_equal(s.cells[0].label, "backward=even depth=8 forward=even width=16 @fashion-mnist");
    /* functions see the whole resolved config: the defaults fill in */
    assert_string_equal(s.cells[3].row, "Shake-Shake Image");
    assert_string_equal(s.cells[0].row, "Even-Even n/a");
    assert_string_equal(s.cells[6].col, "26 2x32d");
    assert_string_equal(s.cells[2].col, "14 2x16d");
    assert_int_equal(s.nrows, 3);
    assert_string_equal(s.rows[2], "Shake-Keep Image");
    sweep_free(&s);
    free(path);

    /* sweep.modes as a grid axis: Table 1's nine rows in the paper's order */
    path = write_sweep(HEAD "return sweep.sweep{name = 'modes',\n"
                       "  cells = sweep.grid{sweep.modes, width = 32},\n"
                       "  layout = {row = sweep.mode_name}}\n");
    load_ok(&s, path, NULL, 0);
    assert_int_equal(s.ncells, 9);
    assert_int_equal(s.nrows, 9);
    for (int i = 0; i < 9; i++) {
        assert_string_equal(s.rows[i], ROWS1[i]);
        assert_int_equal(s.cells[i].cfg.width, 32);
        assert_int_equal(s.cells[i].line, 3);
    }
    sweep_free(&s);
    free(path);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_table1),
        cmocka_unit_test(test_other_sweeps),
        cmocka_unit_test(test_sandbox),
        cmocka_unit_test(test_lua_errors),
        cmocka_unit_test(test_shape_errors),
        cmocka_unit_test(test_config_errors),
        cmocka_unit_test(test_values),
        cmocka_unit_test(test_overrides),
        cmocka_unit_test(test_identity),
        cmocka_unit_test(test_library),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
