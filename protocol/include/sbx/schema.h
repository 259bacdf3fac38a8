/*
 * The wire schema: method names, and every record that crosses the wire in both directions, with
 * one pack and one read function each, used by the agent and by every client alike. A record is
 * written by hand from its table in PROTOCOL.md (the section is named at each), so the two sides
 * cannot drift apart: there is no second encoder or decoder of it anywhere.
 *
 * Pack functions write exactly one msgpack value (the record's map) and never fail on their own;
 * a failed write poisons the frame (sbx_out_end reports it). Read functions check every field
 * the table marks as present (type and range) and return 0, or -1 with BAD_MESSAGE naming the
 * field; unknown keys are ignored (§4.3). Pointers a read function stores refer into the msgpack
 * object and live as long as it does.
 */
#ifndef SBX_SCHEMA_H
#define SBX_SCHEMA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <msgpack.h>

#include "sbx/err.h"
#include "sbx/msg.h"

/* --- method and notification names (§11, §21) ------------------------------------------- */

#define SBX_M_HELLO                  "hello"
#define SBX_M_PING                   "ping"
#define SBX_M_INFO                   "info"
#define SBX_M_SHUTDOWN               "shutdown"
#define SBX_M_LIFETIME_GET           "lifetime.get"
#define SBX_M_LIFETIME_EXTEND        "lifetime.extend"
#define SBX_M_CLOCK_SET              "clock.set"
#define SBX_M_ENV_GET                "env.get"
#define SBX_M_ENV_SET                "env.set"
#define SBX_M_ENV_UNSET              "env.unset"
#define SBX_M_ENV_LIST               "env.list"
#define SBX_M_PROC_SPAWN             "proc.spawn"
#define SBX_M_PROC_WAIT              "proc.wait"
#define SBX_M_PROC_KILL              "proc.kill"
#define SBX_M_PROC_LIST              "proc.list"
#define SBX_M_PROC_CLOSE_STDIN       "proc.close_stdin"
#define SBX_M_PROC_RELEASE           "proc.release"
#define SBX_M_PROC_RESIZE            "proc.resize"
#define SBX_M_PROC_ATTACH            "proc.attach"
#define SBX_M_FS_STAT                "fs.stat"
#define SBX_M_FS_LSTAT               "fs.lstat"
#define SBX_M_FS_READDIR             "fs.readdir"
#define SBX_M_FS_MKDIR               "fs.mkdir"
#define SBX_M_FS_REMOVE              "fs.remove"
#define SBX_M_FS_RENAME              "fs.rename"
#define SBX_M_FS_COPY                "fs.copy"
#define SBX_M_FS_CHMOD               "fs.chmod"
#define SBX_M_FS_CHOWN               "fs.chown"
#define SBX_M_FS_SYMLINK             "fs.symlink"
#define SBX_M_FS_LINK                "fs.link"
#define SBX_M_FS_READLINK            "fs.readlink"
#define SBX_M_FS_REALPATH            "fs.realpath"
#define SBX_M_FS_TRUNCATE            "fs.truncate"
#define SBX_M_FS_UTIME               "fs.utime"
#define SBX_M_FS_MKTEMP              "fs.mktemp"
#define SBX_M_FS_WALK                "fs.walk"
#define SBX_M_FS_GLOB                "fs.glob"
#define SBX_M_FS_WATCH               "fs.watch"
#define SBX_M_FS_UNWATCH             "fs.unwatch"
#define SBX_M_FS_OPEN                "fs.open"
#define SBX_M_FS_READ                "fs.read"
#define SBX_M_FS_WRITE               "fs.write"
#define SBX_M_FS_SEEK                "fs.seek"
#define SBX_M_FS_FSTAT               "fs.fstat"
#define SBX_M_FS_FSYNC               "fs.fsync"
#define SBX_M_FS_FTRUNCATE           "fs.ftruncate"
#define SBX_M_FS_CLOSE               "fs.close"
#define SBX_M_FS_UMASK               "fs.umask"
#define SBX_M_FS_FUTIMES             "fs.futimes"
#define SBX_M_FS_FLOCK               "fs.flock"
#define SBX_M_FS_FUNLOCK             "fs.funlock"
#define SBX_M_TRANSFER_UPLOAD        "transfer.upload"
#define SBX_M_TRANSFER_DOWNLOAD      "transfer.download"
#define SBX_M_TRANSFER_UPLOAD_TREE   "transfer.upload_tree"
#define SBX_M_TRANSFER_DOWNLOAD_TREE "transfer.download_tree"
#define SBX_M_PACK_CREATE            "pack.create"
#define SBX_M_REPL_START             "repl.start"
#define SBX_M_REPL_EVAL              "repl.eval"
#define SBX_M_REPL_CLOSE             "repl.close"
#define SBX_M_REPL_LIST              "repl.list"
#define SBX_M_NET_CONNECT            "net.connect"
#define SBX_M_NET_LISTENING          "net.listening"

