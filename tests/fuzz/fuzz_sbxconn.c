/*
 * libFuzzer target for libsbx's sans-I/O connection core (client/include/sbx/conn.h) fed what an
 * agent sends: a hostile or broken agent must not crash, leak or confuse a host program.
 *
 * Each run makes a connection, sends a hello and, pipelined behind it, a realistic set of
 * requests (ids 1..N in the order of send_requests below: proc.spawn with stdin,
 * transfer.download, pack.create, net.connect, fs.stat, transfer.upload, repl.eval streaming,
 * proc.attach, fs.walk, proc.wait, fs.read, ping, fs.lstat, fs.fstat, transfer.upload_tree,
 * transfer.download_tree, fs.glob, and "x.other", a method libsbx has no typed call for), so
 * responses and stream frames of the input map onto pending requests and streams. Then the input
 * is fed: byte 0 picks the read size (0: all at once), whether reads go through sbx_conn_feed
 * or sbx_conn_feed_space/_commit, and whether hello asks recv_window (64 KiB, bit 2); the rest
 * are the agent's bytes (frames as the agent writes them). Every event is checked well-formed
 * (strings NUL-terminated within their buffers, lengths and records consistent with the kind) and
 * drives the host's calls a real program makes: consumed / grant / cancel on out streams, write (or
 * write_direct, whose header must frame the bytes as data of that stream) / end (or end with an
 * error) on in streams as credit comes, a further request after hello succeeded, output drained. A
 * connection that failed stays failed (the next sbx_conn_next gives the same error). At the end
 * sbx_conn_eof, then events until -1 (bounded), then sbx_conn_free (LeakSanitizer sees the rest).
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "sbx/conn.h"
#include "sbx/msg.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

/* Events one run may take after EOF: a failure per request and a cancel per stream, at most. */
#define EOF_EVENTS_MAX (SBX_CONN_PENDING_MAX + SBX_CONN_STREAMS_MAX + 16)

static bool str_ok(const char *s, size_t cap)
{
    return memchr(s, '\0', cap) != NULL;
}

static void check_err(const struct sbx_err *e)
{
    CHECK(str_ok(e->code, sizeof(e->code)) && str_ok(e->msg, sizeof(e->msg)) &&
          str_ok(e->stage, sizeof(e->stage)) && str_ok(e->field, sizeof(e->field)) &&
          str_ok(e->limit, sizeof(e->limit)) && str_ok(e->path, sizeof(e->path)));
}

/* Read every byte of @p (so ASan checks the whole range) and return a summary of them. */
static unsigned touch(const void *p, size_t n)
{
    const volatile uint8_t *b = p;
    unsigned s = 0;

    for (size_t i = 0; i < n; i++) {
        s += b[i];
    }
    return s;
}

