/*
 * `sweep data fetch` against a tiny HTTP/1.1 server run in a thread on
 * 127.0.0.1 (ephemeral port): archives built here with libarchive in the
 * real layouts, served whole, as 404, truncated, or as garbage. Checks the
 * files land with exact contents, a complete copy is not downloaded again,
 * and every failure (MD5, HTTP, transfer, format, unsafe entries, missing
 * files) leaves the target folder as it was and no temporaries behind.
 * No test reaches the internet: main() points the proxy variables at a
 * closed local port, so even a stray request for the official URL fails.
 */
#define _GNU_SOURCE
#include "testutil.h"

#include <archive.h>
#include <archive_entry.h>
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <netinet/in.h>
#include <openssl/evp.h>
#include <poll.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fetch.h"

/* ---- the server ---- */

typedef enum { SERVE_OK, SERVE_404, SERVE_TRUNCATED } ServeMode;

typedef struct {
    int fd;                         /* listening socket */
    int port;
    pthread_t thread;
    pthread_mutex_t lock;           /* guards everything below; held for a whole answer */
    bool stop;
    ServeMode mode;
    unsigned char *body;            /* our own copy, served for every path: the test
                                     * may free its buffer while a send is in flight */
    size_t len;
    int requests;
} Server;

static void send_all(int fd, const void *data, size_t len)
{
    const char *p = data;
    while (len > 0) {
        ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
        if (n <= 0)
            return;     /* the client gave up (e.g. curl after a 404): fine */
        p += n;
        len -= (size_t)n;
    }
}

static void server_answer(Server *s, int c)
{
    char req[4096];
    size_t used = 0;
    struct timeval tv = {.tv_sec = 5};
    setsockopt(c, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    while (used < sizeof req - 1) {
        ssize_t n = recv(c, req + used, sizeof req - 1 - used, 0);
        if (n <= 0)
            break;
        used += (size_t)n;
        req[used] = '\0';
        if (strstr(req, "\r\n\r\n"))
            break;
    }
    req[used] = '\0';
    char path[256] = "";
    sscanf(req, "GET %255s", path);

    /* Held while answering so that server_serve cannot swap the body
     * mid-send; the client (data_fetch) never waits on the lock. */
    pthread_mutex_lock(&s->lock);
    s->requests++;
    ServeMode mode = s->mode;
    const unsigned char *body = s->body;
    size_t len = s->len;

    char head[512];
    if (strncmp(path, "/moved", 6) == 0) {
        snprintf(head, sizeof head, "HTTP/1.1 302 Found\r\nLocation: /archive.tar.gz\r\n"
                                    "Content-Length: 0\r\nConnection: close\r\n\r\n");
        send_all(c, head, strlen(head));
    } else if (mode == SERVE_404) {
        const char *msg = "not found\n";
        snprintf(head, sizeof head, "HTTP/1.1 404 Not Found\r\nContent-Length: %zu\r\n"
                 "Connection: close\r\n\r\n", strlen(msg));
        send_all(c, head, strlen(head));
        send_all(c, msg, strlen(msg));
    } else {
        snprintf(head, sizeof head, "HTTP/1.1 200 OK\r\nContent-Type: application/gzip\r\n"
                 "Content-Length: %zu\r\nConnection: close\r\n\r\n", len);
        send_all(c, head, strlen(head));
        send_all(c, body, mode == SERVE_TRUNCATED ? len / 2 : len);
    }
    pthread_mutex_unlock(&s->lock);
}

static void *server_main(void *arg)
{
    Server *s = arg;
    for (;;) {
        pthread_mutex_lock(&s->lock);
        bool stop = s->stop;
        pthread_mutex_unlock(&s->lock);
        if (stop)
            return NULL;
        /* Poll with a short timeout rather than block in accept, so that
         * stopping needs nothing but the flag. */
        struct pollfd p = {.fd = s->fd, .events = POLLIN};
        if (poll(&p, 1, 20) <= 0)
            continue;
        int c = accept(s->fd, NULL, NULL);
        if (c < 0)
            continue;
        server_answer(s, c);
        shutdown(c, SHUT_WR);
        close(c);
    }
}

static void server_start(Server *s)
{
    memset(s, 0, sizeof *s);
    pthread_mutex_init(&s->lock, NULL);
    s->fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(s->fd >= 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = 0};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(s->fd, (struct sockaddr *)&a, sizeof a), 0);
    socklen_t alen = sizeof a;
    assert_int_equal(getsockname(s->fd, (struct sockaddr *)&a, &alen), 0);
    s->port = ntohs(a.sin_port);
    assert_int_equal(listen(s->fd, 8), 0);
    assert_int_equal(pthread_create(&s->thread, NULL, server_main, s), 0);
}

