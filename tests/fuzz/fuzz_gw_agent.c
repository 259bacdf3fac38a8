/*
 * libFuzzer target for what a hostile agent sends a gateway session: responses with results,
 * stream data and ends, credit, proc.exit, transfer.done, errors, through libsbx's sans-I/O core
 * (client/lib/conn.c) into session.c's relays and every method's completion (m_*.c, walk.c): the
 * success paths that turn agent records into the SDK's JSON. The workload inside the VM can
 * replace the agent, so none of these bytes can be trusted.
 *
 * session.c is compiled in with its WebSocket and pipe stubbed (fuzz_gw_session.h, shared with
 * gw_jsonrpc); the agent has said hello. The input is a flags byte, then operations:
 *
 *   byte 0    bit 7: the hello announced small limits (chunk_max 64, stream_window 256,
 *             max_streams 8), so writes split and streams run out of credit (an agent that
 *             knows no recv_window); else it echoes the gateway's recv_window (64 KiB)
 *             bits 0-6: the size of each read of agent bytes (0: as many as the connection
 *             takes)
 *   then, each operation a byte b (b % 8) and its arguments:
 *     0 k       the client calls fz_calls[k % FZ_NCALLS] (one valid SDK call per method of the
 *               gateway's table, as gw_jsonrpc's seeds shape them; requests get ids 1, 2, ...)
 *     1 hi lo   the next (hi << 8 | lo) bytes are agent bytes (frames), fed in reads of the
 *               current size; libsbx numbers its requests 1 (hello), 2, 3, ... so an input can
 *               answer them
 *     2 n       the read size becomes n (0: whole)
 *     3 k       the client cancels server stream 2^40 + k (the gateway's k-th stream id)
 *     4         the WebSocket's queue goes over GW_WS_HIGH, or back under it (with on_drain)
 *     5         the agent's pipe ends (EOF)
 *     6 k       the client calls abort {abortId: k}
 *     7         nothing (the loop runs)
 * At the end of the input the client closes the WebSocket.
 *
 * Checks: no crash, leak or undefined behaviour (ASan, UBSan); everything the session sends is
 * one JSON-RPC message jansson parses (so its strings are valid UTF-8): an answer to a call the
 * client made, at most once, with a result that is exactly one of {ok} or {error} (an error
 * object with a constructorName and a message, never the gateway's own ENOMEM: nothing runs out
 * of memory here, so its "out of memory" means a value jansson refused; the agent's ENOMEM is
 * passed on), or a notification the SDK knows; the server streams
 * it announces go start, enqueue*, end|error, and nothing follows the client's cancel; no
 * message the session built was dropped as unbuildable; every frame written to the agent
 * decodes; the session frees itself once its WebSocket closes.
 * FZ_GW_TRACE=1 in the environment logs every message in and out (to check seeds by hand).
 */
#define gw_log fz_gw_log
#include <stdarg.h>

#include "fuzz_gw_session.h"

/* A call of the SDK: a request when @method is a method of the table, a $sandbox.stream.*
 * notification otherwise. Params as the SDK 0.13 sends them. The order is the seeds': keep it
 * in step with CALLS in make_corpus_gw_agent.py. */
struct fz_call {
    const char *method;
    const char *params;
    bool notify;
};

