/*
 * Data sets kept as bytes, exactly as stored, and turned into normalized,
 * augmented float batches on demand. Loaders: CIFAR-10 and CIFAR-100 binary,
 * MNIST/Fashion-MNIST IDX (gzip or plain), and a synthetic set of CIFAR's
 * shape for benchmarks and tests. All randomness is Philox, keyed by position.
 */
#ifndef SHAKE_DATA_H
#define SHAKE_DATA_H

#include <stdint.h>

#include "util.h"

typedef enum {
    DS_CIFAR10 = 0,
    DS_CIFAR100 = 1,
    DS_FASHION_MNIST = 2,
    DS_MNIST = 3,
    DS_SYNTHETIC = 4
} DatasetKind;

typedef struct {
    DatasetKind kind;
    int n, c, h, w, classes;
    uint8_t *pixels;            /* (n, c, h, w), 0..255 */
    uint8_t *labels;            /* (n) */
    float mean[3], std[3];      /* per channel, on the 0..255 scale */
    int flip;                   /* horizontal flips are label-preserving */
} Dataset;

/* "cifar10", "cifar100", "fashion-mnist", "mnist", "synthetic"; -1 if unknown. */
int dataset_kind(const char *name);
const char *dataset_name(DatasetKind kind);
/* Where `sweep train` looks when data_dir is not given. */
const char *dataset_default_dir(DatasetKind kind);
/* What data_dir must hold, for error messages ("" for synthetic). */
const char *dataset_source(DatasetKind kind);

/*
 * Loads the training and test sets from dir (ignored for DS_SYNTHETIC, whose
 * images and labels are drawn from `seed`). Errors name the file at fault.
 */
int dataset_load(Dataset *train, Dataset *test, DatasetKind kind,
                 const char *dir, uint64_t seed, Err *e);
void dataset_free(Dataset *d);

/*
 * Keeps a class-balanced subset of n images (n / classes per class, the
 * remainder to the lowest classes), chosen by Philox from seed; images keep
 * their original order. Error if a class has too few images.
 */
int dataset_subset(Dataset *d, int n, uint64_t seed, Err *e);

/* Epoch order: a permutation of [0, n) keyed by (seed, epoch), or the
 * identity when shuffle is 0. */
void data_epoch_order(int *order, int n, uint64_t seed, int epoch, int shuffle);

/*
 * x: (count, c, h, w) float, overwritten with images idx[0..count): per-
 * channel normalization, then (augment) a horizontal flip with probability
 * 1/2 where d->flip, then zero padding of 4 and a random crop back to h x w.
 * Randomness keyed by (seed, epoch, image index). labels: (count), overwritten.
 */
void data_batch(float *x, int *labels, const Dataset *d, const int *idx,
                int count, uint64_t seed, int epoch, int augment);

#endif
