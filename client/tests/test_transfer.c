/*
 * Unit tests: sbxtransfer (sbx/transfer.h) against a scripted fake agent on the other end of a
 * socketpair. The agent is a thread that writes its whole part (the hello result, the transfer's
 * result, stream data, stream.end, transfer.done; the client reads it in order) and then takes
 * everything the client sends, so no write of the client blocks; the test reads that back
 * afterwards.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>

#include "sbx/frame.h"
#include "sbx/transfer.h"

#include <nettle/sha2.h>

#define SID 7

struct fx {
    struct sbx_client *c;
    int afd;               /* the agent's end */
    struct sbx_out script; /* the agent's frames */
    pthread_t thread;      /* the agent: writes the script, then reads what the client sends */
    bool running;
    uint8_t *sent;
    size_t sent_len;
    char path[32];           /* a temporary file */
    uint8_t data[300 << 10]; /* its content */
    struct sbx_err err;
    bool hangup; /* the agent shuts its sending side once the script is out */
};

/* The agent's thread: write the script, then take everything the client sends until it closes. */
static void *agent(void *arg)
{
    struct fx *fx = arg;
    size_t cap = 0;

    for (size_t off = 0; off < fx->script.sb.size;) {
        ssize_t n = send(fx->afd, fx->script.sb.data + off, fx->script.sb.size - off, MSG_NOSIGNAL);
        if (n <= 0) {
            return NULL;
        }
        off += (size_t)n;
    }
    if (fx->hangup) {
        (void)shutdown(fx->afd, SHUT_WR);
    }
    for (;;) {
        ssize_t n;
        if (fx->sent_len + 65536 > cap) {
            cap = (cap + 65536) * 2;
            fx->sent = realloc(fx->sent, cap);
        }
        n = read(fx->afd, fx->sent + fx->sent_len, cap - fx->sent_len);
        if (n <= 0) {
            return NULL;
        }
        fx->sent_len += (size_t)n;
    }
}

static int setup(void **state)
{
    struct fx *fx = calloc(1, sizeof(*fx));
    struct sbx_hello_result hr = {
        .version = 1,
        .agent = "fake",
        .agent_version = "0",
        .caps = (const char *const[]){ "session", "transfer", NULL },
        .limits = { SBX_FRAME_MAX, SBX_STREAM_CHUNK_MAX, SBX_STREAM_WINDOW, SBX_MAX_STREAMS,
                    SBX_MAX_PROCS, SBX_MAX_CONNS },
        .conn = 1,
    };
    int sv[2], fd;

    assert_non_null(fx);
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    fx->c = sbx_client_from_fd(sv[0], "test", &fx->err);
    assert_non_null(fx->c);
    fx->afd = sv[1];
    sbx_out_init(&fx->script);
    /* hello (request 1) is answered first; the transfer's request is 2 */
    sbx_out_begin(&fx->script);
    sbx_pack_response_head(&fx->script.pk, 1);
    sbx_hello_result_pack(&fx->script.pk, &hr);
    assert_int_equal(sbx_out_end(&fx->script, &fx->err), 0);
    for (size_t i = 0; i < sizeof(fx->data); i++) {
        fx->data[i] = (uint8_t)(i * 13 + i / 509);
    }
    strcpy(fx->path, "/tmp/sbx-xfer-XXXXXX");
    fd = mkstemp(fx->path);
    assert_int_equal(write(fd, fx->data, sizeof(fx->data)), (ssize_t)sizeof(fx->data));
    close(fd);
    *state = fx;
    return 0;
}

static int teardown(void **state)
{
    struct fx *fx = *state;

    sbx_client_close(fx->c);
    if (fx->running) {
        pthread_join(fx->thread, NULL);
    }
    close(fx->afd);
    sbx_out_destroy(&fx->script);
    unlink(fx->path);
    free(fx->sent);
    free(fx);
    return 0;
}

/* --- the agent's script ---------------------------------------------------------------------- */