static const struct fz_call fz_calls[] = {
    { "spawn",
      "{\"command\":\"ls\",\"args\":[\"-l\",\"/\"],\"env\":{\"A\":\"1\"},\"clearEnv\":false,"
      "\"cwd\":\"/tmp\",\"stdout\":\"piped\",\"stderr\":\"piped\",\"stdinStreamId\":null}",
      false },
    { "spawn", "{\"command\":\"cat\",\"stdinStreamId\":7}", false },
    { "processWait", "{\"pid\":1}", false },
    { "processKill", "{\"pid\":1,\"signal\":\"SIGKILL\"}", false },
    { "spawnDeno",
      "{\"entrypoint\":\"main.ts\",\"scriptArgs\":[\"a\"],\"watch\":[\"src\"],\"stdout\":"
      "\"piped\",\"stderr\":\"piped\"}",
      false },
    { "spawnDeno", "{\"code\":\"console.log(1)\",\"extension\":\"ts\"}", false },
    { "denoHttpWait", "{\"pid\":1}", false },
    { "spawnDenoRepl",
      "{\"env\":{\"X\":\"y\"},\"clearEnv\":false,\"cwd\":\"/\",\"scriptArgs\":[],\"stdout\":"
      "\"piped\",\"stderr\":\"piped\",\"stdinStreamId\":7}",
      false },
    { "denoReplEval", "{\"pid\":1,\"code\":\"1+1\"}", false },
    { "denoReplCall", "{\"pid\":1,\"fn\":\"(a)=>a\",\"args\":[1,\"x\"]}", false },
    { "denoReplClose", "{\"pid\":1}", false },
    { "envGet", "{\"key\":\"PATH\"}", false },
    { "envSet", "{\"key\":\"A\",\"value\":\"b\"}", false },
    { "envDelete", "{\"key\":\"A\"}", false },
    { "envToObject", "{}", false },
    { "abort", "{\"abortId\":0}", false },
    { "download", "{\"path\":\"/etc/hostname\"}", false },
    { "fetch",
      "{\"url\":\"http://example.com/x\",\"method\":\"GET\",\"headers\":[],\"redirect\":"
      "\"follow\",\"abortId\":1}",
      false },
    { "exposeHttp", "{\"domain\":\"a\",\"port\":8000}", false },
    { "vscode", "{}", false },
    { "readFile", "{\"path\":\"/etc/hostname\",\"abortId\":0}", false },
    { "readTextFile", "{\"path\":\"/etc/hostname\"}", false },
    { "writeFile",
      "{\"path\":\"/tmp/a\",\"content\":\"aGVsbG8=\",\"options\":{\"create\":true,\"mode\":420},"
      "\"abortId\":0}",
      false },
    { "writeFile", "{\"path\":\"/tmp/z\",\"contentStreamId\":7,\"abortId\":2}", false },
    { "writeTextFile", "{\"path\":\"/tmp/b\",\"content\":\"hello\",\"options\":{\"append\":true}}",
      false },
    { "readDir", "{\"path\":\"/\"}", false },
    { "remove", "{\"path\":\"/tmp/a\",\"options\":{\"recursive\":true}}", false },
    { "mkdir", "{\"path\":\"/tmp/d/e\",\"options\":{\"recursive\":true,\"mode\":493}}", false },
    { "rename", "{\"oldPath\":\"/tmp/a\",\"newPath\":\"/tmp/c\"}", false },
    { "stat", "{\"path\":\"/\"}", false },
    { "lstat", "{\"path\":\"/bin\"}", false },
    { "chmod", "{\"path\":\"/tmp/a\",\"mode\":384}", false },
    { "chown", "{\"path\":\"/tmp/a\",\"uid\":1000,\"gid\":null}", false },
    { "copyFile", "{\"fromPath\":\"/etc/hosts\",\"toPath\":\"/tmp/h\"}", false },
    { "link", "{\"target\":\"/tmp/a\",\"path\":\"/tmp/l\"}", false },
    { "symlink", "{\"target\":\"/tmp/a\",\"path\":\"/tmp/s\",\"options\":{\"type\":\"file\"}}",
      false },
    { "readLink", "{\"path\":\"/tmp/s\"}", false },
    { "realPath", "{\"path\":\"/tmp/../tmp\"}", false },
    { "makeTempDir", "{\"options\":{\"dir\":\"/tmp\",\"prefix\":\"p\",\"suffix\":\"s\"}}", false },
    { "makeTempFile", "{\"options\":{\"prefix\":\"x\"}}", false },
    { "truncate", "{\"name\":\"/tmp/a\",\"length\":3}", false },
    { "umask", "{\"mask\":18}", false },
    { "utime",
      "{\"path\":\"/tmp/a\",\"atime\":\"2026-01-02T03:04:05.678Z\",\"mtime\":"
      "\"2026-01-02T03:04:05Z\"}",
      false },
    { "walk", "{\"path\":\"/src\",\"maxDepth\":3}", false },
    { "walk",
      "{\"path\":\"/src/\",\"followSymlinks\":true,\"includeSymlinks\":true,\"exts\":[\"ts\"],"
      "\"match\":[{\"source\":\"^/src\",\"flags\":\"i\"}],\"skip\":[{\"source\":"
      "\"node_modules\",\"flags\":\"\"}]}",
      false },
    { "expandGlob",
      "{\"glob\":\"/src/**/*.{ts,js}\",\"root\":\"/\",\"exclude\":[\"**/x\"],\"includeDirs\":"
      "true}",
      false },
    { "expandGlob", "{\"glob\":\"/etc/hosts\"}", false },
    { "open",
      "{\"path\":\"/tmp/a\",\"options\":{\"read\":true,\"write\":true,\"create\":true,"
      "\"mode\":420}}",
      false },
    { "create", "{\"path\":\"/tmp/n\"}", false },
    { "fileClose", "{\"fileHandleId\":1}", false },
    { "fileRead", "{\"fileHandleId\":1,\"length\":16}", false },
    { "fileWrite", "{\"fileHandleId\":1,\"data\":\"aGVsbG8gd29ybGQ=\"}", false },
    { "fileSeek", "{\"fileHandleId\":1,\"offset\":-2,\"whence\":2}", false },
    { "fileStat", "{\"fileHandleId\":1}", false },
    { "fileSync", "{\"fileHandleId\":1}", false },
    { "fileSyncData", "{\"fileHandleId\":1}", false },
    { "fileTruncate", "{\"fileHandleId\":1,\"len\":0}", false },
    { "fileUtime",
      "{\"fileHandleId\":1,\"atime\":\"1970-01-01T00:00:00Z\",\"mtime\":"
      "\"2026-01-02T03:04:05Z\"}",
      false },
    { "fileLock", "{\"fileHandleId\":1,\"exclusive\":true}", false },
    { "fileUnlock", "{\"fileHandleId\":1}", false },
    { "$sandbox.stream.start", "{\"streamId\":7}", true },
    { "$sandbox.stream.enqueue", "{\"streamId\":7,\"data\":\"aGVsbG8=\"}", true },
    { "$sandbox.stream.end", "{\"streamId\":7}", true },
    { "$sandbox.stream.error", "{\"streamId\":7,\"error\":{\"name\":\"Error\",\"message\":\"x\"}}",
      true },
};
#define FZ_NCALLS (sizeof(fz_calls) / sizeof(fz_calls[0]))

