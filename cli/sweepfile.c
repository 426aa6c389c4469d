/*
 * Sweep files: runs a Lua sweep file in a sandbox and resolves what it
 * returns into engine configs (see sweepfile.h and lua/README.md).
 *
 * The C surface is narrow: the shapes, defaults and helpers live in the
 * embedded lua/sweep.lua; this file builds the sandbox, turns values into
 * "key=value" text for config.c, computes identities, and calls the sweep's
 * functions (repeats, reference, label, layout) one cell at a time.
 *
 * Invariants:
 * - One fresh lua_State per load, with a memory limit (its allocator) and an
 *   instruction budget (a count hook) that hold for everything run in it,
 *   the library, the file and every function it returns, even after an
 *   error inside the file was caught by its own pcall.
 * - The sweep file sees only the _ENV built in sandbox_env: no io, os,
 *   debug, package, collectgarbage, string.dump, file loading or binary
 *   chunks; `require` resolves only the embedded modules.
 * - All Lua work, ours included, runs inside one protected call (pmain), so
 *   a memory error anywhere is an error message, never a panic; every call
 *   into the sweep file's code is a nested lua_pcall with a traceback
 *   message handler.
 * - Every error reads "FILE:LINE: message" (just "FILE: message" where no
 *   line is known); on error the Sweep is left zeroed.
 */
#define _GNU_SOURCE             /* asprintf */
#include "sweepfile.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <openssl/evp.h>

/* generated from lua/ by cmake/embed.cmake */
extern const unsigned char embedded_sweep_lua[];
extern const size_t embedded_sweep_lua_len;

static const struct {
    const char *name, *chunkname;
    const unsigned char *text;
    const size_t *len;
} MODULES[] = {
    {"sweep", "=[embedded sweep.lua]", embedded_sweep_lua, &embedded_sweep_lua_len},
};
#define NMODULES ((int)(sizeof MODULES / sizeof MODULES[0]))

/* Generous for any honest sweep file (table1 uses well under 1 MB and 10^5
 * instructions); small enough that a runaway one stops within a second. */
#define MEM_LIMIT ((size_t)64 << 20)
#define INSTR_BUDGET 100000000LL
#define HOOK_EVERY 1000
#define MAX_REPEATS 100000
#define BUDGET_MSG "instruction budget exceeded (infinite loop?)"

/* The keys that say where and how a run executes, not what it computes:
 * left out of a cell's identity so that moving a sweep between machines or
 * folders finds the same cells. */
static const char *const PLACEMENT_KEYS[] = {"seed", "out", "threads", "backend", "device",
                                             "data_dir", "init", "resume", "steps"};

typedef struct {
    char *key, *val;
} KV;

typedef struct {
    KV *v;
    int n, cap;
} KVList;

typedef struct {
    /* the sandbox's limits; the allocator and the hook find this struct
     * through lua_getallocf */
    size_t mem_used;
    int mem_exceeded, mem_line;
    long long instr_left;
    int budget_exceeded;
    lua_State *L;

    const char *path;
    char *chunkname;            /* "@" path */
    char short_src[LUA_IDSIZE]; /* how Lua abbreviates path in its messages */

    Sweep *s;
    Err *e;
    int failed;                 /* e holds the message */

    KVList over;                /* --set, canonical: one per key, sorted */
    char *over_desc;            /* " with --set k=v ..." for messages, "" if none */
    KVList base, cell;          /* the settings being applied (freed by sweep_load) */
    json_t *json;               /* the config being turned into a key (ditto) */
} Ctx;

/* Fixed stack slots of pmain. */
enum { S_CTX = 1, S_HOST, S_MODULES, S_ENV, S_REC };

static Ctx *ctx_of(lua_State *L)
{
    void *ud;
    lua_getallocf(L, &ud);
    return ud;
}

/* ---- small helpers ---- */

static void kv_clear(KVList *l)
{
    for (int i = 0; i < l->n; i++) {
        free(l->v[i].key);
        free(l->v[i].val);
    }
    l->n = 0;
}

static void kv_free(KVList *l)
{
    kv_clear(l);
    free(l->v);
    l->v = NULL;
    l->cap = 0;
}

static int kv_add(KVList *l, const char *key, const char *val)
{
    if (l->n == l->cap) {
        int cap = l->cap ? 2 * l->cap : 16;
        KV *v = realloc(l->v, (size_t)cap * sizeof *v);
        if (!v)
            return -1;
        l->v = v;
        l->cap = cap;
    }
    char *k = strdup(key), *x = strdup(val);
    if (!k || !x) {
        free(k);
        free(x);
        return -1;
    }
    l->v[l->n].key = k;
    l->v[l->n].val = x;
    l->n++;
    return 0;
}

static int kv_cmp(const void *a, const void *b)
{
    return strcmp(((const KV *)a)->key, ((const KV *)b)->key);
}

static void kv_sort(KVList *l)
{
    if (l->n > 1)
        qsort(l->v, (size_t)l->n, sizeof *l->v, kv_cmp);
}

