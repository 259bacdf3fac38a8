/*
 * libFuzzer target for the agent's request params: the input is one request's msgpack payload
 * ([0, id, method, params], or a notification [2, method, params]), decoded with sbx_msg_decode
 * and then read, for its method, the way the agent's handler reads it, with no agent, loop or
 * I/O: the schema readers of protocol/ (hello, proc.spawn, repl.start's identity, proc.attach,
 * net.connect, stream notifications), the agent's own pure param readers (agent/params.c: paths,
 * times, signals, `compress`, env maps; agent/strv.c; agent/glob.c's pattern compiler) and the
 * sbx_param_* calls the handlers make, in the handlers' order and with their bounds (the table
 * below, one row per method of agent/dispatch.c). A method name the table does not know picks a
 * row by the request id, so byte mutations of the name still reach every row.
 *
 * The outcome of every row must be exactly one of: parsed (0, no error set, every output within
 * its bounds) or refused (-1, an error with a code and a message, NUL-terminated). Where the
 * schema promises that a later agent step cannot fail (argv and env after sbx_spawn_params_read),
 * that step runs too and must succeed.
 *
 * Not covered (they need the guest: /etc/passwd, the process, handle and session tables):
 * the user lookup behind `user` (only its string is read here), the lookups of `id`, `fh`,
 * `session`, `watch` and readdir cursors (only the numbers are read), repl.start's language
 * table and build_argv, pack.create's ignore rules and build user, fs.open's flag names.
 *
 * With SBX_FUZZ_STRUCTURED (set for the libFuzzer binary by wire.cmake) a custom mutator decodes
 * the input as msgpack, changes one value keeping the shape (edge integers, hostile strings,
 * resized arrays, map keys dropped, duplicated or added from the params dictionary) and packs it
 * again; one time in four, or when the input is not msgpack, libFuzzer's byte mutator runs.
 */
#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "glob.h"
#include "params.h"
#include "sbx/msg.h"
#include "sbx/schema.h"
#include "strv.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

/* --- the params table ------------------------------------------------------------------------ */

enum pkind {
    P_END = 0,
    P_U64,      /* sbx_param_u64(key, req, lo, hi) */
    P_I64,      /* sbx_param_i64(key, req, (int64_t)lo, (int64_t)hi) */
    P_BOOL,     /* sbx_param_bool(key, req) */
    P_STR,      /* sbx_param_str(key, req, max = hi) */
    P_CSTR,     /* sbx_param_cstr(key, req, bufsz = hi) */
    P_BSTR,     /* sbx_param_bstr(key, req, bufsz = hi) */
    P_BIN,      /* sbx_param_bin(key, req, max = hi) */
    P_MAP,      /* sbx_param_map(key, req, max = hi) */
    P_ARRAY,    /* sbx_param_array(key, req, max = hi) */
    P_PATH,     /* agent_fs_path_param(key, req) */
    P_TIME,     /* agent_fs_time_param(key) */
    P_SIGNAL,   /* agent_signal_param(key, SIGTERM) */
    P_COMPRESS, /* agent_compress_param(key, req) */
    P_STRV,     /* agent_strv_param(key, max = lo, maxlen = hi, flags = req) */
    P_USER,     /* agent_user_param's read of `user` (the lookup is not run) */
    P_FN,       /* fn(params, err): a handler's own check, mirrored below */
};

typedef int (*pfn)(const msgpack_object *params, struct sbx_err *err);

struct pspec {
    enum pkind kind;
    const char *key;
    int req;
    uint64_t lo, hi;
    pfn fn;
};

#define MAXSTEPS 16

struct mspec {
    const char *name;
    struct pspec p[MAXSTEPS];
};

#define U64(k, r, l, h)                                                                            \
    {                                                                                              \
        P_U64, k, r, l, h, NULL                                                                    \
    }
#define I64(k, r, l, h)                                                                            \
    {                                                                                              \
        P_I64, k, r, (uint64_t)(l), (uint64_t)(h), NULL                                            \
    }
#define BOOL(k, r)                                                                                 \
    {                                                                                              \
        P_BOOL, k, r, 0, 0, NULL                                                                   \
    }
#define STR(k, r, m)                                                                               \
    {                                                                                              \
        P_STR, k, r, 0, m, NULL                                                                    \
    }
#define CSTR(k, r, n)                                                                              \
    {                                                                                              \
        P_CSTR, k, r, 0, n, NULL                                                                   \
    }
#define BSTR(k, r, n)                                                                              \
    {                                                                                              \
        P_BSTR, k, r, 0, n, NULL                                                                   \
    }
#define BIN(k, r, m)                                                                               \
    {                                                                                              \
        P_BIN, k, r, 0, m, NULL                                                                    \
    }
#define MAP(k, r, m)                                                                               \
    {                                                                                              \
        P_MAP, k, r, 0, m, NULL                                                                    \
    }
#define ARRAY(k, r, m)                                                                             \
    {                                                                                              \
        P_ARRAY, k, r, 0, m, NULL                                                                  \
    }
#define PATH(k, r)                                                                                 \
    {                                                                                              \
        P_PATH, k, r, 0, 0, NULL                                                                   \
    }
#define TIME(k)                                                                                    \
    {                                                                                              \
        P_TIME, k, 0, 0, 0, NULL                                                                   \
    }
#define SIGNAL(k)                                                                                  \
    {                                                                                              \
        P_SIGNAL, k, 0, 0, 0, NULL                                                                 \
    }
#define COMPRESS(k)                                                                                \
    {                                                                                              \
        P_COMPRESS, k, SBX_OPTIONAL, 0, 0, NULL                                                    \
    }
#define STRV(k, m, l, f)                                                                           \
    {                                                                                              \
        P_STRV, k, f, m, l, NULL                                                                   \
    }
#define USER                                                                                       \
    {                                                                                              \
        P_USER, "user", 0, 0, 0, NULL                                                              \
    }
#define FN(f)                                                                                      \
    {                                                                                              \
        P_FN, #f, 0, 0, 0, f                                                                       \
    }
#define NOPARAMS                                                                                   \
    {                                                                                              \
        P_END, NULL, 0, 0, 0, NULL                                                                 \
    }