#define SBX_N_ERROR                  "error"
#define SBX_N_STREAM_CREDIT          "stream.credit"
#define SBX_N_STREAM_END             "stream.end"
#define SBX_N_STREAM_CANCEL          "stream.cancel"
#define SBX_N_PROC_EXIT              "proc.exit"
#define SBX_N_TRANSFER_DONE          "transfer.done"
#define SBX_N_REPL_RESULT            "repl.result"
#define SBX_N_FS_EVENT               "fs.event"
#define SBX_N_PACK_PROGRESS          "pack.progress"
#define SBX_N_PACK_MANIFEST          "pack.manifest"

/* --- hello params (§6.2) ------------------------------------------------------------------- */

struct sbx_hello {
    uint64_t version;
    uint64_t min_version; /* read: the default (1, or version if below) when absent */
    const char *client;   /* NULL: absent */
    size_t client_len;
    const char *const *caps;    /* pack: NULL-terminated list, or NULL for none */
    const msgpack_object *capv; /* read: the capabilities array, or NULL */
    const char *token;          /* NULL: absent */
    size_t token_len;
    /* The credit the agent's out streams start with on this connection (§6.2, §8.3): 0 absent
     * (they start with stream_window), else SBX_RECV_WINDOW_MIN..SBX_STREAM_WINDOW. */
    uint64_t recv_window;
};

void sbx_hello_pack(msgpack_packer *pk, const struct sbx_hello *h);
/* Read hello params; every violation of §6.2 is BAD_PARAM naming the field ("capabilities[3]"),
 * min_version above version included. */
int sbx_hello_read(const msgpack_object *params, struct sbx_hello *h, struct sbx_err *err);

/* --- hello result (§6.4) ------------------------------------------------------------------- */

struct sbx_limits {
    uint64_t frame_max, chunk_max, stream_window, max_streams, max_procs, max_conns;
};

struct sbx_hello_result {
    uint64_t version;
    const char *agent, *agent_version; /* read: NUL-free, not NUL-terminated: see *_len */
    size_t agent_len, agent_version_len;
    const char *const *caps;    /* pack: NULL-terminated */
    const msgpack_object *capv; /* read: the capabilities array */
    struct sbx_limits limits;
    uint64_t conn;
    uint64_t recv_window; /* 0: absent (out streams start with limits.stream_window) */
};

void sbx_hello_result_pack(msgpack_packer *pk, const struct sbx_hello_result *r);
int sbx_hello_result_read(const msgpack_object *o, struct sbx_hello_result *r, struct sbx_err *err);
/* True when the read result @r announces capability @cap. */
bool sbx_hello_result_has_cap(const struct sbx_hello_result *r, const char *cap);

/* --- the exit map (§14.3) ------------------------------------------------------------------ */

struct sbx_exit {
    uint32_t id;
    uint32_t pid;
    bool exited; /* true: `code` holds the exit status; false: killed by `signo` */
    int code;    /* 0..255 */
    int signo;   /* 1..64 */
    bool core;
    uint64_t duration_ns;
    bool drained;
    bool timed_out;
    bool oom; /* an OOM kill in the process's cgroup (§14.10); read: false when absent */
    uint64_t stdout_bytes, stderr_bytes;
    uint64_t maxrss_kb, utime_us, stime_us;
};

void sbx_exit_pack(msgpack_packer *pk, const struct sbx_exit *x);
int sbx_exit_read(const msgpack_object *o, struct sbx_exit *x, struct sbx_err *err);
/* The shell-style status: code, or 128 + signo. */
int sbx_exit_status(const struct sbx_exit *x);

/* --- FileInfo (§17.2) ---------------------------------------------------------------------- */

struct sbx_fileinfo {
    const char *type; /* "file", "dir", ...; read: NUL-terminated copy in type_buf */
    char type_buf[16];
    uint64_t size, mode, nlink, ino, dev, rdev, blksize, blocks;
    uint32_t uid, gid;
    int64_t atime_ns, mtime_ns, ctime_ns;
    bool has_birthtime;
    int64_t birthtime_ns;
    const char *target; /* fs.lstat of a symlink, else NULL */
    size_t target_len;
};