/* "k=v k=v"; caller frees; NULL if out of memory. */
static char *kv_join(const KVList *l)
{
    size_t n = 1;
    for (int i = 0; i < l->n; i++)
        n += strlen(l->v[i].key) + strlen(l->v[i].val) + 2;
    char *out = malloc(n), *p = out;
    if (!out)
        return NULL;
    *p = 0;
    for (int i = 0; i < l->n; i++)
        p += sprintf(p, "%s%s=%s", i ? " " : "", l->v[i].key, l->v[i].val);
    return out;
}

static void location(const Ctx *c, int line, char *buf, size_t len)
{
    if (line > 0)
        snprintf(buf, len, "%s:%d", c->path, line);
    else
        snprintf(buf, len, "%s", c->path);
}

/* A failure found by C inside pmain: the message goes to e, then a Lua
 * error unwinds to sweep_load (which keeps e because failed is set). */
static int fail(Ctx *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int fail(Ctx *c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->e->msg, sizeof c->e->msg, fmt, ap);
    va_end(ap);
    c->failed = 1;
    lua_pushnil(c->L);
    return lua_error(c->L);
}

static char *xstrdup(Ctx *c, const char *s)
{
    char *d = strdup(s);
    if (!d)
        fail(c, "%s: out of memory", c->path);
    return d;
}

/* ---- the sandbox's allocator, budget and error messages ---- */

/* The innermost frame of the sweep file itself, or 0. */
static int file_line(lua_State *L, const Ctx *c)
{
    lua_Debug ar;
    for (int level = 0; lua_getstack(L, level, &ar); level++)
        if (lua_getinfo(L, "Sl", &ar) && strcmp(ar.source, c->chunkname) == 0 &&
            ar.currentline > 0)
            return ar.currentline;
    return 0;
}

static void *sandbox_alloc(void *ud, void *ptr, size_t osize, size_t nsize)
{
    Ctx *c = ud;
    size_t old = ptr ? osize : 0;   /* without ptr, osize is a type tag */
    if (nsize == 0) {
        free(ptr);
        c->mem_used -= old;
        return NULL;
    }
    if (nsize > old && c->mem_used - old + nsize > MEM_LIMIT) {
        if (!c->mem_exceeded && c->L)
            /* Lua calls no message handler for memory errors, so the line is
             * taken here; reading the call stack allocates nothing. */
            c->mem_line = file_line(c->L, c);
        c->mem_exceeded = 1;
        return NULL;
    }
    void *p = realloc(ptr, nsize);
    if (!p)
        return nsize <= old ? ptr : NULL;
    c->mem_used = c->mem_used - old + nsize;
    return p;
}

static void sandbox_hook(lua_State *L, lua_Debug *ar)
{
    (void)ar;
    Ctx *c = ctx_of(L);
    c->instr_left -= HOOK_EVERY;
    if (c->instr_left >= 0)
        return;
    if (!c->budget_exceeded) {
        /* From now on every instruction fails, so a pcall in the file cannot
         * swallow the error and carry on. */
        c->budget_exceeded = 1;
        lua_sethook(L, sandbox_hook, LUA_MASKCOUNT, 1);
    }
    lua_pushliteral(L, BUDGET_MSG);  /* the message handler adds file:line */
    lua_error(L);
}

static int starts_with_loc(const char *msg, const char *src)
{
    size_t n = strlen(src);
    return strncmp(msg, src, n) == 0 && msg[n] == ':';
}

/* lua.c's message handler, plus the sweep file's line for messages that do
 * not carry one (error("x", 0), assert(false, "x"), the budget). */
static int sandbox_msgh(lua_State *L)
{
    Ctx *c = ctx_of(L);
    const char *msg = lua_tostring(L, 1);
    if (!msg) {
        if (luaL_callmeta(L, 1, "__tostring") && lua_type(L, -1) == LUA_TSTRING)
            msg = lua_tostring(L, -1);
        else
            msg = lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
    }
    if (!starts_with_loc(msg, c->short_src)) {
        int line = file_line(L, c);
        if (line > 0)
            msg = lua_pushfstring(L, "%s:%d: %s", c->short_src, line, msg);
    }
    luaL_traceback(L, L, msg, 1);
    return 1;
}

/* Appends to a bounded buffer. */
typedef struct {
    char *p;
    size_t len, cap;
} Buf;

static void buf_add(Buf *b, const char *s, size_t n)
{
    if (b->len + 1 >= b->cap)
        return;
    if (n > b->cap - 1 - b->len)
        n = b->cap - 1 - b->len;
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = 0;
}

static void buf_adds(Buf *b, const char *s)
{
    buf_add(b, s, strlen(s));
}

/* Copies s into b with every short_src spelled as the full path. */
static void buf_add_paths(Buf *b, const Ctx *c, const char *s, size_t n)
{
    size_t k = strlen(c->short_src);
    const char *end = s + n;
    while (s < end) {
        const char *hit = strcmp(c->short_src, c->path) != 0 ? strstr(s, c->short_src) : NULL;
        if (!hit || hit >= end) {
            buf_add(b, s, (size_t)(end - s));
            return;
        }
        buf_add(b, s, (size_t)(hit - s));
        buf_adds(b, c->path);
        s = hit + k;
    }
}

