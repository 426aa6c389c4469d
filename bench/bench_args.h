/*
 * key=value arguments of the bench programs: a value with its default,
 * and every argument checked against the program's keys, since a misspelt
 * key would otherwise measure the default silently.
 */
#ifndef SHAKE_BENCH_ARGS_H
#define SHAKE_BENCH_ARGS_H

#include <stdio.h>
#include <string.h>

static const char *arg(int argc, char **argv, const char *key, const char *dflt)
{
    size_t k = strlen(key);
    for (int i = 1; i < argc; i++)
        if (strncmp(argv[i], key, k) == 0 && argv[i][k] == '=')
            return argv[i] + k + 1;
    return dflt;
}

/* -1 with a message naming prog, the argument and the keys if any
 * argument is not key=value with one of keys (nkeys of them) */
static int check_args(int argc, char **argv, const char *prog, const char *const *keys,
                      size_t nkeys)
{
    for (int i = 1; i < argc; i++) {
        const char *eq = strchr(argv[i], '=');
        size_t k = eq ? (size_t)(eq - argv[i]) : 0;
        int known = 0;
        for (size_t j = 0; eq && j < nkeys; j++)
            known |= strlen(keys[j]) == k && strncmp(argv[i], keys[j], k) == 0;
        if (!known) {
            fprintf(stderr, "%s: unknown argument '%s' (key=value, keys:", prog, argv[i]);
            for (size_t j = 0; j < nkeys; j++)
                fprintf(stderr, " %s", keys[j]);
            fprintf(stderr, ")\n");
            return -1;
        }
    }
    return 0;
}

#endif