void sbx_fileinfo_pack(msgpack_packer *pk, const struct sbx_fileinfo *fi);
int sbx_fileinfo_read(const msgpack_object *o, struct sbx_fileinfo *fi, struct sbx_err *err);

/* --- proc.spawn params (§14.2, §15.1; schema_proc.c) --------------------------------------- */

/* stdio modes of proc.spawn (§14.2). DEFAULT: the parameter is absent (stdin "null", stdout and
 * stderr "pipe"). */
enum sbx_stdio {
    SBX_STDIO_DEFAULT = 0,
    SBX_STDIO_PIPE,
    SBX_STDIO_NULL,
    SBX_STDIO_STDOUT, /* stderr only: wherever stdout goes */
};

/* The `pty` parameter of proc.spawn (§15.1). 0 / NULL: the default (24, 80, "xterm-256color"). */
struct sbx_pty_params {
    uint32_t rows, cols;
    const char *term;
    size_t term_len; /* read only */
};

/*
 * proc.spawn params (§14.2). A zeroed struct plus argv (or command) is a valid request; every
 * other field left zero is left out (the agent's default applies).
 *
 * For packing, strings are NUL-terminated and arrays NULL-terminated. `env` entries are
 * "NAME=VALUE" (set) or "NAME" without '=' (remove the variable: nil in the map).
 * The read functions fill the *_len fields and the *v msgpack views instead; their strings point
 * into the object, are not NUL-terminated and hold no NUL byte.
 */
struct sbx_spawn_params {
    const char *const *argv; /* pack: NULL-terminated; NULL when `command` is used */
    const char *command;     /* NULL: absent */
    const char *const *env;  /* pack: NULL-terminated "NAME=VALUE" / "NAME"; NULL: none */
    bool clear_env;
    const char *cwd;  /* NULL: absent ("/") */
    const char *user; /* NULL: absent */
    bool has_uid, has_gid, has_groups;
    uint32_t uid, gid;
    const uint32_t *groups; /* pack: ngroups entries */
    uint32_t ngroups;
    enum sbx_stdio stdin_mode, stdout_mode, stderr_mode;
    uint32_t timeout_ms; /* 0: none */
    int kill_signal;     /* 0: default (SIGTERM); 1..64 */
    bool has_kill_grace_ms, has_drain_ms;
    uint32_t kill_grace_ms, drain_ms;
    const struct sbx_pty_params *pty; /* NULL: no PTY */
    const char *tag;                  /* NULL: absent */
    /* Limits of the process's cgroup (§14.10, capability "limits"); 0: absent. */
    uint64_t memory_max; /* bytes, >= SBX_MEMORY_MAX_MIN */
    uint32_t pids_max;   /* 1 .. SBX_PIDS_MAX_MAX */
    uint32_t cpu_max;    /* percent of one CPU, 1 .. SBX_CPU_MAX_MAX */
    /* read only: */
    const msgpack_object *argvv;   /* argv: 1..4096 checked bstr entries; NULL with command */
    const msgpack_object *envv;    /* env: a checked {bstr: bstr|nil} map, or NULL */
    const msgpack_object *groupsv; /* groups: an array of ngroups uints <= 2^32-2, or NULL */
    size_t command_len, cwd_len, user_len, tag_len;
    struct sbx_pty_params pty_buf; /* pty points here after a read */
};

/* Pack the params map. Never fails on its own (a failed write poisons the frame). */
void sbx_spawn_params_pack(msgpack_packer *pk, const struct sbx_spawn_params *p);
/*
 * Read and check proc.spawn params against §14.2, §15.1 and §23: every param's presence, type
 * and range (exactly one of argv/command, user xor uid, env names and values, stdio values,
 * signals, pty sizes and an ASCII term), so a request that passes is one the agent may only
 * refuse for what it finds in the guest. 0, or -1 with BAD_PARAM naming the field ("argv[3]",
 * "pty.rows", "groups[1]"; "env" for an env entry, §7.5). What depends on the guest (the user
 * exists, PATH lookup, a PTY can be opened) is the agent's.
 */
int sbx_spawn_params_read(const msgpack_object *params, struct sbx_spawn_params *p,
                          struct sbx_err *err);