static void server_stop(Server *s)
{
    pthread_mutex_lock(&s->lock);
    s->stop = true;
    pthread_mutex_unlock(&s->lock);
    pthread_join(s->thread, NULL);
    close(s->fd);
    pthread_mutex_destroy(&s->lock);
    free(s->body);
}

static void server_serve(Server *s, ServeMode mode, const unsigned char *body, size_t len)
{
    unsigned char *copy = malloc(len ? len : 1);
    assert_non_null(copy);
    if (len)
        memcpy(copy, body, len);
    pthread_mutex_lock(&s->lock);
    free(s->body);
    s->mode = mode;
    s->body = copy;
    s->len = len;
    pthread_mutex_unlock(&s->lock);
}

static int server_requests(Server *s)
{
    pthread_mutex_lock(&s->lock);
    int n = s->requests;
    pthread_mutex_unlock(&s->lock);
    return n;
}

/* ---- fixture archives ---- */

/* Contents of a member, a pure function of its name: record files get 1-3
 * records with bytes that differ across files and offsets, so a swapped,
 * shortened or stale file shows. Caller frees. */
static unsigned char *member_bytes(const char *name, int record, size_t *len)
{
    unsigned h = 5381;
    for (const char *p = name; *p; p++)
        h = h * 33 + (unsigned char)*p;
    size_t n = strstr(name, ".bin") ? (size_t)(1 + h % 3) * (size_t)record : 40 + h % 50;
    unsigned char *b = malloc(n);
    assert_non_null(b);
    for (size_t j = 0; j < n; j++)
        b[j] = strstr(name, ".bin") ? (unsigned char)(h + j * 7 + j / 251)
                                    : (unsigned char)('a' + (h + j) % 26);
    *len = n;
    return b;
}

typedef struct {
    const char *name;
    int type;                       /* AE_IFREG, AE_IFDIR, AE_IFLNK; 0: hard link */
    const char *link;
} Extra;

/*
 * A .tar.gz in src's real layout (subdir/ then every required file and a
 * readme.html), leaving out `omit` if not NULL, with `extra` appended last
 * if not NULL: last, so the safe entries are already unpacked when it is
 * refused and their cleanup is exercised too.
 */