#define REQ       SBX_REQUIRED
#define OPT       SBX_OPTIONAL
#define PROC_ID   U64("id", REQ, 0, UINT32_MAX)
#define FH        U64("fh", REQ, 0, UINT32_MAX)
#define SESSION   U64("session", REQ, 0, UINT32_MAX)
#define PATHBUF   AGENT_FS_PATH_BUF
#define WALK_GLOB (AGENT_GLOB_BRACES | AGENT_GLOB_PERIOD) /* fswalk.c's flags */

static bool err_ok(const struct sbx_err *e)
{
    return memchr(e->code, '\0', sizeof(e->code)) != NULL &&
           memchr(e->msg, '\0', sizeof(e->msg)) != NULL &&
           memchr(e->field, '\0', sizeof(e->field)) != NULL &&
           memchr(e->path, '\0', sizeof(e->path)) != NULL && e->code[0] != '\0' &&
           e->msg[0] != '\0';
}

/* hello (session.c): sbx_hello_read. */
static int f_hello(const msgpack_object *params, struct sbx_err *err)
{
    struct sbx_hello h;

    if (sbx_hello_read(params, &h, err) < 0) {
        return -1;
    }
    CHECK(h.min_version <= h.version);
    CHECK(h.client == NULL || h.client_len <= SBX_HELLO_CLIENT_MAX);
    CHECK(h.token == NULL || h.token_len <= SBX_TOKEN_MAX);
    CHECK(h.capv == NULL || h.capv->type == MSGPACK_OBJECT_ARRAY);
    return 0;
}

/* shutdown (session.c): the action names. */
static int f_shutdown(const msgpack_object *params, struct sbx_err *err)
{
    char action[16] = "poweroff";

    if (sbx_param_cstr(params, "action", SBX_OPTIONAL, action, sizeof(action), err) < 0) {
        return -1;
    }
    if (strcmp(action, "poweroff") != 0 && strcmp(action, "reboot") != 0) {
        return sbx_err_param(err, "action", "action must be \"poweroff\" or \"reboot\"");
    }
    return 0;
}

/* env.get, env.unset (env.c env_name_param). */
static int f_env_name(const msgpack_object *params, struct sbx_err *err)
{
    char name[SBX_ENV_NAME_MAX + 1];

    if (sbx_param_bstr(params, "name", SBX_REQUIRED, name, sizeof(name), err) != 0) {
        return -1;
    }
    if (!agent_env_name_ok(name, strlen(name))) {
        return sbx_err_param(err, "name", "bad name");
    }
    return 0;
}

/* env.set (env.c): vars, or name and value. */
static int f_env_set(const msgpack_object *params, struct sbx_err *err)
{
    const msgpack_object *vars = NULL, *value;
    const char *val;
    size_t vlen;
    int r = sbx_param_map(params, "vars", SBX_OPTIONAL, SBX_ENV_MAX, &vars, err);

    if (r < 0) {
        return -1;
    }
    if ((r == 0) == (sbx_obj_get(params, "name") != NULL)) {
        return sbx_err_param(err, "vars", "give either \"vars\" or \"name\" and \"value\"");
    }
    if (r == 1) {
        if (f_env_name(params, err) < 0) {
            return -1;
        }
        value = sbx_obj_get(params, "value");
        if (value == NULL || !sbx_obj_bytes(value, &val, &vlen) || vlen > SBX_ENV_VAL_MAX ||
            memchr(val, '\0', vlen) != NULL) {
            return sbx_err_param(err, "value", "bad value");
        }
        return 0;
    }
    return agent_env_check_map(vars, "vars", err);
}

/* What proc.spawn and repl.start do after the schema read (argv, the shell's argv of a command,
 * env): each must succeed on what it let through (proc.c parse_spawn: "checked"). */
static void spawn_after(const struct sbx_spawn_params *sp)
{
    struct sbx_err e2;

    sbx_err_clear(&e2);
    if (sp->argvv != NULL) {
        char **v = agent_strv_from_array(sp->argvv, "argv", SBX_ARG_MAX, 0, &e2);
        CHECK(v != NULL && sp->argvv->via.array.size >= 1 &&
              sp->argvv->via.array.size <= SBX_ARGV_MAX);
        agent_strv_free(v);
    }
    if (sp->command != NULL) {
        /* proc.c runs a command as {"/bin/sh", "-c", command}: all of it, not cut at a NUL. */
        char **v = agent_strv_sh(sp->command, sp->command_len);
        CHECK(v != NULL && strcmp(v[0], "/bin/sh") == 0 && strcmp(v[1], "-c") == 0 &&
              strlen(v[2]) == sp->command_len && memcmp(v[2], sp->command, sp->command_len) == 0 &&
              v[3] == NULL);
        agent_strv_free(v);
    }
    if (sp->envv != NULL) {
        CHECK(agent_env_check_map(sp->envv, "env", &e2) == 0);
    }
    CHECK(!sbx_err_isset(&e2));
    CHECK(sp->tag == NULL || sp->tag_len <= SBX_TAG_MAX);
    CHECK(sp->user == NULL || sp->user_len <= SBX_USER_MAX);
    CHECK(sp->cwd == NULL || sp->cwd_len <= SBX_PATH_MAX);
    CHECK(sp->kill_signal >= 0 && sp->kill_signal <= 64);
    CHECK(sp->ngroups <= SBX_GROUPS_MAX);
    CHECK(sp->pty == NULL || sp->pty->term == NULL || sp->pty->term_len <= SBX_PTY_TERM_MAX);
}

/* proc.spawn (proc.c parse_spawn). */
static int f_spawn(const msgpack_object *params, struct sbx_err *err)
{
    struct sbx_spawn_params sp;

    if (sbx_spawn_params_read(params, &sp, err) < 0) {
        return -1;
    }
    CHECK((sp.argvv != NULL) != (sp.command != NULL));
    spawn_after(&sp);
    return 0;
}