/*
 * Turns an error raised by Lua (message and traceback from sandbox_msgh)
 * into e: "FILE:LINE: message", then the sweep file's own frames when there
 * are several (an error inside a helper the file called).
 */
static void set_lua_error(Ctx *c, int status, const char *raw)
{
    char out[sizeof c->e->msg];
    Buf b = {out, 0, sizeof out};
    out[0] = 0;
    char loc[600];
    if (status == LUA_ERRMEM || c->mem_exceeded) {
        location(c, c->mem_line, loc, sizeof loc);
        snprintf(c->e->msg, sizeof c->e->msg,
                 "%s: not enough memory (a sweep file may use at most %zu MB)", loc,
                 MEM_LIMIT >> 20);
        return;
    }
    if (!raw)
        raw = "(error object is not a string)";
    if (c->budget_exceeded && !strstr(raw, BUDGET_MSG))
        raw = BUDGET_MSG;       /* e.g. the budget struck again in an error handler */
    const char *tb = strstr(raw, "\nstack traceback:");
    size_t head = tb ? (size_t)(tb - raw) : strlen(raw);
    if (!starts_with_loc(raw, c->short_src) && !starts_with_loc(raw, c->path)) {
        buf_adds(&b, c->path);
        buf_adds(&b, ": ");
    }
    buf_add_paths(&b, c, raw, head);
    /* the sweep file's frames: worth showing only when there is more than
     * the one the message already names */
    int frames = 0;
    for (const char *p = tb; p && (p = strstr(p, "\n\t")); p += 2)
        frames += starts_with_loc(p + 2, c->short_src);
    if (frames >= 2) {
        buf_adds(&b, "\nin the sweep file:");
        for (const char *p = tb; (p = strstr(p, "\n\t")); p += 2) {
            if (!starts_with_loc(p + 2, c->short_src))
                continue;
            const char *eol = strchr(p + 1, '\n');
            buf_adds(&b, "\n  ");
            buf_add_paths(&b, c, p + 2, eol ? (size_t)(eol - p - 2) : strlen(p + 2));
        }
    }
    snprintf(c->e->msg, sizeof c->e->msg, "%s", out);
}

/* Calls the function below nargs arguments with the traceback handler; an
 * error (or a budget or memory error the file caught) ends the load. */
static void sandbox_call(Ctx *c, int nargs, int nresults)
{
    lua_State *L = c->L;
    int base = lua_gettop(L) - nargs;
    lua_pushcfunction(L, sandbox_msgh);
    lua_insert(L, base);
    int st = lua_pcall(L, nargs, nresults, base);
    lua_remove(L, base);
    if (st != LUA_OK || c->budget_exceeded || c->mem_exceeded) {
        set_lua_error(c, st, st != LUA_OK ? lua_tostring(L, -1) : NULL);
        c->failed = 1;
        lua_pushnil(L);
        lua_error(L);
    }
}

/* ---- what the sweep file sees ---- */

static int sandbox_print(lua_State *L)
{
    /* stderr: stdout belongs to the command's own output */
    int n = lua_gettop(L);
    for (int i = 1; i <= n; i++) {
        size_t len;
        const char *s = luaL_tolstring(L, i, &len);
        if (i > 1)
            fputc('\t', stderr);
        fwrite(s, 1, len, stderr);
        lua_pop(L, 1);
    }
    fputc('\n', stderr);
    return 0;
}

static int sandbox_require(lua_State *L)
{
    const char *name = luaL_checkstring(L, 1);
    lua_getfield(L, lua_upvalueindex(1), name);
    if (lua_isnil(L, -1))
        return luaL_error(L, "module '%s' is not available in a sweep file (only \"sweep\" is)",
                          name);
    return 1;
}

/* load(text [, chunkname]): text chunks only, run in the sweep file's _ENV. */
static int sandbox_load(lua_State *L)
{
    size_t len;
    const char *text = luaL_checklstring(L, 1, &len);
    const char *name = luaL_optstring(L, 2, text);
    if (luaL_loadbufferx(L, text, len, name, "t") != LUA_OK) {
        luaL_pushfail(L);
        lua_insert(L, -2);
        return 2;
    }
    lua_pushvalue(L, lua_upvalueindex(1));
    if (!lua_setupvalue(L, -2, 1))
        lua_pop(L, 1);
    return 1;
}

static const char *const ENV_BASE[] = {
    "assert", "error", "ipairs", "next", "pairs", "pcall", "xpcall", "select", "tonumber",
    "tostring", "type", "rawequal", "rawget", "rawset", "rawlen", "setmetatable",
    "getmetatable", "_VERSION",
};
static const char *const ENV_LIBS[] = {"string", "table", "math", "utf8"};

/* Pushes the sweep file's _ENV: the whitelist above (libraries as copies,
 * so a file cannot change what the library's own calls do), print, require
 * over the embedded modules (at S_MODULES) and a text-only load. */