/* The requests of a run, sent behind the hello (capabilities are not checked before it ends). */
static void send_requests(struct sbx_conn *c)
{
    static const char *const argv[] = { "/bin/cat", NULL };
    static const char *const exts[] = { "c" };
    struct sbx_spawn_params sp = { .argv = argv, .stdin_mode = SBX_STDIO_PIPE };
    struct sbx_pack_params pp = { .path = "/app", .format = "tar.gz" };
    struct sbx_net_connect_params np = { .port = 8080 };
    struct sbx_upload_params up = { .path = "/tmp/up", .has_size = true, .size = 3 };
    struct sbx_attach_params ap = { .id = 1, .stdin = true };
    struct sbx_walk_params wp = { .path = "/src", .exts = exts, .nexts = 1 };
    struct sbx_glob_params gp = { .pattern = "**/*.c" };
    struct sbx_err err;
    uint64_t off = 0;
    msgpack_packer *pk;

    /* Each may be refused locally; the run goes on with what was sent. */
    (void)sbx_proc_spawn(c, &sp, NULL, NULL, &err);                                     /* 2 */
    (void)sbx_transfer_download(c, "/etc/hostname", 0, -1, NULL, NULL, NULL, &err);     /* 3 */
    (void)sbx_pack_create(c, &pp, NULL, NULL, &err);                                    /* 4 */
    (void)sbx_net_connect(c, &np, NULL, NULL, &err);                                    /* 5 */
    (void)sbx_fs_stat(c, "/etc", NULL, NULL, NULL, &err);                               /* 6 */
    (void)sbx_transfer_upload(c, &up, NULL, NULL, &err);                                /* 7 */
    (void)sbx_repl_eval(c, 1, "1+1", 3, 0, true, NULL, NULL, &err);                     /* 8 */
    (void)sbx_proc_attach(c, &ap, NULL, NULL, &err);                                    /* 9 */
    (void)sbx_fs_walk(c, &wp, NULL, NULL, &err);                                        /* 10 */
    (void)sbx_proc_wait(c, 1, 0, NULL, NULL, &err);                                     /* 11 */
    (void)sbx_fs_read(c, 1, 16, &off, NULL, NULL, &err);                                /* 12 */
    (void)sbx_ping(c, NULL, NULL, &err);                                                /* 13 */
    (void)sbx_fs_lstat(c, "/etc/localtime", NULL, NULL, NULL, &err);                    /* 14 */
    (void)sbx_fs_fstat(c, 1, NULL, NULL, &err);                                         /* 15 */
    (void)sbx_transfer_upload_tree(c, "/tmp/t", "gzip", false, NULL, NULL, NULL, &err); /* 16 */
    (void)sbx_transfer_download_tree(c, "/tmp/t", NULL, NULL, NULL, NULL, &err);        /* 17 */
    (void)sbx_fs_glob(c, &gp, NULL, NULL, &err);                                        /* 18 */
    if ((pk = sbx_conn_begin(c, "x.other", NULL, NULL, &err)) != NULL) {                /* 19 */
        (void)msgpack_pack_map(pk, 0);
        (void)sbx_conn_commit(c, &err);
    }
}

/* Write what waits to the "transport": all of it, in one or two steps. */
static void drain(struct sbx_conn *c, bool split)
{
    struct iovec iov[8];
    size_t n;
    const uint8_t *p;
    int k;

    for (int round = 0; round < 64; round++) {
        k = sbx_conn_out_iov(c, iov, 8);
        CHECK(k >= 0 && k <= 8);
        for (int i = 0; i < k; i++) {
            CHECK(iov[i].iov_base != NULL && iov[i].iov_len > 0);
            (void)touch(iov[i].iov_base, iov[i].iov_len);
        }
        p = sbx_conn_out(c, &n);
        if (p == NULL) {
            CHECK(n == 0 && k == 0 && sbx_conn_out_bytes(c) == 0);
            return;
        }
        CHECK(n > 0 && sbx_conn_out_bytes(c) >= n);
        sbx_conn_out_done(c, split && n > 1 ? n / 2 : n);
    }
}

/* An upload's bytes and end, as a host sends them (@how from the run's state): framed by the
 * connection, or (bit 0) by the host behind the header sbx_conn_write_direct gives, which must
 * make them a data message of that stream; ended normally, or (bit 1) aborted with an error. */
static void upload(struct sbx_conn *c, uint32_t sid, unsigned how)
{
    static const uint8_t body[3] = { 'a', 'b', 'c' };
    uint8_t frame[SBX_STREAM_DATA_HDR_MAX + sizeof(body)];
    struct sbx_decoder d;
    struct sbx_msg m;
    struct sbx_err err, abort_err;
    int n = (how & 1) != 0 ? sbx_conn_write_direct(c, sid, sizeof(body), frame, &err) : 0;

    if (n > 0) {
        uint32_t flen = (uint32_t)frame[0] << 24 | (uint32_t)frame[1] << 16 |
                        (uint32_t)frame[2] << 8 | frame[3];
        CHECK(n > (int)SBX_FRAME_HDR && n <= (int)SBX_STREAM_DATA_HDR_MAX &&
              flen == (uint32_t)n - SBX_FRAME_HDR + sizeof(body));
        memcpy(frame + n, body, sizeof(body));
        if (sbx_decoder_init(&d) == 0) {
            CHECK(sbx_msg_decode(&d, frame + SBX_FRAME_HDR, flen, &m, &err) == 0 &&
                  m.kind == SBX_MSG_DATA && m.stream == sid && m.data_len == sizeof(body) &&
                  memcmp(m.data, body, sizeof(body)) == 0);
            sbx_decoder_destroy(&d);
        }
    } else if (n == 0) {
        (void)sbx_conn_write(c, sid, body, sizeof(body), &err);
    }
    if ((how & 2) != 0) {
        (void)sbx_err_set(&abort_err, SBX_E_CANCELLED, "the host gave up");
        (void)sbx_conn_end(c, sid, &abort_err, &err);
    } else {
        (void)sbx_conn_end(c, sid, NULL, &err);
    }
}