/* repl.start (repl.c parse_lang, then agent_proc_spawn_repl's identity read). */
static int f_repl_start(const msgpack_object *params, struct sbx_err *err)
{
    struct sbx_spawn_params sp;
    const msgpack_object *argv = NULL;
    char name[16];
    int rl, ra;

    rl = sbx_param_cstr(params, "language", SBX_OPTIONAL, name, sizeof(name), err);
    if (rl < 0) {
        return -1;
    }
    ra = sbx_param_array(params, "argv", SBX_OPTIONAL, SBX_ARGV_MAX, &argv, err);
    if (ra < 0) {
        return -1;
    }
    if (ra == 0 && argv->via.array.size == 0) {
        return sbx_err_param(err, "argv", "argv must not be empty");
    }
    if (rl == 1 && ra == 1) {
        return sbx_err_param(err, "language", "give \"language\" or \"argv\"");
    }
    if (sbx_spawn_identity_read(params, &sp, err) < 0) {
        return -1;
    }
    CHECK(sp.argvv == NULL && sp.command == NULL);
    spawn_after(&sp);
    return 0;
}

/* proc.attach (proc.c). */
static int f_attach(const msgpack_object *params, struct sbx_err *err)
{
    struct sbx_attach_params ap;

    return sbx_attach_params_read(params, &ap, err);
}

/* net.connect (net.c): the schema read, then timeout_ms 0 refused. */
static int f_net_connect(const msgpack_object *params, struct sbx_err *err)
{
    struct sbx_net_connect_params p;

    if (sbx_net_connect_params_read(params, &p, err) < 0) {
        return -1;
    }
    CHECK(p.port >= 1 && p.port <= 65535);
    CHECK(p.host == NULL || (p.host_len <= SBX_NET_HOST_MAX && sbx_utf8_valid(p.host, p.host_len) &&
                             memchr(p.host, '\0', p.host_len) == NULL));
    return 0;
}

/* fs.readdir (fsdir.c): a cursor, else a path and the user. */
static int f_readdir(const msgpack_object *params, struct sbx_err *err)
{
    char path[PATHBUF], user[SBX_USER_MAX + 1];
    uint64_t limit;
    const char *cs;
    size_t cn;
    int r;

    if (sbx_param_u64(params, "limit", SBX_OPTIONAL, 1, SBX_FS_READDIR_MAX, &limit, err) < 0) {
        return -1;
    }
    r = sbx_param_str(params, "cursor", SBX_OPTIONAL, 15, &cs, &cn, err);
    if (r < 0) {
        return -1;
    }
    if (r == 0) {
        CHECK(cn <= 15);
        return 0;
    }
    if (agent_fs_path_param(params, "path", SBX_REQUIRED, path, err) < 0 ||
        sbx_param_cstr(params, "user", SBX_OPTIONAL, user, sizeof(user), err) < 0) {
        return -1;
    }
    return 0;
}

/* fs.symlink (fspath.c): a non-empty target. */
static int f_symlink_target(const msgpack_object *params, struct sbx_err *err)
{
    char target[PATHBUF];

    if (sbx_param_bstr(params, "target", SBX_REQUIRED, target, sizeof(target), err) < 0) {
        return -1;
    }
    return target[0] == '\0' ? sbx_err_param(err, "target", "target must not be empty") : 0;
}

/* fs.mktemp (fspath.c name_part_param): prefix and suffix without '/'. */
static int f_name_parts(const msgpack_object *params, struct sbx_err *err)
{
    static const char *const keys[] = { "prefix", "suffix" };
    char buf[SBX_FS_NAME_MAX + 1];

    for (size_t i = 0; i < 2; i++) {
        int r = sbx_param_bstr(params, keys[i], SBX_OPTIONAL, buf, sizeof(buf), err);
        if (r < 0) {
            return -1;
        }
        if (r == 0 && strchr(buf, '/') != NULL) {
            return sbx_err_param(err, keys[i], "%s must not contain '/'", keys[i]);
        }
    }
    return 0;
}

/* fs.walk (fswalk.c regs_param): match and skip, no back-references. Only the list is read
 * here; regcomp (glibc's) is the agent's. */
static int f_walk_regs(const msgpack_object *params, struct sbx_err *err)
{
    static const char *const keys[] = { "match", "skip" };

    for (size_t i = 0; i < 2; i++) {
        char **v = NULL;
        size_t n = 0;
        if (agent_strv_param(params, keys[i], SBX_FS_PATTERNS_MAX, SBX_FS_REGEX_MAX,
                             AGENT_STRV_NONEMPTY, &v, &n, err) < 0) {
            return -1;
        }
        CHECK(n <= SBX_FS_PATTERNS_MAX);
        agent_strv_free(v);
    }
    return 0;
}

/* fs.glob (fswalk.c): the pattern and every exclude compiled. */
static int f_glob(const msgpack_object *params, struct sbx_err *err)
{
    char pattern[PATHBUF];
    char **excl = NULL;
    size_t n = 0;
    struct agent_glob g;
    int rc = 0;

    memset(&g, 0, sizeof(g));
    if (sbx_param_bstr(params, "pattern", SBX_REQUIRED, pattern, sizeof(pattern), err) < 0 ||
        agent_strv_param(params, "exclude", SBX_FS_PATTERNS_MAX, SBX_PATH_MAX, AGENT_STRV_NONEMPTY,
                         &excl, &n, err) < 0) {
        return -1;
    }
    if (agent_glob_compile(&g, pattern, WALK_GLOB, "pattern", err) < 0) {
        rc = -1;
    }
    agent_glob_free(&g);
    for (size_t i = 0; rc == 0 && i < n; i++) {
        if (agent_glob_compile(&g, excl[i], WALK_GLOB, "exclude", err) < 0) {
            rc = -1;
        }
        agent_glob_free(&g);
    }
    agent_strv_free(excl);
    return rc;
}

/* transfer.upload (transfer.c): the digest. */
static int f_sha256(const msgpack_object *params, struct sbx_err *err)
{
    char out[65];
    int r = agent_sha256_param(params, out, err);

    CHECK(r != 0 || strspn(out, "0123456789abcdef") == 64);
    return r < 0 ? -1 : 0;
}