static unsigned char *archive_build(const DataSource *src, const char *omit, const Extra *extra,
                                    size_t *len)
{
    size_t cap = 1 << 20, used = 0;
    unsigned char *buf = malloc(cap);
    assert_non_null(buf);
    struct archive *a = archive_write_new();
    assert_int_equal(archive_write_add_filter_gzip(a), ARCHIVE_OK);
    assert_int_equal(archive_write_set_format_pax_restricted(a), ARCHIVE_OK);
    assert_int_equal(archive_write_open_memory(a, buf, cap, &used), ARCHIVE_OK);

    const char *names[10];
    int n = 0;
    for (int i = 0; src->files[i]; i++)
        if (!omit || strcmp(src->files[i], omit) != 0)
            names[n++] = src->files[i];
    names[n++] = "readme.html";

    struct archive_entry *e = archive_entry_new();
    char path[512];
    snprintf(path, sizeof path, "%s/", src->subdir);
    archive_entry_set_pathname(e, path);
    archive_entry_set_filetype(e, AE_IFDIR);
    archive_entry_set_perm(e, 0755);
    assert_int_equal(archive_write_header(a, e), ARCHIVE_OK);
    for (int i = 0; i < n; i++) {
        size_t blen;
        unsigned char *b = member_bytes(names[i], src->record_bytes, &blen);
        snprintf(path, sizeof path, "%s/%s", src->subdir, names[i]);
        archive_entry_clear(e);
        archive_entry_set_pathname(e, path);
        archive_entry_set_filetype(e, AE_IFREG);
        archive_entry_set_perm(e, 0644);
        archive_entry_set_size(e, (la_int64_t)blen);
        assert_int_equal(archive_write_header(a, e), ARCHIVE_OK);
        assert_int_equal(archive_write_data(a, b, blen), (la_ssize_t)blen);
        free(b);
    }
    if (extra) {
        const char *evil = "evil\n";
        archive_entry_clear(e);
        archive_entry_set_pathname(e, extra->name);
        archive_entry_set_perm(e, 0644);
        if (extra->type == 0) {
            archive_entry_set_filetype(e, AE_IFREG);
            archive_entry_set_hardlink(e, extra->link);
        } else {
            archive_entry_set_filetype(e, (unsigned)extra->type);
            if (extra->type == AE_IFLNK)
                archive_entry_set_symlink(e, extra->link);
            if (extra->type == AE_IFREG)
                archive_entry_set_size(e, (la_int64_t)strlen(evil));
        }
        assert_int_equal(archive_write_header(a, e), ARCHIVE_OK);
        if (extra->type == AE_IFREG)
            assert_int_equal(archive_write_data(a, evil, strlen(evil)), (la_ssize_t)strlen(evil));
    }
    archive_entry_free(e);
    assert_int_equal(archive_write_close(a), ARCHIVE_OK);
    archive_write_free(a);
    *len = used;
    return buf;
}

static void md5_hex(const unsigned char *data, size_t len, char out[33])
{
    unsigned char d[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    assert_int_equal(EVP_Digest(data, len, d, &n, EVP_md5(), NULL), 1);
    assert_int_equal(n, 16);
    for (unsigned int i = 0; i < n; i++)
        snprintf(out + 2 * i, 3, "%02x", d[i]);
}

/* ---- per-test state ---- */

typedef struct {
    Server srv;
    char *root;                     /* scratch folder */
    char dir[1024];                 /* root/data: what data_fetch gets (created by it) */
    char url[128];
    const DataSource *src;
    unsigned char *archive;         /* the good archive for src */
    size_t len;
    char md5[33];
    FILE *progress;                 /* into log */
    char *log;
    size_t log_len;
} Fx;

static int fx_setup(void **state)
{
    Fx *f = calloc(1, sizeof *f);
    assert_non_null(f);
    f->root = tu_tempdir("fetch");
    snprintf(f->dir, sizeof f->dir, "%s/data", f->root);
    server_start(&f->srv);
    snprintf(f->url, sizeof f->url, "http://127.0.0.1:%d/archive.tar.gz", f->srv.port);
    f->src = data_source("cifar10");
    assert_non_null(f->src);
    f->archive = archive_build(f->src, NULL, NULL, &f->len);
    md5_hex(f->archive, f->len, f->md5);
    server_serve(&f->srv, SERVE_OK, f->archive, f->len);
    f->progress = open_memstream(&f->log, &f->log_len);
    assert_non_null(f->progress);
    *state = f;
    return 0;
}

static int fx_teardown(void **state)
{
    Fx *f = *state;
    server_stop(&f->srv);
    fclose(f->progress);
    free(f->log);
    free(f->archive);
    tu_rmtree(f->root);
    free(f->root);
    free(f);
    return 0;
}

/* The progress lines so far, as a string. */
static const char *fx_log(Fx *f)
{
    fflush(f->progress);
    return f->log ? f->log : "";
}

static const char *in_dir(const Fx *f, const char *rel)
{
    static char buf[4][2048];
    static int k;
    k = (k + 1) % 4;
    snprintf(buf[k], sizeof buf[k], "%s/%s", f->dir, rel);
    return buf[k];
}

static bool exists(const char *path)
{
    struct stat st;
    return lstat(path, &st) == 0;
}

/* Entries of dir whose names start with '.': our temporaries. */
static int hidden_count(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d)
        return 0;
    int n = 0;
    struct dirent *de;
    while ((de = readdir(d)))
        if (de->d_name[0] == '.' && strcmp(de->d_name, ".") != 0 && strcmp(de->d_name, "..") != 0)
            n++;
    closedir(d);
    return n;
}