/* Calls one input makes at most (each is answered at most once: a count per id). */
#define FZ_IDS_MAX 4096
/* Server stream ids followed: 2^40 .. 2^40 + FZ_STREAMS_MAX - 1 (gw_stream_id counts from the
 * first; fz_gw.next_stream is reset per input). */
#define FZ_STREAM_BASE (1ull << 40)
#define FZ_STREAMS_MAX 4096

enum fz_stream_state { FZ_ST_NONE = 0, FZ_ST_OPEN, FZ_ST_DONE, FZ_ST_CANCELLED };

static unsigned fz_nids;                   /* ids given to calls so far */
static uint8_t fz_answers[FZ_IDS_MAX + 1]; /* answers per id */
static uint8_t fz_streams[FZ_STREAMS_MAX]; /* enum fz_stream_state per server stream */
static bool fz_trace;
static char *fz_hello_small;
static size_t fz_hello_small_len;

/* session.c's log lines: a message the session could not build (a member jansson refused, such
 * as invalid UTF-8 from the agent) is a call that never gets its answer. */
void fz_gw_log(const char *fmt, ...)
{
    char line[2048];
    va_list ap;

    va_start(ap, fmt);
    (void)vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    if (strstr(fmt, "out of memory") != NULL) {
        fprintf(stderr, "fuzz: %s\n", line);
        fz_fail("the session dropped a message it could not build");
    }
    if (fz_trace) {
        fprintf(stderr, "sbx-gateway: %s\n", line);
    }
}

static bool fz_is(json_t *v, const char *s)
{
    return json_is_string(v) && strcmp(json_string_value(v), s) == 0;
}

/* An answer: {id, result: {ok} | {error: ErrorObject}}, to a call made, once. */
static void fz_check_answer(json_t *msg, json_t *id)
{
    json_t *res = json_object_get(msg, "result"), *err;
    json_int_t n;

    if (json_object_get(msg, "method") != NULL || json_object_get(msg, "params") != NULL) {
        fz_fail("an answer carries a method or params");
    }
    if ((res != NULL) == (json_object_get(msg, "error") != NULL)) {
        fz_fail("an answer needs exactly one of result and error");
    }
    if (!json_is_integer(id) || (n = json_integer_value(id)) < 1 || n > (json_int_t)fz_nids) {
        fz_fail("an answer to an id the client never sent");
    }
    if (fz_answers[n]++ > 0) {
        fz_fail("a call was answered twice");
    }
    /* The SDK reads {ok: value} or {error: ErrorObject} (docs/GATEWAY.md). */
    if (res == NULL) {
        fz_fail("a JSON-RPC error answer (the SDK hangs on those)");
    }
    if (!json_is_object(res) || json_object_size(res) != 1 ||
        (json_object_get(res, "ok") == NULL && json_object_get(res, "error") == NULL)) {
        fz_fail("a result that is not {ok} or {error}");
    }
    err = json_object_get(res, "error");
    if (err != NULL) {
        if (!json_is_object(err) || !json_is_string(json_object_get(err, "constructorName")) ||
            !json_is_string(json_object_get(err, "message"))) {
            fz_fail("an error without constructorName and message");
        }
        /* The gateway's own ENOMEM says "out of memory"; the agent may send ENOMEM of its own
         * ("Cannot allocate memory (os error 12)"), which is passed on as it is. */
        if (fz_is(json_object_get(err, "code"), "ENOMEM") &&
            strstr(json_string_value(json_object_get(err, "message")), "out of memory") != NULL) {
            fz_fail("an ENOMEM answer with memory to spare (a value jansson refused?)");
        }
    }
}