/* pack.create (pack.c pack_parse): format, entrypoint, and the build map's own params. */
static int f_pack(const msgpack_object *params, struct sbx_err *err)
{
    char fmt[16], entry[PATHBUF], cwd[PATHBUF], cmd[SBX_ARG_MAX + 1], user[SBX_USER_MAX + 1];
    const msgpack_object *bm = NULL, *env = NULL, *arr = NULL;
    uint64_t timeout;
    bool clear;
    int r;

    if (sbx_param_cstr(params, "format", SBX_REQUIRED, fmt, sizeof(fmt), err) < 0 ||
        sbx_param_map(params, "build", SBX_OPTIONAL, 64, &bm, err) < 0) {
        return -1;
    }
    if (strcmp(fmt, "tar.gz") != 0 && strcmp(fmt, "tar.zst") != 0) {
        return sbx_err_param(err, "format", "format must be \"tar.gz\" or \"tar.zst\"");
    }
    r = sbx_param_bstr(params, "entrypoint", SBX_OPTIONAL, entry, sizeof(entry), err);
    if (r < 0) {
        return -1;
    }
    if (r == 0 && (entry[0] == '/' || entry[0] == '\0')) {
        return sbx_err_param(err, "entrypoint", "entrypoint must be relative");
    }
    if (sbx_param_cstr(params, "user", SBX_OPTIONAL, user, sizeof(user), err) < 0) {
        return -1;
    }
    if (bm == NULL) {
        return 0;
    }
    if (sbx_param_cstr(bm, "user", SBX_OPTIONAL, user, sizeof(user), err) < 0 ||
        sbx_param_bstr(bm, "cwd", SBX_OPTIONAL, cwd, sizeof(cwd), err) < 0 ||
        sbx_param_bool(bm, "clear_env", SBX_OPTIONAL, &clear, err) < 0 ||
        sbx_param_u64(bm, "timeout_ms", SBX_OPTIONAL, 1, UINT32_MAX, &timeout, err) < 0 ||
        sbx_param_map(bm, "env", SBX_OPTIONAL, SBX_ENV_MAX, &env, err) < 0 ||
        (env != NULL && agent_env_check_map(env, "env", err) < 0)) {
        return -1;
    }
    r = sbx_param_array(bm, "argv", SBX_OPTIONAL, SBX_ARGV_MAX, &arr, err);
    if (r < 0) {
        return -1;
    }
    if (r > 0) {
        r = sbx_param_bstr(bm, "command", SBX_OPTIONAL, cmd, sizeof(cmd), err);
        if (r < 0) {
            return -1;
        }
        return r > 0 ? sbx_err_param(err, "build", "build needs argv or command") : 0;
    }
    return 0;
}

/* repl.eval (repl.c): the format names. */
static int f_eval_format(const msgpack_object *params, struct sbx_err *err)
{
    const char *f;
    size_t n;
    int r = sbx_param_str(params, "format", SBX_OPTIONAL, 16, &f, &n, err);

    if (r != 0) {
        return r < 0 ? -1 : 0;
    }
    if (!(n == 4 && (memcmp(f, "text", 4) == 0 || memcmp(f, "json", 4) == 0))) {
        return sbx_err_param(err, "format", "format must be \"text\" or \"json\"");
    }
    return 0;
}

/* stream.credit / stream.end / stream.cancel: the schema reader (libsbx's) must agree with the
 * agent's reading (stream.c: stream 1..2^32-1, credit bytes 0..2^32-1). */
static int note_common(const char *method, const msgpack_object *params, struct sbx_err *err)
{
    struct sbx_stream_note n;
    struct sbx_err e2;
    uint64_t sid, bytes;
    int rs;

    sbx_err_clear(&e2);
    rs = sbx_stream_note_read(method, params, &n, &e2);
    CHECK(rs == 0 ? !sbx_err_isset(&e2) : err_ok(&e2));
    if (sbx_param_u64(params, "stream", SBX_REQUIRED, 1, UINT32_MAX, &sid, err) != 0) {
        return -1;
    }
    if (strcmp(method, SBX_N_STREAM_CREDIT) == 0 &&
        sbx_param_u64(params, "bytes", SBX_REQUIRED, 0, UINT32_MAX, &bytes, err) != 0) {
        return -1;
    }
    if (strcmp(method, SBX_N_STREAM_CREDIT) != 0) {
        const msgpack_object *eo = sbx_obj_get(params, "error");
        if (eo != NULL && eo->type == MSGPACK_OBJECT_MAP) {
            struct sbx_err e3;
            sbx_err_clear(&e3);
            sbx_err_from_obj(eo, &e3);
            CHECK(memchr(e3.code, '\0', sizeof(e3.code)) != NULL &&
                  memchr(e3.msg, '\0', sizeof(e3.msg)) != NULL);
        }
    }
    return 0;
}

static int f_credit(const msgpack_object *params, struct sbx_err *err)
{
    return note_common(SBX_N_STREAM_CREDIT, params, err);
}

static int f_end(const msgpack_object *params, struct sbx_err *err)
{
    return note_common(SBX_N_STREAM_END, params, err);
}

static int f_cancel(const msgpack_object *params, struct sbx_err *err)
{
    return note_common(SBX_N_STREAM_CANCEL, params, err);
}

