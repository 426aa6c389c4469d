/*
 * Small shared helpers: the error buffer every fallible engine function fills,
 * checked allocation, timing. Engine functions return 0 on success and -1 on
 * failure with a message in Err; only main() exits.
 */
#ifndef SHAKE_UTIL_H
#define SHAKE_UTIL_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

typedef struct {
    char msg[1024];
} Err;

/* Sets the message (printf-style) and returns -1, so `return err_set(...)`. */
int err_set(Err *e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Prefixes the existing message with context ("loading X: ..."); returns -1. */
int err_wrap(Err *e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* 64-byte aligned, zeroed; NULL and a message naming `what` on failure. */
void *mem_alloc(size_t bytes, const char *what, Err *e);
void mem_free(void *p);

/* Creates a folder and its missing parents (mkdir -p). */
int mkdir_p(const char *path, Err *e);
/* The folder that holds path ("." for a bare name), into dir; returns
 * path's file name. */
const char *path_parent(const char *path, char *dir, size_t len);
/* fsync of the folder that holds path: after a rename over path, so that
 * the new directory entry survives a crash. 0, or -1 with errno. */
int fsync_parent(const char *path);
/*
 * Replaces the file at path whole, so that a crash leaves the old file or
 * the new one, never part of either: body (0, or -1 with errno set) writes
 * the new content to path.tmp.PID, which is flushed, fsynced, renamed over
 * path, and the folder fsynced. Errors start with "WHAT PATH: " and name
 * the step; the temporary file goes (file_replace_stale finds those a
 * killed process left by that name).
 */
int file_replace(const char *path, const char *what, int (*body)(FILE *f, void *ctx), void *ctx,
                 Err *e);
/*
 * Removes the temporary files (PATH.tmp.PID) that file_replace left for
 * path in processes that died mid-write (kill -9, preemption, a crash):
 * those of processes that no longer exist on this host (the orchestrator
 * never runs one run in two places at once). Returns how many went.
 */
int file_replace_stale(const char *path);

/* This machine's processor, as /proc/cpuinfo names it, and its online
 * cores: "Intel(R) Xeon(R) CPU @ 2.50GHz, 2 cores". */
void host_cpu(char *buf, size_t len);

double time_now(void);          /* monotonic seconds */
/* Sleeps s seconds, or less where a signal arrives (a caller that waits for
 * one wakes at once). */
void sleep_s(double s);
size_t peak_rss_bytes(void);    /* this process's peak resident set */

#endif