/* A $sandbox.stream.* notification: server streams (ids from 2^40) go start, enqueue*, end|error;
 * the gateway cancels only the client's own streams. */
static void fz_check_stream(const char *method, json_t *params)
{
    json_t *sid = json_object_get(params, "streamId");
    json_int_t id;
    uint8_t *st;

    if (!json_is_integer(sid) || (id = json_integer_value(sid)) < 0) {
        fz_fail("a stream notification without a streamId");
    }
    if ((uint64_t)id < FZ_STREAM_BASE) {
        if (strcmp(method, "$sandbox.stream.cancel") != 0) {
            fz_fail("a server stream notification for a client stream id");
        }
        return;
    }
    if ((uint64_t)id - FZ_STREAM_BASE >= FZ_STREAMS_MAX) {
        return; /* beyond what an input reaches */
    }
    st = &fz_streams[(uint64_t)id - FZ_STREAM_BASE];
    if (*st == FZ_ST_CANCELLED) {
        fz_fail("a message on a server stream the client cancelled");
    }
    if (strcmp(method, "$sandbox.stream.start") == 0) {
        if (*st != FZ_ST_NONE) {
            fz_fail("a server stream started twice");
        }
        *st = FZ_ST_OPEN;
    } else if (strcmp(method, "$sandbox.stream.enqueue") == 0) {
        if (*st != FZ_ST_OPEN) {
            fz_fail("data on a server stream not started or already ended");
        }
        if (!json_is_string(json_object_get(params, "data"))) {
            fz_fail("stream data that is not a string");
        }
    } else if (strcmp(method, "$sandbox.stream.end") == 0 ||
               strcmp(method, "$sandbox.stream.error") == 0) {
        if (*st != FZ_ST_OPEN) {
            fz_fail("a server stream ended twice, or before it started");
        }
        *st = FZ_ST_DONE;
    } else {
        fz_fail("the gateway cancelled a stream it produces itself");
    }
}

static void fz_ws_sent(const char *data, size_t len)
{
    json_error_t jerr;
    json_t *v, *id, *method, *params;

    if (fz_trace) {
        fprintf(stderr, "> %.*s\n", (int)(len < 400 ? len : 400), data);
    }
    /* jansson refuses invalid UTF-8 in strings (NUL is a character JSON.parse takes). */
    v = json_loadb(data, len, JSON_ALLOW_NUL, &jerr);
    if (v == NULL) {
        fprintf(stderr, "fuzz: %s: %.200s\n", jerr.text, data);
        fz_fail("the gateway sent a message that is not JSON (or not UTF-8)");
    }
    if (!json_is_object(v) || !fz_is(json_object_get(v, "jsonrpc"), "2.0")) {
        fz_fail("the gateway sent something that is not a JSON-RPC 2.0 object");
    }
    id = json_object_get(v, "id");
    method = json_object_get(v, "method");
    params = json_object_get(v, "params");
    if (id != NULL) {
        fz_check_answer(v, id);
    } else {
        if (!json_is_string(method) || !json_is_object(params) ||
            json_object_get(v, "result") != NULL || json_object_get(v, "error") != NULL) {
            fz_fail("a notification needs a method and params, and nothing of an answer");
        }
        if (strncmp(json_string_value(method), "$sandbox.stream.", 16) == 0) {
            fz_check_stream(json_string_value(method), params);
        } else if (strcmp(json_string_value(method), "$sandbox.deno.watcher.restart") != 0 ||
                   !json_is_string(json_object_get(params, "watcherId"))) {
            fz_fail("a notification the SDK does not know");
        }
    }
    json_decref(v);
}