/* Every required file of src and readme.html, byte for byte. */
static void assert_copy(const Fx *f, const DataSource *src)
{
    const char *names[10];
    int n = 0;
    for (int i = 0; src->files[i]; i++)
        names[n++] = src->files[i];
    names[n++] = "readme.html";
    for (int i = 0; i < n; i++) {
        char rel[512];
        snprintf(rel, sizeof rel, "%s/%s", src->subdir, names[i]);
        size_t want_len, have_len = 0;
        unsigned char *want = member_bytes(names[i], src->record_bytes, &want_len);
        unsigned char *have = tu_read_file(in_dir(f, rel), &have_len);
        if (!have)
            fail_msg("%s missing", rel);
        assert_int_equal(have_len, want_len);
        assert_memory_equal(have, want, want_len);
        free(want);
        free(have);
    }
}

/* A failed fetch: -1, nothing at dir/<subdir>, no temporaries. */
static void assert_failed_clean(const Fx *f, int rc, const Err *e)
{
    assert_int_equal(rc, -1);
    assert_true(e->msg[0] != '\0');
    assert_false(exists(in_dir(f, f->src->subdir)));
    assert_int_equal(hidden_count(f->dir), 0);
}

/* ---- tests ---- */

static void test_sources_are_the_published_ones(void **state)
{
    (void)state;
    const DataSource *c10 = data_source("cifar10");
    assert_non_null(c10);
    assert_string_equal(c10->url, "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz");
    assert_string_equal(c10->md5, "c32a1d4ab5d03f1284b67883e8d87530");
    assert_string_equal(c10->subdir, "cifar-10-batches-bin");
    assert_string_equal(c10->files[0], "data_batch_1.bin");
    assert_string_equal(c10->files[4], "data_batch_5.bin");
    assert_string_equal(c10->files[5], "test_batch.bin");
    assert_int_equal(c10->record_bytes, 3073);
    for (int i = 0; i < 6; i++)
        assert_int_equal(c10->sizes[i], 30730000);      /* 10000 records each */

    const DataSource *c100 = data_source("cifar100");
    assert_non_null(c100);
    assert_string_equal(c100->url, "https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz");
    assert_string_equal(c100->md5, "03b5dce01913d631647c71ecec9e9cb8");
    assert_string_equal(c100->subdir, "cifar-100-binary");
    assert_string_equal(c100->files[0], "train.bin");
    assert_string_equal(c100->files[1], "test.bin");
    assert_int_equal(c100->record_bytes, 3074);
    assert_int_equal(c100->sizes[0], 153700000);
    assert_int_equal(c100->sizes[1], 30740000);

    assert_null(data_source("mnist"));
    assert_null(data_source(NULL));
}

static void test_unknown_name_lists_known(void **state)
{
    Fx *f = *state;
    Err e = {0};
    assert_int_equal(data_fetch("imagenet", f->dir, f->url, f->md5, NULL, &e), -1);
    assert_non_null(strstr(e.msg, "imagenet"));
    assert_non_null(strstr(e.msg, "cifar10"));
    assert_non_null(strstr(e.msg, "cifar100"));
    assert_int_equal(server_requests(&f->srv), 0);
    assert_false(exists(f->dir));
}

static void test_good_fetch_then_no_download(void **state)
{
    Fx *f = *state;
    Err e = {0};
    if (data_fetch("cifar10", f->dir, f->url, f->md5, f->progress, &e) != 0)
        fail_msg("%s", e.msg);
    assert_copy(f, f->src);
    assert_int_equal(server_requests(&f->srv), 1);
    assert_int_equal(hidden_count(f->dir), 0);
    assert_non_null(strstr(fx_log(f), "100%"));
    assert_non_null(strstr(fx_log(f), "ready"));

    if (data_fetch("cifar10", f->dir, f->url, f->md5, f->progress, &e) != 0)
        fail_msg("%s", e.msg);
    assert_int_equal(server_requests(&f->srv), 1);
    assert_non_null(strstr(fx_log(f), "nothing to download"));
    assert_copy(f, f->src);
}

