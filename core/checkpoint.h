/*
 * Checkpoints in the safetensors format: an 8-byte little-endian header size,
 * a JSON header, then raw little-endian float32 tensors. Tensor names follow
 * the module structure of model.h (e.g. "stage1.block0.branch1.conv1.weight",
 * "stem.bn.running_var", "fc.bias"); momentum buffers are "momentum.<name>".
 * The metadata holds the step, epoch, seed and resolved config. Writes go to a
 * temporary file, fsync, then rename, so a crash never leaves a torn file.
 */
#ifndef SHAKE_CHECKPOINT_H
#define SHAKE_CHECKPOINT_H

#include <pthread.h>
#include <stdint.h>

#include "model.h"
#include "util.h"

typedef struct {
    int64_t step;               /* completed iterations */
    int64_t epoch;              /* completed epochs */
    uint64_t seed;
    char *config_json;          /* resolved config; owned, free with meta_free */
} CheckpointMeta;

/* momentum may be NULL (no momentum tensors written); meta may be NULL
 * (step, epoch and seed 0, no config). Errors name the path; on failure an
 * existing file at path is left as it was. */
int checkpoint_save(const char *path, const Model *m, const float *params,
                    const float *state, const float *momentum,
                    const CheckpointMeta *meta, Err *e);

/*
 * A checkpoint written in a background thread, so that training goes on
 * while the file is written and synced (hundreds of ms for 26 2x96d's
 * 210 MB, a tenth of a GPU epoch). checkpoint_save_start copies meta and
 * returns at once; the arrays and the model must stay as they are until
 * checkpoint_save_wait, which joins the thread and returns the write's
 * status (0 when none was started). Where no thread can be started, it
 * writes before it returns. Zero-initialize the writer before first use.
 */
typedef struct {
    pthread_t thread;
    int running;                /* a thread to join */
    int rc;                     /* the write's status, its message in err */
    Err err;
    double seconds;             /* the write's time */
    char *path;
    const Model *m;
    const float *params, *state, *momentum;
    CheckpointMeta meta;
    int has_meta;
} CheckpointWriter;

int checkpoint_save_start(CheckpointWriter *w, const char *path, const Model *m,
                          const float *params, const float *state, const float *momentum,
                          const CheckpointMeta *meta, Err *e);
int checkpoint_save_wait(CheckpointWriter *w, Err *e);

/*
 * Reads every tensor of m into params and state (and momentum, if not NULL:
 * zeros when the file has none). Errors: missing file, truncated or corrupt
 * header, missing tensor, wrong shape or dtype, offsets outside the file.
 * Tensors the model lacks are ignored. meta may be NULL, and then the file's
 * metadata is not looked at, so any safetensors file with the right tensors
 * loads (weights exported from PyTorch, say); with meta, the file must carry
 * this program's format, version, step, epoch and seed. Header errors leave
 * the arrays untouched; *meta is set only on success (free it with
 * checkpoint_meta_free).
 */
int checkpoint_load(const char *path, const Model *m, float *params,
                    float *state, float *momentum, CheckpointMeta *meta, Err *e);

/* Only the metadata, so a caller can rebuild the model from the config. */
int checkpoint_read_meta(const char *path, CheckpointMeta *meta, Err *e);
void checkpoint_meta_free(CheckpointMeta *meta);

#endif