static msgpack_packer *frame(struct fx *fx)
{
    sbx_out_begin(&fx->script);
    return &fx->script.pk;
}

static void end(struct fx *fx)
{
    assert_int_equal(sbx_out_end(&fx->script, &fx->err), 0);
}

/* The result of request 2: {stream: SID}, with size and mode for @size >= 0. */
static void result(struct fx *fx, int64_t size)
{
    struct sbx_stream_result r = { SID, size >= 0, (uint64_t)size, 0640 };

    sbx_pack_response_head(frame(fx), 2);
    sbx_stream_result_pack(&fx->script.pk, &r);
    end(fx);
}

static void refuse(struct fx *fx, const char *code)
{
    struct sbx_err e;

    sbx_err_set(&e, code, "refused");
    sbx_pack_error_response(frame(fx), 2, &e);
    end(fx);
}

/* transfer.done of SID: the digest @sha (NULL: none), or the error @code. */
static void done(struct fx *fx, const char *sha, const char *code)
{
    struct sbx_transfer_done d = { .stream = SID, .has_size = true, .size = sizeof(fx->data) };
    struct sbx_err e;

    snprintf(d.sha256, sizeof(d.sha256), "%s", sha != NULL ? sha : "");
    if (code != NULL) {
        sbx_err_set(&e, code, "failed");
    }
    sbx_transfer_done_pack(frame(fx), &d, code != NULL ? &e : NULL);
    end(fx);
}

static void data(struct fx *fx, const void *p, size_t n)
{
    msgpack_packer *pk = frame(fx);

    msgpack_pack_array(pk, 3);
    msgpack_pack_uint8(pk, 3);
    msgpack_pack_uint32(pk, SID);
    sbx_pack_bin(pk, p, n);
    end(fx);
}

/* Start the agent's thread, and say hello. */
static void go(struct fx *fx)
{
    assert_int_equal(pthread_create(&fx->thread, NULL, agent, fx), 0);
    fx->running = true;
    assert_int_equal(sbx_client_hello(fx->c, NULL, &fx->err), 0);
}

/* What the client sent on SID, read back once it is closed: data bytes, and the last stream
 * notification's method and error code ("" when none). */
struct sent {
    size_t bytes;
    char note[16], code[24];
};

static struct sent sent(struct fx *fx)
{
    struct sent s = { 0 };
    struct sbx_framer fr;
    struct sbx_decoder dec;
    size_t off = 0;

    sbx_client_close(fx->c);
    fx->c = NULL;
    pthread_join(fx->thread, NULL);
    fx->running = false;
    sbx_framer_init(&fr, 0);
    assert_int_equal(sbx_decoder_init(&dec), 0);
    while (off < fx->sent_len) {
        const uint8_t *f;
        size_t used;
        uint32_t flen;
        struct sbx_msg m;
        struct sbx_stream_note n;
        int r =
            sbx_framer_next(&fr, fx->sent + off, fx->sent_len - off, &used, &f, &flen, &fx->err);
        off += used;
        if (r != 1) {
            break;
        }
        assert_int_equal(sbx_msg_decode(&dec, f, flen, &m, &fx->err), 0);
        if (m.kind == SBX_MSG_DATA && m.stream == SID) {
            s.bytes += m.data_len;
        } else if (m.kind == SBX_MSG_NOTIFY && m.method_len < sizeof(s.note) &&
                   strncmp(m.method, "stream.", 7) == 0) {
            snprintf(s.note, sizeof(s.note), "%.*s", (int)m.method_len, m.method);
            assert_int_equal(sbx_stream_note_read(s.note, m.params, &n, &fx->err), 0);
            snprintf(s.code, sizeof(s.code), "%s", n.has_error ? n.error.code : "");
        }
    }
    sbx_framer_free(&fr);
    sbx_decoder_destroy(&dec);
    return s;
}