/*
 * Read only the params repl.start shares with proc.spawn (§16.2): env, clear_env, cwd, user,
 * uid, gid, groups, memory_max, pids_max, cpu_max, with the same rules; other fields are left
 * zero. 0, or -1 with BAD_PARAM.
 */
int sbx_spawn_identity_read(const msgpack_object *params, struct sbx_spawn_params *p,
                            struct sbx_err *err);

/* --- proc.spawn result (§14.2) ------------------------------------------------------------- */

struct sbx_spawn_result {
    uint32_t id, pid;
    uint32_t in, out, err; /* stream ids; 0: nil */
};

void sbx_spawn_result_pack(msgpack_packer *pk, const struct sbx_spawn_result *r);
int sbx_spawn_result_read(const msgpack_object *o, struct sbx_spawn_result *r, struct sbx_err *err);

/* --- proc.attach params and result (§14.9; schema_proc.c) -------------------------------- */

/* proc.attach params. For packing, zeroed fields other than `stdin` are left out; `stdin` is
 * packed (as false) only when false, so set it to true for the default. A read fills every
 * field, `stdin` true when absent. */
struct sbx_attach_params {
    uint32_t id;
    bool has_from, has_stderr_from; /* else: from the oldest retained offset */
    uint64_t from, stderr_from;
    bool stdin; /* default true: also take over the process's stdin */
    bool steal; /* take over from another live connection that holds the output */
};

void sbx_attach_params_pack(msgpack_packer *pk, const struct sbx_attach_params *p);
/* Read and check proc.attach params: 0, or -1 with BAD_PARAM naming the field. */
int sbx_attach_params_read(const msgpack_object *params, struct sbx_attach_params *p,
                           struct sbx_err *err);

/* proc.attach result: {stdin, stdout, stderr: sid|nil, stdout_start, stderr_start: uint|nil,
 * stdout_dropped, stderr_dropped: uint}. A *_dropped count is the bytes lost before the start
 * offset (the requested offset, or 0, up to *_start); read as 0 when absent. */
struct sbx_attach_result {
    uint32_t stdin_sid, stdout_sid, stderr_sid; /* 0: nil */
    bool has_stdout_start, has_stderr_start;
    uint64_t stdout_start, stderr_start;
    uint64_t stdout_dropped, stderr_dropped;
};

void sbx_attach_result_pack(msgpack_packer *pk, const struct sbx_attach_result *r);
/* Read the result: 0, or -1 with BAD_MESSAGE naming the field; an output stream without its
 * start offset is refused ("stdout_start"). */
int sbx_attach_result_read(const msgpack_object *o, struct sbx_attach_result *r,
                           struct sbx_err *err);

/* --- net.connect, net.listening (§20; schema_net.c) ---------------------------------------- */

#define SBX_NET_HOST_MAX           255
#define SBX_NET_CONNECT_TIMEOUT_MS 10000 /* the default of timeout_ms */

/* net.connect params (§20.1). For packing, `host` is NUL-terminated (host_len ignored) and NULL
 * leaves it out; timeout_ms 0 leaves it out. A read sets host NULL when absent (the agent's
 * default "127.0.0.1"; not NUL-terminated otherwise: see host_len) and timeout_ms 0 when absent
 * or 0. */
struct sbx_net_connect_params {
    const char *host;
    size_t host_len;
    uint32_t port;       /* 1 .. 65535 */
    uint32_t timeout_ms; /* 0: default SBX_NET_CONNECT_TIMEOUT_MS */
};

void sbx_net_connect_params_pack(msgpack_packer *pk, const struct sbx_net_connect_params *p);
/* Read and check net.connect params: port 1..65535, host a str of at most SBX_NET_HOST_MAX bytes
 * of valid UTF-8 without NUL (whether it is an address literal is the agent's), timeout_ms a
 * u32. 0, or -1 with BAD_PARAM naming the field. */
int sbx_net_connect_params_read(const msgpack_object *params, struct sbx_net_connect_params *p,
                                struct sbx_err *err);

/* net.connect result {in, out}: the socket's two streams. */
struct sbx_net_connect_result {
    uint32_t in, out;
};

void sbx_net_connect_result_pack(msgpack_packer *pk, const struct sbx_net_connect_result *r);
int sbx_net_connect_result_read(const msgpack_object *o, struct sbx_net_connect_result *r,
                                struct sbx_err *err);

/* One entry of net.listening's `sockets` (§20.2). Pack: proto and addr NUL-terminated (the
 * *_len fields ignored). Read: they point into the object, not NUL-terminated. */