static void sandbox_env(lua_State *L)
{
    lua_createtable(L, 0, 32);
    int env = lua_gettop(L);
    for (size_t i = 0; i < sizeof ENV_BASE / sizeof ENV_BASE[0]; i++) {
        lua_getglobal(L, ENV_BASE[i]);
        lua_setfield(L, env, ENV_BASE[i]);
    }
    for (size_t i = 0; i < sizeof ENV_LIBS / sizeof ENV_LIBS[0]; i++) {
        lua_newtable(L);
        lua_getglobal(L, ENV_LIBS[i]);
        lua_pushnil(L);
        while (lua_next(L, -2)) {
            lua_pushvalue(L, -2);
            lua_insert(L, -2);
            lua_rawset(L, -5);
        }
        lua_pop(L, 1);
        lua_setfield(L, env, ENV_LIBS[i]);
    }
    lua_pushcfunction(L, sandbox_print);
    lua_setfield(L, env, "print");
    lua_pushvalue(L, S_MODULES);
    lua_pushcclosure(L, sandbox_require, 1);
    lua_setfield(L, env, "require");
    lua_pushvalue(L, env);
    lua_pushcclosure(L, sandbox_load, 1);
    lua_setfield(L, env, "load");
    lua_pushvalue(L, env);
    lua_setfield(L, env, "_G");
}

/* Opens the standard libraries the library needs, hardens what the sweep
 * file could reach through them, and runs the embedded modules. */
static void sandbox_open(Ctx *c)
{
    lua_State *L = c->L;
    static const luaL_Reg libs[] = {
        {LUA_GNAME, luaopen_base},         {LUA_STRLIBNAME, luaopen_string},
        {LUA_TABLIBNAME, luaopen_table},   {LUA_MATHLIBNAME, luaopen_math},
        {LUA_UTF8LIBNAME, luaopen_utf8},   {LUA_DBLIBNAME, luaopen_debug},
    };
    for (size_t i = 0; i < sizeof libs / sizeof libs[0]; i++) {
        luaL_requiref(L, libs[i].name, libs[i].func, 1);
        lua_pop(L, 1);
    }
    /* string methods reach the real string table: no dump there, and the
     * metatable itself out of getmetatable's reach */
    lua_getglobal(L, "string");
    lua_pushnil(L);
    lua_setfield(L, -2, "dump");
    lua_pop(L, 1);
    lua_pushliteral(L, "");
    lua_getmetatable(L, -1);
    lua_pushboolean(L, 0);
    lua_setfield(L, -2, "__metatable");
    lua_pop(L, 2);
    /* the same file gives the same cells, even if it draws random numbers */
    lua_getglobal(L, "math");
    lua_getfield(L, -1, "randomseed");
    lua_pushinteger(L, 0);
    lua_call(L, 1, 0);
    lua_pop(L, 1);

    for (int i = 0; i < NMODULES; i++) {
        if (luaL_loadbufferx(L, (const char *)MODULES[i].text, *MODULES[i].len,
                             MODULES[i].chunkname, "t") != LUA_OK)
            fail(c, "%s: the embedded module %s does not load: %s", c->path, MODULES[i].name,
                 lua_tostring(L, -1));
        lua_pushvalue(L, S_HOST);
        sandbox_call(c, 1, 1);
        lua_setfield(L, S_MODULES, MODULES[i].name);
    }
    /* the modules have taken what they need */
    static const char *const drop[] = {"debug", "dofile", "loadfile", "load", "collectgarbage"};
    for (size_t i = 0; i < sizeof drop / sizeof drop[0]; i++) {
        lua_pushnil(L);
        lua_setglobal(L, drop[i]);
    }
}

/* ---- values and settings ---- */

/* Raw field access: the tables come from the sweep file and may carry
 * metatables; reading must not run its code outside sandbox_call. */
static int rawfield(lua_State *L, int idx, const char *name)
{
    idx = lua_absindex(L, idx);
    lua_pushstring(L, name);
    return lua_rawget(L, idx);
}

/* The text config_set_kv reads for the value at idx; 0 if it is not a
 * string, number or boolean. */
static int value_text(lua_State *L, int idx, char *buf, size_t len)
{
    switch (lua_type(L, idx)) {
    case LUA_TSTRING:
        snprintf(buf, len, "%s", lua_tostring(L, idx));
        return 1;
    case LUA_TBOOLEAN:
        snprintf(buf, len, "%s", lua_toboolean(L, idx) ? "true" : "false");
        return 1;
    case LUA_TNUMBER:
        if (lua_isinteger(L, idx)) {
            snprintf(buf, len, "%lld", (long long)lua_tointeger(L, idx));
            return 1;
        }
        double v = lua_tonumber(L, idx);
        if (v == floor(v) && fabs(v) < 1e15) {
            snprintf(buf, len, "%.0f", v);      /* 1800.0 -> "1800" */
            return 1;
        }
        /* the shortest text that reads back to v: 0.2 -> "0.2", 1e-4 -> "0.0001" */
        for (int prec = 1; prec <= 17; prec++) {
            snprintf(buf, len, "%.*g", prec, v);
            if (strtod(buf, NULL) == v)
                break;
        }
        return 1;
    default:
        return 0;
    }
}