/* Check @ev and make the calls a host makes for it. */
static void handle(struct sbx_conn *c, const struct sbx_event *ev, unsigned *state)
{
    struct sbx_err err;
    unsigned s = 0;

    CHECK(ev->kind >= SBX_EV_RESPONSE && ev->kind <= SBX_EV_NOTIFY);
    if (ev->method != NULL) {
        s += (unsigned)strlen(ev->method);
    }
    if (ev->error != NULL) {
        check_err(ev->error);
    }
    if (ev->frame != NULL) {
        CHECK(!ev->local);
        s += touch(ev->frame, ev->frame_len);
    }
    switch (ev->kind) {
    case SBX_EV_RESPONSE:
        CHECK(ev->error == NULL || ev->error->code[0] != '\0');
        if (ev->error == NULL && !ev->unknown) {
            switch (ev->rec) {
            case SBX_REC_HELLO:
                CHECK(ev->call == SBX_CALL_HELLO);
                s += touch(ev->r.hello.agent, ev->r.hello.agent_len);
                s += touch(ev->r.hello.agent_version, ev->r.hello.agent_version_len);
                CHECK(sbx_conn_peer(c) != NULL);
                CHECK(str_ok(sbx_conn_peer(c)->agent, sizeof(sbx_conn_peer(c)->agent)) &&
                      str_ok(sbx_conn_peer(c)->agent_version,
                             sizeof(sbx_conn_peer(c)->agent_version)));
                (void)sbx_conn_has_cap(c, "process");
                /* A request after hello: capability-checked now. */
                (void)sbx_fs_stat(c, "/", NULL, NULL, NULL, &err);
                break;
            case SBX_REC_SPAWN:
                CHECK(ev->call == SBX_CALL_PROC_SPAWN);
                if (ev->r.spawn.in != 0) {
                    (void)sbx_conn_write(c, ev->r.spawn.in, "hello\n", 6, &err);
                    if (*state & 1) {
                        (void)sbx_conn_end(c, ev->r.spawn.in, NULL, &err);
                    }
                }
                break;
            case SBX_REC_FILEINFO:
                CHECK(str_ok(ev->r.fileinfo.type_buf, sizeof(ev->r.fileinfo.type_buf)));
                if (ev->r.fileinfo.target != NULL) {
                    s += touch(ev->r.fileinfo.target, ev->r.fileinfo.target_len);
                }
                break;
            case SBX_REC_STREAM:
                if ((ev->call == SBX_CALL_TRANSFER_UPLOAD ||
                     ev->call == SBX_CALL_TRANSFER_UPLOAD_TREE) &&
                    ev->r.stream.stream != 0) {
                    upload(c, ev->r.stream.stream, *state >> 2);
                }
                break;
            case SBX_REC_EXIT:
                CHECK(ev->r.exit.exited ? ev->r.exit.code >= 0 && ev->r.exit.code <= 255
                                        : ev->r.exit.signo >= 1 && ev->r.exit.signo <= 64);
                break;
            default:
                break;
            }
        }
        break;
    case SBX_EV_DATA:
        CHECK(ev->len > 0 && ev->data != NULL);
        s += touch(ev->data, ev->len);
        /* Consumed at once, half, or the stream cancelled: picked by the data. */
        switch ((s + *state) % 5) {
        case 0:
            (void)sbx_conn_cancel(c, ev->stream, &err);
            break;
        case 1:
            (void)sbx_conn_consumed(c, ev->stream, ev->len / 2, &err);
            break;
        case 2:
            (void)sbx_conn_grant(c, ev->stream, (uint32_t)ev->len * 7u, &err);
            /* fall through */
        default:
            (void)sbx_conn_consumed(c, ev->stream, ev->len, &err);
            break;
        }
        break;
    case SBX_EV_END:
    case SBX_EV_CANCEL:
        CHECK(!sbx_conn_stream_live(c, ev->stream) || ev->kind == SBX_EV_END);
        break;
    case SBX_EV_CREDIT:
        CHECK(sbx_conn_credit(c, ev->stream) == ev->credit);
        CHECK(sbx_conn_queued(c, ev->stream) == ev->queued);
        if (*state & 2) {
            (void)sbx_conn_write(c, ev->stream, "more", 4, &err);
        }
        break;
    case SBX_EV_EXIT:
        CHECK(ev->rec == SBX_REC_EXIT);
        CHECK(ev->r.exit.exited ? ev->r.exit.code >= 0 && ev->r.exit.code <= 255
                                : ev->r.exit.signo >= 1 && ev->r.exit.signo <= 64);
        break;
    case SBX_EV_TRANSFER_DONE:
        CHECK(ev->done != NULL && str_ok(ev->done->sha256, sizeof(ev->done->sha256)));
        if (ev->done->failed) {
            check_err(&ev->done->error);
        }
        break;
    case SBX_EV_ERROR:
        CHECK(ev->error != NULL);
        break;
    case SBX_EV_NOTIFY:
        CHECK(ev->method != NULL);
        break;
    }
    *state = *state * 31u + s;
}