struct sbx_listening {
    const char *proto; /* "tcp", "tcp6", "udp", "udp6" */
    const char *addr;  /* "0.0.0.0", "::", "127.0.0.1", ... */
    size_t proto_len, addr_len;
    uint32_t port;
    bool has_pid; /* false: nil */
    uint32_t pid;
};

void sbx_listening_pack(msgpack_packer *pk, const struct sbx_listening *l);
int sbx_listening_read(const msgpack_object *o, struct sbx_listening *l, struct sbx_err *err);

/* --- one-stream results (§17.4, §17.5, §18), repl.eval streams (§16.3), pack.create (§19.1) - */

/* A result that announces one stream: transfer.* (§18), fs.walk, fs.glob ({stream}), and
 * transfer.download's {stream, size, mode}. */
struct sbx_stream_result {
    uint32_t stream;
    bool has_size; /* transfer.download */
    uint64_t size, mode;
};

void sbx_stream_result_pack(msgpack_packer *pk, const struct sbx_stream_result *r);
/* Read {stream: sid} (and size, mode when present, both required for @with_size). */
int sbx_stream_result_read(const msgpack_object *o, bool with_size, struct sbx_stream_result *r,
                           struct sbx_err *err);

/* repl.eval with stream: true (§16.3): {eval, stdout, stderr}. */
struct sbx_eval_streams {
    uint32_t eval, out, err;
};

void sbx_eval_streams_pack(msgpack_packer *pk, const struct sbx_eval_streams *r);
int sbx_eval_streams_read(const msgpack_object *o, struct sbx_eval_streams *r, struct sbx_err *err);

/* pack.create (§19.1): {id, build_stdout?, build_stderr?, archive}; 0 for an absent sid. */
struct sbx_pack_result {
    uint32_t id, build_out, build_err, archive;
};

/* {id, build_stdout?, build_stderr?, archive}: the build's pair only when build_out is set. */
void sbx_pack_result_pack(msgpack_packer *pk, const struct sbx_pack_result *r);
int sbx_pack_result_read(const msgpack_object *o, struct sbx_pack_result *r, struct sbx_err *err);

/* --- stream notifications (§8.3–§8.5) ------------------------------------------------------ */

struct sbx_stream_note {
    uint32_t stream;
    uint32_t bytes;       /* stream.credit */
    bool has_error;       /* stream.end / stream.cancel: an error map came (read into @error) */
    struct sbx_err error; /* read only; pack takes a pointer */
    bool truncated;       /* stream.end */
};

/* [2, "stream.credit", {stream, bytes}] */
void sbx_credit_pack(msgpack_packer *pk, uint32_t stream, uint32_t bytes);
/* [2, "stream.end", {stream, error?, truncated?}]: @e NULL for a normal end. */
void sbx_end_pack(msgpack_packer *pk, uint32_t stream, const struct sbx_err *e, bool truncated);
/* [2, "stream.cancel", {stream, error?}] */
void sbx_cancel_pack(msgpack_packer *pk, uint32_t stream, const struct sbx_err *e);
/* Read the params of stream.credit, stream.end or stream.cancel (@method): a missing or bad
 * `stream` is BAD_MESSAGE naming it; for credit a missing, non-uint or too large `bytes` too. */
int sbx_stream_note_read(const char *method, const msgpack_object *params,
                         struct sbx_stream_note *n, struct sbx_err *err);

/* --- transfer.done (§18.5) ----------------------------------------------------------------- */

struct sbx_transfer_done {
    uint32_t stream;
    bool has_size, has_files;
    uint64_t size, files;
    char sha256[65];      /* "" when absent */
    bool failed;          /* read: an error came, in @error */
    struct sbx_err error; /* read only */
};

/* Success ({stream, size, sha256?, files?}) or, with @e, failure ({stream, error}). */
void sbx_transfer_done_pack(msgpack_packer *pk, const struct sbx_transfer_done *d,
                            const struct sbx_err *e);
int sbx_transfer_done_read(const msgpack_object *o, struct sbx_transfer_done *d,
                           struct sbx_err *err);

/*
 * Check an outgoing message against the schema: a well-formed envelope, an error map with a code
 * and a message, and the params of every notification whose record is defined here. For debug
 * builds, which check every frame before it is sent. Returns 0, or -1 with @err saying what is
 * wrong.
 */
int sbx_schema_check(const uint8_t *payload, size_t len, struct sbx_err *err);

#endif /* SBX_SCHEMA_H */