/*
 * Reads the settings table at idx into l, sorted by key. what/loc name it
 * in errors; skip_ref leaves out a cell's `ref`, which is not a config key.
 */
static void read_settings(Ctx *c, int idx, KVList *l, const char *what, const char *loc,
                          int skip_ref)
{
    lua_State *L = c->L;
    idx = lua_absindex(L, idx);
    kv_clear(l);
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        char val[64];
        if (lua_type(L, -2) != LUA_TSTRING) {
            char key[64];
            if (!value_text(L, -2, key, sizeof key))
                snprintf(key, sizeof key, "(a %s)", luaL_typename(L, -2));
            fail(c, "%s: %s: key %s is not a config key name (settings are key = value)", loc,
                 what, key);
        }
        const char *key = lua_tostring(L, -2);
        if (!(skip_ref && strcmp(key, "ref") == 0)) {
            const char *text = val;
            size_t len;
            if (lua_type(L, -1) == LUA_TSTRING) {
                /* as it is, however long: config.c says what fits */
                text = lua_tolstring(L, -1, &len);
                if (strlen(text) != len)
                    fail(c, "%s: %s: the value of %s holds a NUL byte", loc, what, key);
            } else if (!value_text(L, -1, val, sizeof val)) {
                fail(c, "%s: %s: %s is a %s; a value must be a string, number or boolean", loc,
                     what, key, luaL_typename(L, -1));
            }
            if (kv_add(l, key, text))
                fail(c, "%s: out of memory", c->path);
        }
        lua_pop(L, 1);
    }
    kv_sort(l);
}

/* ---- overrides ---- */

static int parse_overrides(Ctx *c, char **sets, int nsets)
{
    TrainConfig tmp;
    Err e2 = {{0}};
    config_defaults(&tmp);
    char *seen = calloc((size_t)config_nkeys(), 1);
    if (!seen)
        return err_set(c->e, "out of memory");
    for (int i = 0; i < nsets; i++) {
        if (config_set(&tmp, sets[i], &e2)) {
            free(seen);
            return err_set(c->e, "--set %s: %s", sets[i], e2.msg);
        }
        size_t n = strcspn(sets[i], "=");
        for (int k = 0; k < config_nkeys(); k++)
            if (strlen(config_key_name(k)) == n && strncmp(config_key_name(k), sets[i], n) == 0)
                seen[k] = 1;
    }
    /* one value per key, the last given, written as the engine prints it
     * ("lr=0.10" and "lr=0.1" are the same sweep) */
    int rc = 0;
    for (int k = 0; k < config_nkeys() && !rc; k++) {
        if (!seen[k])
            continue;
        char val[600];
        config_key_value(&tmp, k, val, sizeof val);
        rc = kv_add(&c->over, config_key_name(k), val);
    }
    free(seen);
    kv_sort(&c->over);
    char *canon = rc ? NULL : kv_join(&c->over);
    if (!canon || asprintf(&c->over_desc, "%s%s", c->over.n ? " with --set " : "", canon) < 0) {
        free(canon);
        c->over_desc = NULL;
        return err_set(c->e, "out of memory");
    }
    c->s->overrides = canon;
    return 0;
}

/* ---- cells ---- */

/* The cell's identity: its config's canonical JSON without the placement
 * keys. Leaves the whole config parsed in c->json. */
static char *cell_key(Ctx *c, const TrainConfig *cfg)
{
    char *text = config_to_json(cfg);
    if (!text)
        fail(c, "%s: out of memory", c->path);
    json_error_t jerr;
    c->json = json_loads(text, 0, &jerr);
    free(text);
    if (!c->json)
        fail(c, "%s: config JSON does not parse: %s", c->path, jerr.text);
    json_t *o = json_deep_copy(c->json);
    if (!o)
        fail(c, "%s: out of memory", c->path);
    for (size_t i = 0; i < sizeof PLACEMENT_KEYS / sizeof PLACEMENT_KEYS[0]; i++)
        json_object_del(o, PLACEMENT_KEYS[i]);
    char *key = json_dumps(o, JSON_COMPACT | JSON_SORT_KEYS | JSON_REAL_PRECISION(17));
    json_decref(o);
    if (!key)
        fail(c, "%s: out of memory", c->path);
    return key;
}

/* Pushes the resolved config (c->json) as a Lua table of typed values. */
static void push_config(Ctx *c)
{
    lua_State *L = c->L;
    lua_createtable(L, 0, (int)json_object_size(c->json));
    const char *k;
    json_t *v;
    json_object_foreach(c->json, k, v) {
        switch (json_typeof(v)) {
        case JSON_INTEGER: lua_pushinteger(L, (lua_Integer)json_integer_value(v)); break;
        case JSON_REAL: lua_pushnumber(L, json_real_value(v)); break;
        case JSON_TRUE: lua_pushboolean(L, 1); break;
        case JSON_FALSE: lua_pushboolean(L, 0); break;
        case JSON_STRING: lua_pushstring(L, json_string_value(v)); break;
        default: lua_pushnil(L); break;
        }
        lua_setfield(L, -2, k);
    }
}