static void test_follows_redirects(void **state)
{
    Fx *f = *state;
    Err e = {0};
    char url[160];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/moved", f->srv.port);
    if (data_fetch("cifar10", f->dir, url, f->md5, NULL, &e) != 0)
        fail_msg("%s", e.msg);
    assert_int_equal(server_requests(&f->srv), 2);
    assert_copy(f, f->src);
}

static void test_cifar100_layout(void **state)
{
    Fx *f = *state;
    Err e = {0};
    const DataSource *src = data_source("cifar100");
    size_t len;
    char md5[33];
    unsigned char *arc = archive_build(src, NULL, NULL, &len);
    md5_hex(arc, len, md5);
    server_serve(&f->srv, SERVE_OK, arc, len);
    if (data_fetch("cifar100", f->dir, f->url, md5, NULL, &e) != 0)
        fail_msg("%s", e.msg);
    assert_copy(f, src);
    assert_int_equal(hidden_count(f->dir), 0);
    free(arc);
}

static void test_wrong_md5(void **state)
{
    Fx *f = *state;
    Err e = {0};
    const char *wrong = "0123456789abcdef0123456789abcdef";
    int rc = data_fetch("cifar10", f->dir, f->url, wrong, NULL, &e);
    assert_failed_clean(f, rc, &e);
    assert_non_null(strstr(e.msg, "MD5"));
    assert_non_null(strstr(e.msg, wrong));
    assert_non_null(strstr(e.msg, f->md5));
    assert_non_null(strstr(e.msg, f->url));
}

static void test_md5_argument_checked_first(void **state)
{
    Fx *f = *state;
    Err e = {0};
    assert_int_equal(data_fetch("cifar10", f->dir, f->url, "not-a-digest", NULL, &e), -1);
    assert_non_null(strstr(e.msg, "MD5"));
    assert_int_equal(server_requests(&f->srv), 0);
}

static void test_http_404(void **state)
{
    Fx *f = *state;
    Err e = {0};
    server_serve(&f->srv, SERVE_404, NULL, 0);
    int rc = data_fetch("cifar10", f->dir, f->url, f->md5, NULL, &e);
    assert_failed_clean(f, rc, &e);
    assert_non_null(strstr(e.msg, "404"));
    assert_non_null(strstr(e.msg, f->url));
}

static void test_truncated_transfer(void **state)
{
    Fx *f = *state;
    Err e = {0};
    server_serve(&f->srv, SERVE_TRUNCATED, f->archive, f->len);
    int rc = data_fetch("cifar10", f->dir, f->url, f->md5, NULL, &e);
    assert_failed_clean(f, rc, &e);
    assert_non_null(strstr(e.msg, f->url));
    assert_null(strstr(e.msg, "MD5"));      /* caught by the transfer, before hashing ends */
}

static void test_not_an_archive(void **state)
{
    Fx *f = *state;
    Err e = {0};
    unsigned char junk[5000];
    for (size_t i = 0; i < sizeof junk; i++)
        junk[i] = (unsigned char)(i * 131 + 7);
    char md5[33];
    md5_hex(junk, sizeof junk, md5);
    server_serve(&f->srv, SERVE_OK, junk, sizeof junk);
    int rc = data_fetch("cifar10", f->dir, f->url, md5, NULL, &e);
    assert_failed_clean(f, rc, &e);
    assert_non_null(strstr(e.msg, "unpacking"));
    assert_non_null(strstr(e.msg, f->url));
}