static void sha_hex(const void *p, size_t n, char hex[65])
{
    struct sha256_ctx ctx;
    uint8_t d[32];

    sha256_init(&ctx);
    sha256_update(&ctx, n, p);
    sha256_digest(&ctx, sizeof(d), d);
    sbx_hex(d, sizeof(d), hex);
}

static void count(void *arg, uint64_t n)
{
    *(uint64_t *)arg += n;
}

/* --- uploads --------------------------------------------------------------------------------- */

static int upload(struct fx *fx, bool no_hash, struct sbx_transfer_done *d, uint64_t *progress)
{
    struct sbx_upload_params p = { .path = "/g/f", .no_hash = no_hash };
    int fd = open(fx->path, O_RDONLY);
    int r = sbx_upload_fd(fx->c, &p, fd, fx->path, count, progress, d, &fx->err);

    close(fd);
    return r;
}

static void test_upload(void **state)
{
    struct fx *fx = *state;
    struct sbx_transfer_done d;
    uint64_t progress = 0;
    char hex[65];
    struct sent s;

    sha_hex(fx->data, sizeof(fx->data), hex);
    result(fx, -1);
    done(fx, hex, NULL);
    go(fx);
    assert_int_equal(upload(fx, false, &d, &progress), 0);
    assert_int_equal(d.stream, SID);
    assert_string_equal(d.sha256, hex);
    assert_int_equal(progress, sizeof(fx->data));
    s = sent(fx);
    assert_int_equal(s.bytes, sizeof(fx->data));
    assert_string_equal(s.note, "stream.end");
    assert_string_equal(s.code, "");
}

static void test_upload_digest_checks(void **state)
{
    struct fx *fx = *state;
    struct sbx_transfer_done d;
    uint64_t progress = 0;
    char other[65];

    sha_hex("other", 5, other);
    for (int i = 0; i < 3; i++) { /* requests 2, 3, 4 */
        struct sbx_stream_result r = { SID + 1 + i, false, 0, 0 };
        struct sbx_transfer_done t = { .stream = SID + 1 + i };
        sbx_pack_response_head(frame(fx), 2 + i);
        sbx_stream_result_pack(&fx->script.pk, &r);
        end(fx);
        snprintf(t.sha256, sizeof(t.sha256), "%s", i == 1 ? "" : other);
        sbx_transfer_done_pack(frame(fx), &t, NULL);
        end(fx);
    }
    go(fx);
    /* another digest */
    assert_int_equal(upload(fx, false, &d, &progress), -1);
    assert_string_equal(fx->err.code, SBX_E_INTERNAL);
    assert_non_null(strstr(fx->err.msg, other));
    /* none */
    assert_int_equal(upload(fx, false, &d, &progress), -1);
    assert_string_equal(fx->err.code, SBX_E_BAD_PARAM);
    assert_string_equal(fx->err.field, "sha256");
    /* not hashed: not checked */
    assert_int_equal(upload(fx, true, &d, &progress), 0);
}

static void test_upload_refused_reads_nothing(void **state)
{
    struct fx *fx = *state;
    struct sbx_upload_params p = { .path = "/g/dir" };
    struct sbx_transfer_done d;
    int fd = open(fx->path, O_RDONLY);

    refuse(fx, "EISDIR");
    go(fx);
    assert_int_equal(sbx_upload_fd(fx->c, &p, fd, NULL, NULL, NULL, &d, &fx->err), -1);
    assert_string_equal(fx->err.code, "EISDIR");
    assert_int_equal(d.stream, 0);
    assert_int_equal(lseek(fd, 0, SEEK_CUR), 0);
    close(fd);
}