/* One row per method of agent/dispatch.c (same order), then the notifications the agent reads. */
static const struct mspec methods[] = {
    { SBX_M_HELLO, { FN(f_hello) } },
    { SBX_M_PING, { NOPARAMS } },
    { SBX_M_INFO, { NOPARAMS } },
    { SBX_M_SHUTDOWN, { FN(f_shutdown) } },
    { SBX_M_LIFETIME_GET, { NOPARAMS } },
    { SBX_M_LIFETIME_EXTEND, { U64("seconds", REQ, 1, INT32_MAX) } },
    { SBX_M_CLOCK_SET,
      { I64("unix_ns", REQ, 0, INT64_MAX), U64("threshold_ns", OPT, 0, UINT64_MAX) } },
    { SBX_M_ENV_GET, { FN(f_env_name) } },
    { SBX_M_ENV_SET, { FN(f_env_set) } },
    { SBX_M_ENV_UNSET, { FN(f_env_name) } },
    { SBX_M_ENV_LIST, { NOPARAMS } },
    { SBX_M_PROC_SPAWN, { FN(f_spawn) } },
    { SBX_M_PROC_WAIT, { U64("timeout_ms", OPT, 1, UINT32_MAX), PROC_ID } },
    { SBX_M_PROC_KILL, { SIGNAL("signal"), BOOL("group", OPT), PROC_ID } },
    { SBX_M_PROC_LIST, { NOPARAMS } },
    { SBX_M_PROC_CLOSE_STDIN, { PROC_ID } },
    { SBX_M_PROC_RELEASE, { PROC_ID } },
    { SBX_M_PROC_RESIZE, { U64("rows", REQ, 1, 65535), U64("cols", REQ, 1, 65535), PROC_ID } },
    { SBX_M_PROC_ATTACH, { FN(f_attach) } },
    { SBX_M_FS_STAT, { PATH("path", REQ), USER } },
    { SBX_M_FS_LSTAT, { PATH("path", REQ), USER } },
    { SBX_M_FS_READDIR, { FN(f_readdir) } },
    { SBX_M_FS_MKDIR,
      { PATH("path", REQ), BOOL("parents", OPT), U64("mode", OPT, 0, 07777), USER } },
    { SBX_M_FS_REMOVE, { PATH("path", REQ), BOOL("recursive", OPT), USER } },
    { SBX_M_FS_RENAME, { PATH("from", REQ), PATH("to", REQ), USER } },
    { SBX_M_FS_COPY, { PATH("from", REQ), PATH("to", REQ), BOOL("recursive", OPT), USER } },
    { SBX_M_FS_CHMOD, { PATH("path", REQ), U64("mode", REQ, 0, 07777), USER } },
    { SBX_M_FS_CHOWN,
      { PATH("path", REQ), U64("uid", OPT, 0, UINT32_MAX - 1), U64("gid", OPT, 0, UINT32_MAX - 1),
        USER } },
    { SBX_M_FS_SYMLINK, { FN(f_symlink_target), PATH("path", REQ), USER } },
    { SBX_M_FS_LINK, { PATH("target", REQ), PATH("path", REQ), USER } },
    { SBX_M_FS_READLINK, { PATH("path", REQ), USER } },
    { SBX_M_FS_REALPATH, { PATH("path", REQ), USER } },
    { SBX_M_FS_TRUNCATE, { PATH("path", REQ), U64("size", OPT, 0, INT64_MAX), USER } },
    { SBX_M_FS_UTIME, { PATH("path", REQ), TIME("atime_ns"), TIME("mtime_ns"), USER } },
    { SBX_M_FS_MKTEMP, { PATH("dir", OPT), FN(f_name_parts), BOOL("directory", OPT), USER } },
    { SBX_M_FS_WALK,
      { PATH("path", REQ), BSTR("path", REQ, PATHBUF), U64("max_depth", OPT, 0, UINT64_MAX),
        BOOL("include_files", OPT), BOOL("include_dirs", OPT), BOOL("include_symlinks", OPT),
        BOOL("follow_symlinks", OPT),
        STRV("exts", SBX_FS_PATTERNS_MAX, SBX_FS_NAME_MAX, AGENT_STRV_NONEMPTY), FN(f_walk_regs),
        USER } },
    { SBX_M_FS_GLOB,
      { PATH("root", OPT), BOOL("include_dirs", OPT), BOOL("follow_symlinks", OPT), FN(f_glob),
        USER } },
    { SBX_M_FS_WATCH,
      { PATH("path", REQ), BSTR("path", REQ, PATHBUF), BOOL("recursive", OPT), USER } },
    { SBX_M_FS_UNWATCH, { U64("watch", REQ, 0, UINT32_MAX) } },
    { SBX_M_FS_OPEN,
      { PATH("path", REQ), U64("mode", OPT, 0, 07777), ARRAY("flags", OPT, 16), USER } },
    { SBX_M_FS_READ, { U64("len", REQ, 1, UINT64_MAX), U64("offset", OPT, 0, INT64_MAX), FH } },
    { SBX_M_FS_WRITE, { BIN("data", REQ, SBX_FRAME_MAX), U64("offset", OPT, 0, INT64_MAX), FH } },
    { SBX_M_FS_SEEK, { I64("offset", REQ, INT64_MIN, INT64_MAX), CSTR("whence", OPT, 8), FH } },
    { SBX_M_FS_FSTAT, { FH } },
    { SBX_M_FS_FSYNC, { BOOL("data_only", OPT), FH } },
    { SBX_M_FS_FTRUNCATE, { U64("size", OPT, 0, INT64_MAX), FH } },
    { SBX_M_FS_CLOSE, { FH } },
    { SBX_M_FS_UMASK, { U64("mask", OPT, 0, 0777) } },
    { SBX_M_FS_FUTIMES, { TIME("atime_ns"), TIME("mtime_ns"), FH } },
    { SBX_M_FS_FLOCK, { BOOL("exclusive", REQ), BOOL("wait", OPT), FH } },
    { SBX_M_FS_FUNLOCK, { FH } },
    { SBX_M_TRANSFER_UPLOAD,
      { PATH("path", REQ), U64("mode", OPT, 0, 07777), U64("uid", OPT, 0, UINT32_MAX),
        U64("gid", OPT, 0, UINT32_MAX), BOOL("overwrite", OPT), BOOL("fsync", OPT),
        U64("size", OPT, 0, UINT64_MAX), FN(f_sha256), BOOL("hash", OPT), BOOL("parents", OPT),
        USER } },
    { SBX_M_TRANSFER_DOWNLOAD,
      { PATH("path", REQ), U64("offset", OPT, 0, INT64_MAX), U64("length", OPT, 0, UINT64_MAX),
        USER } },
    { SBX_M_TRANSFER_UPLOAD_TREE,
      { PATH("path", REQ), COMPRESS("compress"), BOOL("preserve_owner", OPT), USER } },
    { SBX_M_TRANSFER_DOWNLOAD_TREE, { PATH("path", REQ), COMPRESS("compress"), USER } },
    { SBX_M_PACK_CREATE,
      { PATH("path", REQ), STRV("args", SBX_ARGV_MAX, SBX_ARG_MAX, 0),
        STRV("exclude", SBX_PACK_EXCLUDE_MAX, SBX_ARG_MAX, 0), FN(f_pack) } },
    { SBX_M_REPL_START, { FN(f_repl_start) } },
    { SBX_M_REPL_EVAL,
      { STR("code", REQ, SBX_REPL_CODE_MAX), U64("timeout_ms", OPT, 1, UINT32_MAX),
        BOOL("stream", OPT), FN(f_eval_format), SESSION } },
    { SBX_M_REPL_CLOSE, { SESSION } },
    { SBX_M_REPL_LIST, { NOPARAMS } },
    { "repl.collect", { SESSION } },
    { SBX_M_NET_CONNECT, { FN(f_net_connect), U64("timeout_ms", OPT, 1, UINT32_MAX) } },
    { SBX_M_NET_LISTENING, { NOPARAMS } },
    { SBX_N_STREAM_CREDIT, { FN(f_credit) } },
    { SBX_N_STREAM_END, { FN(f_end) } },
    { SBX_N_STREAM_CANCEL, { FN(f_cancel) } },
};