static void test_unsafe_entries_refused(void **state)
{
    Fx *f = *state;
    char abs_evil[1200];
    snprintf(abs_evil, sizeof abs_evil, "%s/evil_abs", f->root);
    const Extra bad[] = {
        {"../evil", AE_IFREG, NULL},
        {"cifar-10-batches-bin/../../evil", AE_IFREG, NULL},
        {abs_evil, AE_IFREG, NULL},
        {"cifar-10-batches-bin/link", AE_IFLNK, "/etc/passwd"},
        {"cifar-10-batches-bin/hard", 0, "/etc/passwd"},
        {"cifar-10-batches-bin/fifo", AE_IFIFO, NULL},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        Err e = {0};
        size_t len;
        char md5[33];
        unsigned char *arc = archive_build(f->src, NULL, &bad[i], &len);
        md5_hex(arc, len, md5);
        server_serve(&f->srv, SERVE_OK, arc, len);
        int rc = data_fetch("cifar10", f->dir, f->url, md5, NULL, &e);
        if (rc == 0)
            fail_msg("entry %s was accepted", bad[i].name);
        assert_failed_clean(f, rc, &e);
        assert_non_null(strstr(e.msg, "refusing"));
        assert_false(exists(in_dir(f, "evil")));
        assert_false(exists(abs_evil));
        char outside[1200];
        snprintf(outside, sizeof outside, "%s/evil", f->root);
        assert_false(exists(outside));
        free(arc);
    }
}

static void test_missing_file_named(void **state)
{
    Fx *f = *state;
    Err e = {0};
    size_t len;
    char md5[33];
    unsigned char *arc = archive_build(f->src, "test_batch.bin", NULL, &len);
    md5_hex(arc, len, md5);
    server_serve(&f->srv, SERVE_OK, arc, len);
    int rc = data_fetch("cifar10", f->dir, f->url, md5, NULL, &e);
    assert_failed_clean(f, rc, &e);
    assert_non_null(strstr(e.msg, "test_batch.bin"));
    free(arc);
}

/* Snapshot of every file left in the copy, to compare after a failure. */
typedef struct {
    unsigned char *data[8];
    size_t len[8];
} Snapshot;

static void snapshot_take(const Fx *f, Snapshot *s)
{
    for (int i = 0; f->src->files[i]; i++) {
        char rel[512];
        snprintf(rel, sizeof rel, "%s/%s", f->src->subdir, f->src->files[i]);
        s->data[i] = tu_read_file(in_dir(f, rel), &s->len[i]);
    }
}

static void snapshot_check_free(const Fx *f, Snapshot *s)
{
    Snapshot now = {0};
    snapshot_take(f, &now);
    for (int i = 0; f->src->files[i]; i++) {
        assert_int_equal(now.data[i] != NULL, s->data[i] != NULL);
        if (s->data[i]) {
            assert_int_equal(now.len[i], s->len[i]);
            assert_memory_equal(now.data[i], s->data[i], s->len[i]);
        }
        free(now.data[i]);
        free(s->data[i]);
    }
}

static void test_existing_copy_survives_failures(void **state)
{
    Fx *f = *state;
    Err e = {0};
    if (data_fetch("cifar10", f->dir, f->url, f->md5, NULL, &e) != 0)
        fail_msg("%s", e.msg);
    /* One file gone: the copy is incomplete, so the next fetch downloads. */
    assert_int_equal(unlink(in_dir(f, "cifar-10-batches-bin/data_batch_5.bin")), 0);

    Snapshot before = {0};
    snapshot_take(f, &before);
    assert_int_equal(data_fetch("cifar10", f->dir, f->url, "0123456789abcdef0123456789abcdef",
                                f->progress, &e), -1);
    assert_non_null(strstr(fx_log(f), "data_batch_5.bin is missing"));
    assert_int_equal(server_requests(&f->srv), 2);
    assert_int_equal(hidden_count(f->dir), 0);
    snapshot_check_free(f, &before);

    snapshot_take(f, &before);
    server_serve(&f->srv, SERVE_404, NULL, 0);
    assert_int_equal(data_fetch("cifar10", f->dir, f->url, f->md5, NULL, &e), -1);
    assert_int_equal(hidden_count(f->dir), 0);
    snapshot_check_free(f, &before);

    /* And a good fetch replaces the incomplete copy, old one cleared away. */
    server_serve(&f->srv, SERVE_OK, f->archive, f->len);
    if (data_fetch("cifar10", f->dir, f->url, f->md5, NULL, &e) != 0)
        fail_msg("%s", e.msg);
    assert_int_equal(server_requests(&f->srv), 4);
    assert_copy(f, f->src);
    assert_int_equal(hidden_count(f->dir), 0);
}