static void test_upload_read_error_aborts(void **state)
{
    struct fx *fx = *state;
    struct sbx_upload_params p = { .path = "/g/f" };
    int fd = open("/tmp", O_RDONLY | O_DIRECTORY); /* read() fails with EISDIR */
    struct sent s;

    result(fx, -1);
    go(fx);
    assert_int_equal(sbx_upload_fd(fx->c, &p, fd, "the-dir", NULL, NULL, NULL, &fx->err), -1);
    assert_string_equal(fx->err.code, "EISDIR");
    assert_non_null(strstr(fx->err.msg, "read the-dir"));
    close(fd);
    s = sent(fx);
    assert_string_equal(s.note, "stream.end");
    assert_string_equal(s.code, "EISDIR"); /* the agent is told why */
}

static void test_upload_failure_from_done(void **state)
{
    struct fx *fx = *state;
    uint64_t progress = 0;

    result(fx, -1);
    done(fx, NULL, "ENOSPC");
    go(fx);
    assert_int_equal(upload(fx, false, NULL, &progress), -1);
    assert_string_equal(fx->err.code, "ENOSPC");
}

/* --- downloads ------------------------------------------------------------------------------- */

static void test_stream_to_fd(void **state)
{
    struct fx *fx = *state;
    struct sbx_stream_result sr;
    uint64_t progress = 0;
    uint8_t back[sizeof(fx->data)];
    uint32_t id;
    int fd = open(fx->path, O_RDWR | O_TRUNC);
    int r;

    result(fx, sizeof(fx->data));
    for (size_t off = 0; off < sizeof(fx->data); off += SBX_STREAM_CHUNK_MAX) {
        size_t n = sizeof(fx->data) - off;
        data(fx, fx->data + off, n < SBX_STREAM_CHUNK_MAX ? n : SBX_STREAM_CHUNK_MAX);
    }
    sbx_end_pack(frame(fx), SID, NULL, false);
    end(fx);
    go(fx);
    r = sbx_transfer_download(sbx_client_conn(fx->c), "/g/f", 0, -1, NULL, NULL, &id, &fx->err);
    assert_int_equal(sbx_stream_call(fx->c, r, id, true, &sr, &fx->err), 0);
    assert_int_equal(sr.size, sizeof(fx->data));
    assert_int_equal(sr.mode, 0640);
    assert_int_equal(sbx_stream_to_fd(fx->c, sr.stream, fd, count, &progress, &fx->err), 0);
    assert_int_equal(progress, sizeof(fx->data));
    assert_int_equal(pread(fd, back, sizeof(back), 0), (ssize_t)sizeof(back));
    assert_memory_equal(back, fx->data, sizeof(back));
    close(fd);
}

static void test_stream_write_error_cancels(void **state)
{
    struct fx *fx = *state;
    struct sbx_stream_result sr;
    uint32_t id;
    int r;

    result(fx, -1);
    data(fx, "abc", 3);
    go(fx);
    r = sbx_transfer_download_tree(sbx_client_conn(fx->c), "/g", NULL, NULL, NULL, &id, &fx->err);
    assert_int_equal(sbx_stream_call(fx->c, r, id, false, &sr, &fx->err), 0);
    assert_int_equal(sbx_stream_to_fd(fx->c, sr.stream, -1, NULL, NULL, &fx->err), -1);
    assert_string_equal(fx->err.code, "EBADF");
    assert_string_equal(sent(fx).note, "stream.cancel");
}

/* Start the agent and ask for a tree: its stream (SID) is open. */
static void tree_stream(struct fx *fx)
{
    struct sbx_stream_result sr;
    uint32_t id;
    int r;

    go(fx);
    r = sbx_transfer_download_tree(sbx_client_conn(fx->c), "/g", NULL, NULL, NULL, &id, &fx->err);
    assert_int_equal(sbx_stream_call(fx->c, r, id, false, &sr, &fx->err), 0);
    assert_int_equal(sr.stream, SID);
}

/* The agent sends "abc" and then ends (@cancel: cancels) its stream with an error: the reader
 * gets the data, then fails with that error. */
