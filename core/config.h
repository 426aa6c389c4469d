/*
 * The configuration of one training run: the keys of `sweep train`. One table
 * (config.c) defines every key, its type, default and allowed values; parsing,
 * validation, printing and the canonical JSON all come from it.
 */
#ifndef SHAKE_CONFIG_H
#define SHAKE_CONFIG_H

#include <stdint.h>

#include "data.h"
#include "model.h"
#include "shake.h"
#include "util.h"

/* auto: bf16 on cuda (the fast default for training), fp32 elsewhere. */
typedef enum { CFG_PRECISION_AUTO = 0, CFG_PRECISION_FP32 = 1, CFG_PRECISION_BF16 = 2 } ConfigPrecision;

typedef struct {
    int dataset;                /* DatasetKind */
    char data_dir[512];         /* "" = the dataset's default */
    int arch;                   /* Arch */
    int depth, width, groups;
    int forward, backward, level; /* ShakeMode, ShakeMode, ShakeLevel */
    int shift;                  /* ShiftMode */
    int epochs, batch;
    double lr, wd, momentum;
    int64_t seed;
    int train_subset;           /* 0 = all training images */
    int64_t subset_seed;
    char backend[16];
    int threads;                /* 0 = all cores */
    int device;                 /* GPU ordinal (backend=cuda) */
    int precision;              /* ConfigPrecision */
    char out[512];              /* run directory: checkpoint and log */
    char init[512];             /* start from these weights (fresh optimizer) */
    char resume[512];           /* continue this checkpoint exactly */
    int augment, shuffle;
    int64_t steps;              /* stop after this many iterations (0 = no limit) */
} TrainConfig;

void config_defaults(TrainConfig *c);

/*
 * Applies one "key=value". Errors name the key and value and, for an unknown
 * key, suggest the closest valid one.
 */
int config_set(TrainConfig *c, const char *assignment, Err *e);
int config_set_kv(TrainConfig *c, const char *key, const char *value, Err *e);

/* Cross-key checks (depth against arch, positive sizes, ...). */
int config_validate(const TrainConfig *c, Err *e);

/* Canonical JSON: every key, sorted, no whitespace. Caller frees. */
char *config_to_json(const TrainConfig *c);
/* Applies every key of a JSON object (unknown keys are an error). */
int config_from_json(TrainConfig *c, const char *json, Err *e);

/* Key-by-key accessors for tools that enumerate the keys (the orchestrator). */
int config_nkeys(void);
const char *config_key_name(int i);
/* Writes key i's value as text into buf. */
void config_key_value(const TrainConfig *c, int i, char *buf, int len);

/* The closest key to `key` by edit distance, or NULL if none is close. */
const char *config_suggest(const char *key);

/* The model this config describes, for a data set of this shape. */
void config_model_spec(const TrainConfig *c, int classes, int in_c, int in_h,
                       int in_w, ModelSpec *spec);

#endif