/*
 * Pushes what the sweep's functions receive for a cell: its own keys with
 * the values that will run (overrides included) and its ref, reading every
 * other key through to the resolved config. pairs() gives the own keys.
 */
static void push_view(Ctx *c, int cell)
{
    lua_State *L = c->L;
    push_config(c);
    int cfg = lua_gettop(L);
    lua_createtable(L, 0, c->cell.n + 1);
    for (int i = 0; i < c->cell.n; i++) {
        lua_getfield(L, cfg, c->cell.v[i].key);
        lua_setfield(L, -2, c->cell.v[i].key);
    }
    if (rawfield(L, cell, "ref") != LUA_TNIL)
        lua_setfield(L, -2, "ref");
    else
        lua_pop(L, 1);
    lua_createtable(L, 0, 1);
    lua_pushvalue(L, cfg);
    lua_setfield(L, -2, "__index");
    lua_setmetatable(L, -2);
    lua_remove(L, cfg);
}

/* Calls the sweep's function `name` on the view at top; leaves its result. */
static void call_fn(Ctx *c, const char *name)
{
    lua_State *L = c->L;
    if (rawfield(L, S_REC, name) != LUA_TFUNCTION) {
        lua_pop(L, 1);
        char loc[600];
        location(c, 0, loc, sizeof loc);
        fail(c, "%s: sweep{}: %s must be a function(cell)", loc, name);
    }
    lua_pushvalue(L, -2);
    sandbox_call(c, 1, 1);
}

static int label_index(Ctx *c, char ***list, int *n, const char *label)
{
    for (int i = 0; i < *n; i++)
        if (strcmp((*list)[i], label) == 0)
            return i;
    char **grown = realloc(*list, (size_t)(*n + 1) * sizeof **list);
    if (!grown)
        fail(c, "%s: out of memory", c->path);
    *list = grown;
    grown[*n] = xstrdup(c, label);
    return (*n)++;
}

/* A string result of a sweep function, copied; what names it in errors. */
static char *string_result(Ctx *c, const char *what, const char *where)
{
    lua_State *L = c->L;
    if (lua_type(L, -1) != LUA_TSTRING)
        fail(c, "%s: %s returned a %s; it must return a string", where, what,
             luaL_typename(L, -1));
    char *s = xstrdup(c, lua_tostring(L, -1));
    lua_pop(L, 1);
    return s;
}

static void resolve_cell(Ctx *c, const TrainConfig *base, int i)
{
    lua_State *L = c->L;
    Sweep *s = c->s;
    SweepCell *cell = &s->cells[i];
    rawfield(L, S_REC, "cells");
    lua_rawgeti(L, -1, i + 1);
    lua_remove(L, -2);
    int entry = lua_gettop(L);
    if (rawfield(L, entry, "line") == LUA_TNUMBER)
        cell->line = (int)lua_tointeger(L, -1);
    lua_pop(L, 1);
    if (rawfield(L, entry, "cell") != LUA_TTABLE)
        fail(c, "%s: cells[%d] is not a table", c->path, i + 1);
    int tbl = lua_gettop(L);

    /* "FILE:LINE: cell {k=v ...}" opens every message about this cell; a
     * cell without a line (a plain table) says which element it is */
    char loc[600], where[1500];
    location(c, cell->line, loc, sizeof loc);
    char idx[32] = "";
    if (cell->line <= 0)
        snprintf(idx, sizeof idx, "cells[%d] ", i + 1);
    read_settings(c, tbl, &c->cell, idx[0] ? idx : "cell", loc, 1);
    cell->settings = kv_join(&c->cell);
    if (!cell->settings)
        fail(c, "%s: out of memory", c->path);
    snprintf(where, sizeof where, "%s: %s{%s}", loc, idx[0] ? idx : "cell ", cell->settings);

    cell->cfg = *base;
    Err e2 = {{0}};
    for (int k = 0; k < c->cell.n; k++)
        if (config_set_kv(&cell->cfg, c->cell.v[k].key, c->cell.v[k].val, &e2))
            fail(c, "%s: %s", where, e2.msg);
    for (int k = 0; k < c->over.n; k++)
        if (config_set_kv(&cell->cfg, c->over.v[k].key, c->over.v[k].val, &e2))
            fail(c, "%s%s: %s", where, c->over_desc, e2.msg);
    if (config_validate(&cell->cfg, &e2))
        fail(c, "%s%s: %s", where, c->over_desc, e2.msg);

    cell->key = cell_key(c, &cell->cfg);
    for (int j = 0; j < i; j++)
        if (strcmp(s->cells[j].key, cell->key) == 0) {
            char other[600];
            location(c, s->cells[j].line, other, sizeof other);
            fail(c, "%s%s: the same run as the cell {%s} at %s (cells[%d]); each cell must "
                 "differ in what it computes", where, c->over_desc, s->cells[j].settings, other,
                 j + 1);
        }

    push_view(c, tbl);
    json_decref(c->json);
    c->json = NULL;

    call_fn(c, "repeats");
    int isnum;
    lua_Integer r = lua_tointegerx(L, -1, &isnum);
    if (!isnum || r < 1 || r > MAX_REPEATS) {
        char got[64];
        if (!value_text(L, -1, got, sizeof got))
            snprintf(got, sizeof got, "a %s", luaL_typename(L, -1));
        fail(c, "%s: repeats is %s; it must be an integer from 1 to %d", where, got,
             MAX_REPEATS);
    }
    cell->repeats = (int)r;
    lua_pop(L, 1);

    call_fn(c, "reference");
    if (lua_type(L, -1) == LUA_TNUMBER) {
        cell->has_ref = 1;
        cell->ref = lua_tonumber(L, -1);
        if (!isfinite(cell->ref))
            fail(c, "%s: the reference is %g; it must be a finite number (test error %%)",
                 where, cell->ref);
    } else if (!lua_isnil(L, -1)) {
        fail(c, "%s: the reference is a %s; it must be a number (test error %%) or nil", where,
             luaL_typename(L, -1));
    }
    lua_pop(L, 1);

    call_fn(c, "label");
    cell->label = string_result(c, "label(cell)", where);
    call_fn(c, "row");
    cell->row = string_result(c, "layout.row(cell)", where);
    call_fn(c, "col");
    cell->col = string_result(c, "layout.col(cell)", where);

    for (int j = 0; j < i; j++) {
        const SweepCell *o = &s->cells[j];
        char other[600];
        location(c, o->line, other, sizeof other);
        if (strcmp(o->label, cell->label) == 0)
            fail(c, "%s: its label '%s' is also the label of the cell {%s} at %s; labels name "
                 "cells in reports and commands, so they must differ", where, cell->label,
                 o->settings, other);
    }
    cell->row_order = label_index(c, &s->rows, &s->nrows, cell->row);
    cell->col_order = label_index(c, &s->cols, &s->ncols, cell->col);
    lua_settop(L, S_REC);
}