static void stream_fails(struct fx *fx, bool cancel)
{
    struct sbx_err e;
    const uint8_t *p;
    size_t n;

    sbx_err_set(&e, "EIO", "the disk is gone");
    result(fx, -1);
    data(fx, "abc", 3);
    if (cancel) {
        sbx_cancel_pack(frame(fx), SID, &e);
    } else {
        sbx_end_pack(frame(fx), SID, &e, false);
    }
    end(fx);
    fx->hangup = cancel;
    tree_stream(fx);
    assert_int_equal(sbx_stream_next(fx->c, SID, &p, &n, &fx->err), 1);
    assert_memory_equal(p, "abc", 3);
    assert_int_equal(sbx_stream_next(fx->c, SID, &p, &n, &fx->err), -1);
    assert_string_equal(fx->err.code, "EIO");
    assert_string_equal(fx->err.msg, "the disk is gone");
}

static void test_stream_end_error(void **state)
{
    stream_fails(*state, false);
}

/* The agent cancels its own stream (§8.5), with an error or without: the reader fails with it
 * at once (it waited for more, for ever, on a stream the core had forgotten; here the agent then
 * hangs up, and the reader saw the end of the connection instead). */
static void test_stream_cancelled_by_agent(void **state)
{
    stream_fails(*state, true);
}

static void test_stream_cancelled_by_agent_without_error(void **state)
{
    struct fx *fx = *state;
    const uint8_t *p;
    size_t n;

    result(fx, -1);
    sbx_cancel_pack(frame(fx), SID, NULL);
    end(fx);
    fx->hangup = true;
    tree_stream(fx);
    assert_int_equal(sbx_stream_next(fx->c, SID, &p, &n, &fx->err), -1);
    assert_string_equal(fx->err.code, SBX_E_CANCELLED);
}

/* Read @arg's fd to its end; returns how many bytes came. */
static void *drain(void *arg)
{
    uintptr_t n = 0;
    char buf[65536];
    ssize_t r;

    while ((r = read(*(int *)arg, buf, sizeof(buf))) > 0) {
        n += (uintptr_t)r;
    }
    return (void *)n;
}

static void test_write_all(void **state)
{
    static uint8_t big[4 << 20]; /* more than a pipe holds: EAGAIN, then a poll for room */
    pthread_t t;
    void *got;
    int p[2];

    (void)state;
    assert_int_equal(pipe2(p, O_CLOEXEC), 0);
    assert_int_equal(fcntl(p[1], F_SETFL, O_NONBLOCK), 0);
    assert_int_equal(pthread_create(&t, NULL, drain, &p[0]), 0);
    assert_int_equal(sbx_write_all(p[1], big, sizeof(big)), 0);
    close(p[1]);
    assert_int_equal(pthread_join(t, &got), 0);
    assert_int_equal((uintptr_t)got, sizeof(big));
    close(p[0]);
    /* A failed write is its -errno: nobody reads (SIGPIPE ignored) or not an fd. */
    (void)signal(SIGPIPE, SIG_IGN);
    assert_int_equal(pipe2(p, O_CLOEXEC), 0);
    close(p[0]);
    assert_int_equal(sbx_write_all(p[1], "x", 1), -EPIPE);
    close(p[1]);
    assert_int_equal(sbx_write_all(-1, "x", 1), -EBADF);
    assert_int_equal(sbx_write_all(-1, "", 0), 0); /* nothing to write: no write at all */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_upload, setup, teardown),
        cmocka_unit_test_setup_teardown(test_upload_digest_checks, setup, teardown),
        cmocka_unit_test_setup_teardown(test_upload_refused_reads_nothing, setup, teardown),
        cmocka_unit_test_setup_teardown(test_upload_read_error_aborts, setup, teardown),
        cmocka_unit_test_setup_teardown(test_upload_failure_from_done, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stream_to_fd, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stream_write_error_cancels, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stream_end_error, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stream_cancelled_by_agent, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stream_cancelled_by_agent_without_error, setup,
                                        teardown),
        cmocka_unit_test(test_write_all),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
