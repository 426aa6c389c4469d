/* Error buffer, checked allocation, clocks and file helpers shared by the engine. */
#include "util.h"

#include <dirent.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

int err_set(Err *e, const char *fmt, ...)
{
    if (!e)
        return -1;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->msg, sizeof e->msg, fmt, ap);
    va_end(ap);
    return -1;
}

int err_wrap(Err *e, const char *fmt, ...)
{
    if (!e)
        return -1;
    char old[sizeof e->msg];
    memcpy(old, e->msg, sizeof old);
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(e->msg, sizeof e->msg, fmt, ap);
    va_end(ap);
    if (n >= 0 && (size_t)n + 2 < sizeof e->msg) {
        size_t used = (size_t)n;
        size_t room = sizeof e->msg - used;
        int w = snprintf(e->msg + used, room, ": %.*s", (int)(room - 3), old);
        (void)w;
    }
    return -1;
}

void *mem_alloc(size_t bytes, const char *what, Err *e)
{
    void *p = NULL;
    size_t rounded = (bytes + 63) / 64 * 64;
    if (rounded == 0)
        rounded = 64;
    if (posix_memalign(&p, 64, rounded) != 0) {
        err_set(e, "out of memory allocating %zu bytes for %s", bytes, what);
        return NULL;
    }
    memset(p, 0, rounded);
    return p;
}

void mem_free(void *p)
{
    free(p);
}

int mkdir_p(const char *path, Err *e)
{
    char buf[PATH_MAX];
    if (snprintf(buf, sizeof buf, "%s", path) >= (int)sizeof buf)
        return err_set(e, "folder name too long: %.200s...", path);
    for (char *p = buf + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = 0;
        if (mkdir(buf, 0777) != 0 && errno != EEXIST)
            return err_set(e, "cannot create folder %s: %s", buf, strerror(errno));
        *p = '/';
    }
    if (mkdir(buf, 0777) != 0 && errno != EEXIST)
        return err_set(e, "cannot create folder %s: %s", buf, strerror(errno));
    return 0;
}

double time_now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

void sleep_s(double s)
{
    struct timespec t = {(time_t)s, (long)((s - (double)(time_t)s) * 1e9)};
    nanosleep(&t, NULL);
}

size_t peak_rss_bytes(void)
{
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) != 0)
        return 0;
    return (size_t)ru.ru_maxrss * 1024;
}

/* The folder that holds path, into dir; returns path's file name. */
const char *path_parent(const char *path, char *dir, size_t len)
{
    const char *slash = strrchr(path, '/');
    if (!slash)
        snprintf(dir, len, ".");
    else if (slash == path)
        snprintf(dir, len, "/");
    else
        snprintf(dir, len, "%.*s", (int)(slash - path), path);
    return slash ? slash + 1 : path;
}

/* After the rename, so the new directory entry itself survives a crash. */
int fsync_parent(const char *path)
{
    char dir[4096];
    path_parent(path, dir, sizeof dir);
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    int rc = fsync(fd);
    /* Some file systems cannot sync a folder; nothing more can be done there. */
    if (rc != 0 && errno == EINVAL)
        rc = 0;
    int saved = errno;
    close(fd);
    errno = saved;
    return rc;
}

int file_replace(const char *path, const char *what, int (*body)(FILE *f, void *ctx), void *ctx,
                 Err *e)
{
    char tmp[4200];
    if (snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid()) >= (int)sizeof tmp)
        return err_set(e, "%s %s: path too long", what, path);
    FILE *f = fopen(tmp, "wb");
    if (!f)
        return err_set(e, "%s %s: cannot create %s: %s", what, path, tmp, strerror(errno));
    if (body(f, ctx) != 0 || fflush(f) != 0 || fsync(fileno(f)) != 0) {
        err_set(e, "%s %s: writing %s: %s", what, path, tmp, strerror(errno));
        fclose(f);
        unlink(tmp);
        return -1;
    }
    if (fclose(f) != 0) {
        err_set(e, "%s %s: closing %s: %s", what, path, tmp, strerror(errno));
        unlink(tmp);
        return -1;
    }
    if (rename(tmp, path) != 0) {
        err_set(e, "%s %s: renaming %s over it: %s", what, path, tmp, strerror(errno));
        unlink(tmp);
        return -1;
    }
    if (fsync_parent(path) != 0)
        return err_set(e, "%s %s: written, but syncing its folder failed: %s", what, path,
                       strerror(errno));
    return 0;
}

int file_replace_stale(const char *path)
{
    char dir[4096];
    const char *name = path_parent(path, dir, sizeof dir);
    const size_t len = strlen(name);
    DIR *d = opendir(dir);
    if (!d)
        return 0;
    int removed = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        /* NAME.tmp.PID, PID all digits, the process gone (on this host:
         * the orchestrator never runs one run in two places at once) */
        const char *s = de->d_name;
        if (strncmp(s, name, len) != 0 || strncmp(s + len, ".tmp.", 5) != 0)
            continue;
        char *end;
        errno = 0;
        const long pid = strtol(s + len + 5, &end, 10);
        if (s[len + 5] < '0' || s[len + 5] > '9' || *end || errno || pid <= 0 ||
            pid == (long)getpid() || kill((pid_t)pid, 0) == 0 || errno != ESRCH)
            continue;
        char file[4096 + 256];
        snprintf(file, sizeof file, "%s/%s", dir, s);
        removed += unlink(file) == 0;
    }
    closedir(d);
    return removed;
}

void host_cpu(char *buf, size_t len)
{
    char model[256] = "";
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (f) {
        char line[512];
        while (!model[0] && fgets(line, sizeof line, f)) {
            /* "model name" on x86, "Model" or "Hardware" elsewhere */
            const char *colon = strchr(line, ':');
            if (!colon || !(strncmp(line, "model name", 10) == 0 ||
                            strncmp(line, "Model", 5) == 0 || strncmp(line, "Hardware", 8) == 0))
                continue;
            const char *v = colon + 1;
            while (*v == ' ' || *v == '\t')
                v++;
            snprintf(model, sizeof model, "%.*s", (int)strcspn(v, "\n"), v);
        }
        fclose(f);
    }
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    snprintf(buf, len, "%s, %ld core%s", model[0] ? model : "unknown CPU", cores,
             cores == 1 ? "" : "s");
}