#define NMETHODS (sizeof(methods) / sizeof(methods[0]))

/* Run one step; 0 (parsed or absent), or -1 with @err. Outputs are checked against the bounds. */
static int run_step(const struct pspec *s, const msgpack_object *params, struct sbx_err *err)
{
    char *buf = NULL;
    const msgpack_object *o = NULL;
    const char *str;
    const uint8_t *bin;
    size_t n = 0;
    uint64_t u = 0;
    int64_t i = 0;
    bool b;
    struct timespec ts;
    int sig, r;
    enum agent_compress comp;
    char **v;

    switch (s->kind) {
    case P_U64:
        r = sbx_param_u64(params, s->key, s->req, s->lo, s->hi, &u, err);
        CHECK(r != 0 || (u >= s->lo && u <= s->hi));
        break;
    case P_I64:
        r = sbx_param_i64(params, s->key, s->req, (int64_t)s->lo, (int64_t)s->hi, &i, err);
        CHECK(r != 0 || (i >= (int64_t)s->lo && i <= (int64_t)s->hi));
        break;
    case P_BOOL:
        r = sbx_param_bool(params, s->key, s->req, &b, err);
        break;
    case P_STR:
        r = sbx_param_str(params, s->key, s->req, s->hi, &str, &n, err);
        CHECK(r != 0 || n <= s->hi);
        break;
    case P_CSTR:
    case P_BSTR:
    case P_USER:
        n = s->kind == P_USER ? SBX_USER_MAX + 1 : s->hi;
        buf = malloc(n); /* exactly sized: ASan sees a write past it */
        if (buf == NULL) {
            return 0;
        }
        r = s->kind == P_BSTR ? sbx_param_bstr(params, s->key, s->req, buf, n, err)
                              : sbx_param_cstr(params, s->key, s->req, buf, n, err);
        CHECK(r != 0 || memchr(buf, '\0', n) != NULL);
        break;
    case P_BIN:
        r = sbx_param_bin(params, s->key, s->req, s->hi, &bin, &n, err);
        CHECK(r != 0 || n <= s->hi);
        break;
    case P_MAP:
        r = sbx_param_map(params, s->key, s->req, (uint32_t)s->hi, &o, err);
        CHECK(r != 0 || (o->type == MSGPACK_OBJECT_MAP && o->via.map.size <= s->hi));
        break;
    case P_ARRAY:
        r = sbx_param_array(params, s->key, s->req, (uint32_t)s->hi, &o, err);
        CHECK(r != 0 || (o->type == MSGPACK_OBJECT_ARRAY && o->via.array.size <= s->hi));
        break;
    case P_PATH:
        buf = malloc(AGENT_FS_PATH_BUF);
        if (buf == NULL) {
            return 0;
        }
        r = agent_fs_path_param(params, s->key, s->req, buf, err);
        CHECK(r != 0 || (buf[0] == '/' && strnlen(buf, AGENT_FS_PATH_BUF) <= SBX_PATH_MAX));
        break;
    case P_TIME:
        r = agent_fs_time_param(params, s->key, &ts, err);
        CHECK(r != 0 || ts.tv_nsec == UTIME_OMIT || (ts.tv_nsec >= 0 && ts.tv_nsec < 1000000000));
        break;
    case P_SIGNAL:
        r = agent_signal_param(params, s->key, SIGTERM, &sig, err);
        CHECK(r != 0 || (sig >= 1 && sig < NSIG));
        break;
    case P_COMPRESS:
        r = agent_compress_param(params, s->key, s->req, &comp, err);
        CHECK(r < 0 || comp == AGENT_COMPRESS_NONE || comp == AGENT_COMPRESS_GZIP ||
              comp == AGENT_COMPRESS_ZSTD);
        break;
    case P_STRV:
        r = agent_strv_param(params, s->key, (uint32_t)s->lo, s->hi, (unsigned)s->req, &v, &n, err);
        CHECK(r != 0 || n <= s->lo);
        for (size_t k = 0; r == 0 && v != NULL && k < n; k++) {
            CHECK(v[k] != NULL && strlen(v[k]) <= s->hi);
        }
        agent_strv_free(v);
        break;
    case P_FN:
        r = s->fn(params, err);
        break;
    default:
        abort();
    }
    free(buf);
    return r < 0 ? -1 : 0;
}