/* The client sends call @c (a request with the next id). */
static void fz_client_calls(const struct fz_call *c)
{
    char msg[1024];
    int n;

    if (c->notify) {
        n = snprintf(msg, sizeof(msg), "{\"jsonrpc\":\"2.0\",\"method\":\"%s\",\"params\":%s}",
                     c->method, c->params);
    } else {
        if (fz_nids >= FZ_IDS_MAX) {
            return;
        }
        n = snprintf(msg, sizeof(msg),
                     "{\"jsonrpc\":\"2.0\",\"id\":%u,\"method\":\"%s\",\"params\":%s}", ++fz_nids,
                     c->method, c->params);
    }
    if (n < 0 || (size_t)n >= sizeof(msg)) {
        abort();
    }
    if (fz_trace) {
        fprintf(stderr, "< %s\n", msg);
    }
    fz_ws_message(msg, (size_t)n);
}

static void fz_client_cancels(uint64_t stream)
{
    char msg[160];
    int n = snprintf(msg, sizeof(msg),
                     "{\"jsonrpc\":\"2.0\",\"method\":\"$sandbox.stream.cancel\",\"params\":"
                     "{\"streamId\":%llu,\"reason\":null}}",
                     (unsigned long long)stream);

    if (stream - FZ_STREAM_BASE < FZ_STREAMS_MAX &&
        fz_streams[stream - FZ_STREAM_BASE] == FZ_ST_OPEN) {
        fz_streams[stream - FZ_STREAM_BASE] = FZ_ST_CANCELLED;
    }
    fz_ws_message(msg, (size_t)n);
}

static void fz_client_aborts(unsigned abort_id)
{
    char msg[160];
    int n;

    if (fz_nids >= FZ_IDS_MAX) {
        return;
    }
    n = snprintf(msg, sizeof(msg),
                 "{\"jsonrpc\":\"2.0\",\"id\":%u,\"method\":\"abort\",\"params\":{\"abortId\":%u}}",
                 ++fz_nids, abort_id);
    fz_ws_message(msg, (size_t)n);
}

static void fz_init_agent(void)
{
    struct sbx_limits lim = { 0 };

    fz_init();
    fz_trace = getenv("FZ_GW_TRACE") != NULL;
    lim.frame_max = SBX_FRAME_MAX;
    lim.chunk_max = 64;
    lim.stream_window = 256;
    lim.max_streams = 8;
    lim.max_procs = 1024;
    lim.max_conns = 64;
    fz_hello_small = fz_hello_make(&lim, 0, &fz_hello_small_len);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const uint8_t *p = data, *end = data + size;
    struct gw_session *s;
    size_t step;

    if (fz_sb == NULL) {
        fz_init_agent();
    }
    if (size == 0 || size > (1u << 20)) {
        return 0;
    }
    fz_gw.next_stream = FZ_STREAM_BASE;
    fz_nids = 0;
    memset(fz_answers, 0, sizeof(fz_answers));
    memset(fz_streams, 0, sizeof(fz_streams));
    fz_ws_queue = 0;
    s = (p[0] & 0x80) != 0 ? fz_session_open(fz_hello_small, fz_hello_small_len)
                           : fz_session_open(fz_hello, fz_hello_len);
    step = p[0] & 0x7f;
    p++;
    while (p < end && fz_ws_live && !fz_ws_closing) {
        uint8_t op = *p++ % 8;
        size_t n;

        switch (op) {
        case 0:
            if (p < end) {
                fz_client_calls(&fz_calls[*p++ % FZ_NCALLS]);
            }
            break;
        case 1:
            n = fz_take_len16(&p, end);
            fz_agent_says_split(s, (const char *)p, n, step);
            p += n;
            break;
        case 2:
            if (p < end) {
                step = *p++;
            }
            break;
        case 3:
            if (p < end) {
                fz_client_cancels(FZ_STREAM_BASE + *p++);
            }
            break;
        case 4:
            fz_ws_queue = fz_ws_queue > 0 ? 0 : GW_WS_HIGH + 1;
            if (fz_ws_queue == 0) {
                fz_ws_ops->on_drain((struct gw_ws *)&fz_ws_token, fz_ws_user);
            }
            break;
        case 5:
            if (s->pipe_open && !s->pipe_closing) {
                uv_buf_t buf = uv_buf_init(NULL, 0);

                on_pipe_read((uv_stream_t *)&s->pipe, UV_EOF, &buf);
            }
            break;
        case 6:
            if (p < end) {
                fz_client_aborts(*p++);
            }
            break;
        default:
            break;
        }
        fz_uv_settle(&fz_loop, 1);
    }
    fz_session_close();
    return 0;
}