static int valid_name(const char *s)
{
    if (!*s)
        return 0;
    for (; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') ||
              *s == '_' || *s == '.' || *s == '-'))
            return 0;
    return 1;
}

/* Everything Lua, inside one protected call. */
static int pmain(lua_State *L)
{
    Ctx *c = lua_touserdata(L, S_CTX);
    Sweep *s = c->s;
    lua_settop(L, S_CTX);
    lua_newtable(L);                    /* S_HOST */
    lua_newtable(L);                    /* S_MODULES */
    sandbox_open(c);
    sandbox_env(L);                     /* S_ENV */

    int st = luaL_loadbufferx(L, s->text, strlen(s->text), c->chunkname, "t");
    if (st != LUA_OK) {
        set_lua_error(c, st, lua_tostring(L, -1));
        c->failed = 1;
        return lua_error(L);
    }
    lua_pushvalue(L, S_ENV);
    lua_setupvalue(L, -2, 1);

    sandbox_call(c, 0, 1);
    if (!lua_istable(L, -1))
        fail(c, "%s: the sweep file returned %s; it must return a sweep "
             "(return sweep.sweep{name = ..., cells = ...})", c->path,
             lua_isnil(L, -1) ? "nothing" : luaL_typename(L, -1));
    lua_getfield(L, S_HOST, "prepare");
    lua_insert(L, -2);
    sandbox_call(c, 1, 1);              /* S_REC: the normalized sweep */
    if (lua_gettop(L) != S_REC || !lua_istable(L, S_REC))
        fail(c, "%s: internal error: the sweep library returned no record", c->path);

    int line = 0;
    if (rawfield(L, S_REC, "line") == LUA_TNUMBER)
        line = (int)lua_tointeger(L, -1);
    lua_pop(L, 1);
    char loc[600];
    location(c, line, loc, sizeof loc);

    if (rawfield(L, S_REC, "name") != LUA_TSTRING || !valid_name(lua_tostring(L, -1)))
        fail(c, "%s: sweep{}: name must be letters, digits, '_', '.' and '-'", loc);
    s->name = xstrdup(c, lua_tostring(L, -1));
    lua_pop(L, 1);
    s->title = xstrdup(c, rawfield(L, S_REC, "title") == LUA_TSTRING ? lua_tostring(L, -1) : "");
    lua_pop(L, 1);
    if (c->over.n) {
        char *id = NULL;
        if (asprintf(&id, "%s[%s]", s->name, s->overrides) < 0)
            fail(c, "%s: out of memory", c->path);
        for (char *p = id; *p; p++)
            if (*p == ' ')
                *p = ',';
        s->id = id;
    } else {
        s->id = xstrdup(c, s->name);
    }

    TrainConfig base;
    config_defaults(&base);
    if (rawfield(L, S_REC, "base") != LUA_TTABLE)
        fail(c, "%s: sweep{}: base must be a table of key = value settings", loc);
    read_settings(c, -1, &c->base, "base", loc, 0);
    lua_pop(L, 1);
    Err e2 = {{0}};
    for (int k = 0; k < c->base.n; k++)
        if (config_set_kv(&base, c->base.v[k].key, c->base.v[k].val, &e2))
            fail(c, "%s: base: %s", loc, e2.msg);

    if (rawfield(L, S_REC, "cells") != LUA_TTABLE)
        fail(c, "%s: sweep{}: cells must be a list", loc);
    size_t n = (size_t)lua_rawlen(L, -1);
    lua_pop(L, 1);
    if (n < 1)
        fail(c, "%s: sweep{}: no cells", loc);
    if (n > 1000000)
        fail(c, "%s: sweep{}: %zu cells; at most 1000000", loc, n);
    s->cells = calloc(n, sizeof *s->cells);
    if (!s->cells)
        fail(c, "%s: out of memory", c->path);
    for (int i = 0; i < (int)n; i++) {
        s->ncells = i + 1;              /* sweep_free frees what is filled */
        resolve_cell(c, &base, i);
    }
    return 0;
}