/* Take events until 0 or -1. Returns -1 once the connection is unusable. */
static int pump(struct sbx_conn *c, unsigned *state, bool split)
{
    struct sbx_event ev;
    struct sbx_err err;
    int r;

    for (;;) {
        memset(&ev, 0xa5, sizeof(ev)); /* nothing left over from the last event counts */
        sbx_err_clear(&err);
        r = sbx_conn_next(c, &ev, &err);
        CHECK(r >= -1 && r <= 1);
        if (r < 0) {
            struct sbx_err again;
            check_err(&err);
            CHECK(err.code[0] != '\0' && sbx_conn_failed(c) != NULL);
            CHECK(sbx_conn_next(c, &ev, &again) == -1 && strcmp(again.code, err.code) == 0);
            drain(c, split);
            return -1;
        }
        if (r == 0) {
            drain(c, split);
            return 0;
        }
        handle(c, &ev, state);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct sbx_conn *c;
    struct sbx_hello h = { .version = 1 };
    struct sbx_err err;
    struct sbx_event ev;
    size_t step, off = 1;
    bool zero_copy, split;
    unsigned state = 0;
    int r = 0;

    if (size < 1) {
        return 0;
    }
    step = data[0] == 0 ? size : data[0];
    zero_copy = (data[0] & 1) != 0;
    split = (data[0] & 2) != 0;
    state = data[0];
    h.recv_window = (data[0] & 4) != 0 ? SBX_RECV_WINDOW_MIN : 0; /* §6.2 */
    c = sbx_conn_new(&err);
    if (c == NULL) {
        return 0;
    }
    if (sbx_conn_hello(c, &h, NULL, NULL, &err) == 0) { /* 1 */
        send_requests(c);
    }
    drain(c, split);
    while (off < size && r == 0) {
        size_t chunk = size - off < step ? size - off : step;
        if (zero_copy) {
            size_t room = 0;
            uint8_t *p = sbx_conn_feed_space(c, &room);
            if (p == NULL) {
                break;
            }
            CHECK(room > 0 && room <= SBX_CONN_FEED_MAX);
            chunk = chunk < room ? chunk : room;
            memcpy(p, data + off, chunk);
            sbx_conn_feed_commit(c, chunk);
        } else if (sbx_conn_feed(c, data + off, chunk, &err) < 0) {
            check_err(&err);
            break;
        }
        off += chunk;
        r = pump(c, &state, split);
    }
    sbx_conn_eof(c);
    for (unsigned i = 0;; i++) {
        CHECK(i < EOF_EVENTS_MAX);
        memset(&ev, 0xa5, sizeof(ev));
        r = sbx_conn_next(c, &ev, &err);
        if (r < 0) {
            check_err(&err);
            break;
        }
        CHECK(r == 1); /* after EOF nothing more is awaited */
        handle(c, &ev, &state);
    }
    drain(c, split);
    sbx_conn_free(c);
    return 0;
}