/* Run @ms's steps in order up to the first refusal, as the handler does. */
static void run_method(const struct mspec *ms, const msgpack_object *params)
{
    struct sbx_err err;
    int r = 0;

    sbx_err_clear(&err);
    for (size_t k = 0; k < MAXSTEPS && ms->p[k].kind != P_END && r == 0; k++) {
        r = run_step(&ms->p[k], params, &err);
        CHECK(r == 0 ? !sbx_err_isset(&err) : err_ok(&err));
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct sbx_decoder d;
    struct sbx_msg m;
    struct sbx_err err;
    uint8_t *buf;
    const struct mspec *ms = NULL;

    /* An exactly-sized copy, so ASan sees a read past the frame. */
    buf = malloc(size > 0 ? size : 1);
    if (buf == NULL || sbx_decoder_init(&d) != 0) {
        free(buf);
        return 0;
    }
    memcpy(buf, data, size);
    sbx_err_clear(&err);
    if (sbx_msg_decode(&d, buf, size, &m, &err) != 0) {
        CHECK(err_ok(&err));
        goto out;
    }
    CHECK(!sbx_err_isset(&err));
    if (m.kind != SBX_MSG_REQUEST && m.kind != SBX_MSG_NOTIFY) {
        goto out;
    }
    CHECK(m.params == NULL || m.params->type == MSGPACK_OBJECT_MAP);
    for (size_t k = 0; k < NMETHODS; k++) {
        if (sbx_msg_method_is(&m, methods[k].name)) {
            ms = &methods[k];
            break;
        }
    }
    if (ms == NULL) {
        ms = &methods[m.kind == SBX_MSG_REQUEST ? m.id % NMETHODS : m.method_len % NMETHODS];
    }
    run_method(ms, m.params);
out:
    sbx_decoder_destroy(&d);
    free(buf);
    return 0;
}

#ifdef SBX_FUZZ_STRUCTURED
/* --- the structure-aware mutator ------------------------------------------------------------- */

size_t LLVMFuzzerMutate(uint8_t *data, size_t size, size_t max_size);
size_t LLVMFuzzerCustomMutator(uint8_t *data, size_t size, size_t max_size, unsigned int seed);

/* Param names of PROTOCOL.md's requests: a key added to a map is one of these. */
static const char *const dict_keys[] = {
    "path",      "cwd",          "user",       "uid",      "gid",     "groups",      "argv",
    "command",   "env",          "clear_env",  "stdin",    "stdout",  "stderr",      "timeout_ms",
    "pty",       "rows",         "cols",       "term",     "tag",     "id",          "fh",
    "session",   "stream",       "bytes",      "error",    "signal",  "mode",        "size",
    "offset",    "len",          "length",     "data",     "from",    "to",          "target",
    "recursive", "compress",     "format",     "build",    "args",    "exclude",     "entrypoint",
    "pattern",   "root",         "match",      "skip",     "exts",    "name",        "value",
    "vars",      "language",     "code",       "host",     "port",    "version",     "min_version",
    "token",     "capabilities", "memory_max", "pids_max", "cpu_max", "kill_signal", "sha256",
    "atime_ns",  "mtime_ns",     "whence",     "flags",    "prefix",  "suffix",      "dir",
    "action",    "seconds",      "unix_ns",    "cursor",   "limit",   "from",        "stderr_from",
};

/* Hostile strings: empty, traversal, NUL inside, invalid UTF-8, names the parsers compare. */
static const char *const dict_strs[] = {
    "",
    "/",
    "..",
    "../../../etc/passwd",
    "a/b",
    "=",
    "A=B",
    "TERM",
    "SIGKILL",
    "SIG64",
    "65",
    "none",
    "gzip",
    "zstd",
    "tar.gz",
    "tar.zst",
    "json",
    "text",
    "pipe",
    "null",
    "stdout",
    "root",
    "0",
    "-1",
    "\\1",
    "{a,b}",
    "**",
    "*",
    "[",
    "[!]",
    "\xff\xfe",
    "\xc0\x80",
    "\xed\xa0\x80",
    "x\ty",
};

static const uint64_t edge_u[] = {
    0,          1,          2,         15,         16,
    63,         64,         127,       128,        255,
    256,        4095,       4096,      4097,       07777,
    010000,     65535,      65536,     INT32_MAX,  UINT32_MAX - 1,
    UINT32_MAX, 1ull << 32, INT64_MAX, UINT64_MAX, 1048576,
    4194304,    4194305,
};

static const int64_t edge_i[] = { -1, -2, -32, -33, -128, -129, INT32_MIN, INT64_MIN, -999999999 };

struct mut {
    unsigned seed;
    msgpack_zone *zone;
    unsigned target, seen;
};

static unsigned rnd(struct mut *mu, unsigned n)
{
    mu->seed = mu->seed * 1103515245u + 12345u;
    return n == 0 ? 0 : (mu->seed >> 8) % n;
}

static void set_str(struct mut *mu, msgpack_object *o, const char *s, size_t n)
{
    char *p = msgpack_zone_malloc(mu->zone, n > 0 ? n : 1);

    if (p == NULL) {
        return;
    }
    memcpy(p, s, n);
    o->type = rnd(mu, 4) == 0 ? MSGPACK_OBJECT_BIN : MSGPACK_OBJECT_STR;
    o->via.str.ptr = p;
    o->via.str.size = (uint32_t)n;
}

/* A hostile string: from the dictionary, long (around a limit), or with a NUL. */
static void hostile_str(struct mut *mu, msgpack_object *o)
{
    static const size_t lens[] = { 15, 16, 64, 65, 255, 256, 257, 4096, 4097, 8193 };
    char tmp[8200];
    size_t n;

    switch (rnd(mu, 4)) {
    case 0:
    case 1: {
        const char *s = dict_strs[rnd(mu, sizeof(dict_strs) / sizeof(dict_strs[0]))];
        set_str(mu, o, s, strlen(s));
        return;
    }
    case 2:
        n = lens[rnd(mu, sizeof(lens) / sizeof(lens[0]))];
        memset(tmp, rnd(mu, 2) ? 'a' : '/', n);
        set_str(mu, o, tmp, n);
        return;
    default:
        memcpy(tmp, "/tmp/a\0b", 8);
        set_str(mu, o, tmp, 8);
        return;
    }
}

static void hostile_value(struct mut *mu, msgpack_object *o)
{
    switch (rnd(mu, 7)) {
    case 0:
        o->type = MSGPACK_OBJECT_NIL;
        break;
    case 1:
        o->type = MSGPACK_OBJECT_BOOLEAN;
        o->via.boolean = rnd(mu, 2);
        break;
    case 2:
        o->type = MSGPACK_OBJECT_POSITIVE_INTEGER;
        o->via.u64 = edge_u[rnd(mu, sizeof(edge_u) / sizeof(edge_u[0]))];
        break;
    case 3:
        o->type = MSGPACK_OBJECT_NEGATIVE_INTEGER;
        o->via.i64 = edge_i[rnd(mu, sizeof(edge_i) / sizeof(edge_i[0]))];
        break;
    case 4:
        hostile_str(mu, o);
        break;
    case 5:
        o->type = MSGPACK_OBJECT_ARRAY;
        o->via.array.size = 0;
        o->via.array.ptr = NULL;
        break;
    default:
        o->type = MSGPACK_OBJECT_MAP;
        o->via.map.size = 0;
        o->via.map.ptr = NULL;
        break;
    }
}

/* Mutate a container @o: drop, duplicate, add (a dictionary key) or resize. */
static void mutate_container(struct mut *mu, msgpack_object *o)
{
    if (o->type == MSGPACK_OBJECT_ARRAY) {
        uint32_t n = o->via.array.size, k = rnd(mu, 3);
        msgpack_object *p;
        if (k == 0 && n > 0) {
            o->via.array.size = n - 1 - rnd(mu, n); /* shrink */
            return;
        }
        p = msgpack_zone_malloc(mu->zone, (n + 1) * sizeof(*p));
        if (p == NULL) {
            return;
        }
        if (n > 0) {
            memcpy(p, o->via.array.ptr, n * sizeof(*p));
        }
        if (k == 1 && n > 0) {
            p[n] = p[rnd(mu, n)]; /* duplicate */
        } else {
            hostile_value(mu, &p[n]);
        }
        o->via.array.ptr = p;
        o->via.array.size = n + 1;
        return;
    }
    {
        uint32_t n = o->via.map.size, k = rnd(mu, 4);
        msgpack_object_kv *p;
        if (k == 0 && n > 0) {
            uint32_t drop = rnd(mu, n);
            memmove(&o->via.map.ptr[drop], &o->via.map.ptr[drop + 1],
                    (n - drop - 1) * sizeof(*p)); /* the zone's copy: ours to change */
            o->via.map.size = n - 1;
            return;
        }
        p = msgpack_zone_malloc(mu->zone, (n + 1) * sizeof(*p));
        if (p == NULL) {
            return;
        }
        if (n > 0) {
            memcpy(p, o->via.map.ptr, n * sizeof(*p));
        }
        if (k == 1 && n > 0) {
            p[n] = p[rnd(mu, n)]; /* a duplicated key */
        } else {
            const char *key = dict_keys[rnd(mu, sizeof(dict_keys) / sizeof(dict_keys[0]))];
            p[n].key.type = MSGPACK_OBJECT_STR;
            p[n].key.via.str.ptr = key;
            p[n].key.via.str.size = (uint32_t)strlen(key);
            hostile_value(mu, &p[n].val);
        }
        o->via.map.ptr = p;
        o->via.map.size = n + 1;
    }
}

/* Walk @o depth first; the node numbered mu->target is mutated. */
static void walk(struct mut *mu, msgpack_object *o, int depth)
{
    unsigned me = mu->seen++;

    if (me == mu->target) {
        switch (o->type) {
        case MSGPACK_OBJECT_POSITIVE_INTEGER:
        case MSGPACK_OBJECT_NEGATIVE_INTEGER:
            if (rnd(mu, 4) == 0) {
                hostile_value(mu, o);
            } else if (rnd(mu, 3) == 0) {
                o->type = MSGPACK_OBJECT_NEGATIVE_INTEGER;
                o->via.i64 = edge_i[rnd(mu, sizeof(edge_i) / sizeof(edge_i[0]))];
            } else {
                o->type = MSGPACK_OBJECT_POSITIVE_INTEGER;
                o->via.u64 = edge_u[rnd(mu, sizeof(edge_u) / sizeof(edge_u[0]))];
            }
            return;
        case MSGPACK_OBJECT_STR:
        case MSGPACK_OBJECT_BIN:
            if (depth <= 1 && rnd(mu, 2) == 0) {
                return; /* the envelope's method: keep it most of the time */
            }
            hostile_str(mu, o);
            return;
        case MSGPACK_OBJECT_ARRAY:
        case MSGPACK_OBJECT_MAP:
            if (depth > 0 || rnd(mu, 8) == 0) {
                mutate_container(mu, o);
            }
            return;
        default:
            hostile_value(mu, o);
            return;
        }
    }
    if (o->type == MSGPACK_OBJECT_ARRAY) {
        for (uint32_t k = 0; k < o->via.array.size && mu->seen <= mu->target; k++) {
            walk(mu, &o->via.array.ptr[k], depth + 1);
        }
    } else if (o->type == MSGPACK_OBJECT_MAP) {
        for (uint32_t k = 0; k < o->via.map.size && mu->seen <= mu->target; k++) {
            /* Keys are left alone (a dropped or added key changes the map): values only. */
            walk(mu, &o->via.map.ptr[k].val, depth + 1);
        }
    }
}

static unsigned count(const msgpack_object *o)
{
    unsigned n = 1;

    if (o->type == MSGPACK_OBJECT_ARRAY) {
        for (uint32_t k = 0; k < o->via.array.size; k++) {
            n += count(&o->via.array.ptr[k]);
        }
    } else if (o->type == MSGPACK_OBJECT_MAP) {
        for (uint32_t k = 0; k < o->via.map.size; k++) {
            n += count(&o->via.map.ptr[k].val);
        }
    }
    return n;
}

size_t LLVMFuzzerCustomMutator(uint8_t *data, size_t size, size_t max_size, unsigned int seed)
{
    msgpack_zone zone;
    msgpack_object root;
    msgpack_sbuffer sb;
    msgpack_packer pk;
    struct mut mu = { .seed = seed, .zone = &zone };
    size_t off = 0, out = 0;

    struct sbx_err err;

    /* The decoder's pre-scan first: msgpack-c alone trusts a header's length (an array32 of
     * 2^32-1 entries would allocate that many objects). */
    if (seed % 4 == 0 || sbx_msgpack_validate(data, size, &err) != 0 ||
        !msgpack_zone_init(&zone, 4096)) {
        return LLVMFuzzerMutate(data, size, max_size);
    }
    if (msgpack_unpack((const char *)data, size, &off, &zone, &root) != MSGPACK_UNPACK_SUCCESS ||
        off != size) {
        msgpack_zone_destroy(&zone);
        return LLVMFuzzerMutate(data, size, max_size);
    }
    mu.target = rnd(&mu, count(&root));
    walk(&mu, &root, 0);
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    if (msgpack_pack_object(&pk, root) == 0 && sb.size <= max_size && sb.size > 0) {
        memcpy(data, sb.data, sb.size);
        out = sb.size;
    }
    msgpack_sbuffer_destroy(&sb);
    msgpack_zone_destroy(&zone);
    return out > 0 ? out : LLVMFuzzerMutate(data, size, max_size);
}
#endif /* SBX_FUZZ_STRUCTURED */