/* ---- the file ---- */

static char *read_text(const char *path, size_t *len, Err *e)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        err_set(e, "%s: cannot open: %s", path, strerror(errno));
        return NULL;
    }
    char *buf = NULL;
    size_t n = 0, cap = 0;
    for (;;) {
        if (cap - n < 4096) {
            cap = cap ? 2 * cap : 16384;
            char *grown = realloc(buf, cap + 1);
            if (!grown) {
                free(buf);
                fclose(f);
                err_set(e, "%s: out of memory reading it", path);
                return NULL;
            }
            buf = grown;
        }
        size_t got = fread(buf + n, 1, cap - n, f);
        n += got;
        if (got == 0)
            break;
    }
    int bad = ferror(f);
    fclose(f);
    if (bad) {
        free(buf);
        err_set(e, "%s: cannot read: %s", path, strerror(errno));
        return NULL;
    }
    buf[n] = 0;
    if (strlen(buf) != n) {
        free(buf);
        err_set(e, "%s: not a text file (it holds a NUL byte)", path);
        return NULL;
    }
    *len = n;
    return buf;
}

static int sha256_hex(const char *data, size_t len, char out[65], Err *e)
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    if (!EVP_Digest(data, len, md, &mdlen, EVP_sha256(), NULL) || mdlen != 32)
        return err_set(e, "sha256 failed");
    for (unsigned i = 0; i < mdlen; i++)
        snprintf(out + 2 * i, 3, "%02x", md[i]);
    return 0;
}

int sweep_load(Sweep *s, const char *path, char **overrides, int noverrides, Err *e)
{
    memset(s, 0, sizeof *s);
    Ctx c;
    memset(&c, 0, sizeof c);
    c.s = s;
    c.e = e;
    c.path = path;
    c.instr_left = INSTR_BUDGET;
    int rc = -1;
    lua_State *L = NULL;
    size_t len;

    if (parse_overrides(&c, overrides, noverrides))
        goto done;
    if (!(s->text = read_text(path, &len, e)) || sha256_hex(s->text, len, s->hash, e))
        goto done;
    if (!(s->file = strdup(path)) || asprintf(&c.chunkname, "@%s", path) < 0) {
        c.chunkname = NULL;
        err_set(e, "out of memory");
        goto done;
    }
    /* Lua's luaO_chunkid: a long path keeps its tail behind "..." */
    size_t plen = strlen(path);
    if (plen + 1 <= LUA_IDSIZE)
        snprintf(c.short_src, sizeof c.short_src, "%s", path);
    else
        snprintf(c.short_src, sizeof c.short_src, "...%s", path + plen - (LUA_IDSIZE - 4));
    L = lua_newstate(sandbox_alloc, &c);
    if (!L) {
        err_set(e, "%s: cannot create a Lua state (out of memory)", path);
        goto done;
    }
    c.L = L;
    lua_sethook(L, sandbox_hook, LUA_MASKCOUNT, HOOK_EVERY);
    lua_pushcfunction(L, pmain);
    lua_pushlightuserdata(L, &c);
    int st = lua_pcall(L, 1, 0, 0);
    if (st != LUA_OK && !c.failed)      /* raised by Lua itself, e.g. out of memory */
        set_lua_error(&c, st, lua_tostring(L, -1));
    rc = st == LUA_OK ? 0 : -1;
done:
    if (L)
        lua_close(L);
    json_decref(c.json);
    kv_free(&c.over);
    kv_free(&c.base);
    kv_free(&c.cell);
    free(c.over_desc);
    free(c.chunkname);
    if (rc)
        sweep_free(s);
    return rc;
}

void sweep_free(Sweep *s)
{
    for (int i = 0; i < s->ncells; i++) {
        SweepCell *c = &s->cells[i];
        free(c->settings);
        free(c->key);
        free(c->label);
        free(c->row);
        free(c->col);
    }
    for (int i = 0; i < s->nrows; i++)
        free(s->rows[i]);
    for (int i = 0; i < s->ncols; i++)
        free(s->cols[i]);
    free(s->cells);
    free(s->rows);
    free(s->cols);
    free(s->name);
    free(s->id);
    free(s->title);
    free(s->file);
    free(s->text);
    free(s->overrides);
    memset(s, 0, sizeof *s);
}

int sweep_nruns(const Sweep *s)
{
    int n = 0;
    for (int i = 0; i < s->ncells; i++)
        n += s->cells[i].repeats;
    return n;
}