static void test_partial_record_file_refetched(void **state)
{
    Fx *f = *state;
    Err e = {0};
    if (data_fetch("cifar10", f->dir, f->url, f->md5, NULL, &e) != 0)
        fail_msg("%s", e.msg);
    tu_write_file(in_dir(f, "cifar-10-batches-bin/data_batch_2.bin"), "short", 5);
    if (data_fetch("cifar10", f->dir, f->url, f->md5, NULL, &e) != 0)
        fail_msg("%s", e.msg);
    assert_int_equal(server_requests(&f->srv), 2);
    assert_copy(f, f->src);
}

/* Official-size files (sparse, so cheap) count as complete for the official
 * source: nothing is downloaded and no network is needed. */
static void test_official_copy_skips_download(void **state)
{
    Fx *f = *state;
    Err e = {0};
    assert_int_equal(mkdir(f->dir, 0755), 0);
    assert_int_equal(mkdir(in_dir(f, "cifar-10-batches-bin"), 0755), 0);
    for (int i = 0; f->src->files[i]; i++) {
        char rel[512];
        snprintf(rel, sizeof rel, "cifar-10-batches-bin/%s", f->src->files[i]);
        tu_write_file(in_dir(f, rel), "x", 1);
        if (f->src->sizes[i])
            assert_int_equal(truncate(in_dir(f, rel), (off_t)f->src->sizes[i]), 0);
    }
    if (data_fetch("cifar10", f->dir, NULL, NULL, f->progress, &e) != 0)
        fail_msg("%s", e.msg);
    assert_non_null(strstr(fx_log(f), "nothing to download"));
}

/* With the official source a small copy is not complete: it tries the
 * official URL, which main() made unreachable, and the copy stays. */
static void test_official_needs_official_sizes(void **state)
{
    Fx *f = *state;
    Err e = {0};
    if (data_fetch("cifar10", f->dir, f->url, f->md5, NULL, &e) != 0)
        fail_msg("%s", e.msg);
    Snapshot before = {0};
    snapshot_take(f, &before);
    assert_int_equal(data_fetch("cifar10", f->dir, NULL, NULL, f->progress, &e), -1);
    assert_non_null(strstr(e.msg, "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"));
    assert_non_null(strstr(fx_log(f), "not 30730000"));
    assert_int_equal(server_requests(&f->srv), 1);
    assert_int_equal(hidden_count(f->dir), 0);
    snapshot_check_free(f, &before);
}

static void test_dir_is_a_file(void **state)
{
    Fx *f = *state;
    Err e = {0};
    tu_write_file(f->dir, "x", 1);
    assert_int_equal(data_fetch("cifar10", f->dir, f->url, f->md5, NULL, &e), -1);
    assert_non_null(strstr(e.msg, f->dir));
    assert_int_equal(server_requests(&f->srv), 0);
}

int main(void)
{
    /* Any request not for our server goes to a closed port: a test that
     * would reach the internet fails fast instead. */
    setenv("http_proxy", "http://127.0.0.1:9", 1);
    setenv("https_proxy", "http://127.0.0.1:9", 1);
    setenv("HTTPS_PROXY", "http://127.0.0.1:9", 1);
    setenv("ALL_PROXY", "http://127.0.0.1:9", 1);
    setenv("no_proxy", "127.0.0.1", 1);
    setenv("NO_PROXY", "127.0.0.1", 1);

#define T(fn) cmocka_unit_test_setup_teardown(fn, fx_setup, fx_teardown)
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sources_are_the_published_ones),
        T(test_unknown_name_lists_known),
        T(test_good_fetch_then_no_download),
        T(test_follows_redirects),
        T(test_cifar100_layout),
        T(test_wrong_md5),
        T(test_md5_argument_checked_first),
        T(test_http_404),
        T(test_truncated_transfer),
        T(test_not_an_archive),
        T(test_unsafe_entries_refused),
        T(test_missing_file_named),
        T(test_existing_copy_survives_failures),
        T(test_partial_record_file_refetched),
        T(test_official_copy_skips_download),
        T(test_official_needs_official_sizes),
        T(test_dir_is_a_file),
    };
#undef T
    return cmocka_run_group_tests(tests, NULL, NULL);
}
