/* The wire schema's records: one pack and one read function each (sbx/schema.h). */
#include "sbx/schema.h"

#include <string.h>

#include "sbx/limits.h"
#include "schema_int.h"

/* --- helpers ------------------------------------------------------------------------------- */

/* A record from the peer that breaks its table is a bad message, not a bad param of ours. */
int sbx__bad_message(struct sbx_err *err, const char *what)
{
    char field[SBX_ERR_FIELD_MAX];

    (void)snprintf(field, sizeof(field), "%s", err->field);
    sbx_err_prefix(err, "%s", what);
    memcpy(err->code, SBX_E_BAD_MESSAGE, sizeof(SBX_E_BAD_MESSAGE));
    (void)snprintf(err->field, sizeof(err->field), "%s", field);
    return -1;
}

static void pack_str_or_nil(msgpack_packer *pk, const char *k, const char *v)
{
    sbx_pack_kv_str(pk, k, v);
}

/* A required uint in [min, max] of a record read from the peer. */
int sbx__need_u64(const msgpack_object *o, const char *key, uint64_t min, uint64_t max, uint64_t *v,
                  struct sbx_err *err)
{
    return sbx_param_u64(o, key, SBX_REQUIRED, min, max, v, err) == 0 ? 0 : -1;
}

int sbx__need_u32(const msgpack_object *o, const char *key, uint32_t *v, struct sbx_err *err)
{
    uint64_t x;

    if (sbx__need_u64(o, key, 0, UINT32_MAX, &x, err) < 0) {
        return -1;
    }
    *v = (uint32_t)x;
    return 0;
}

static int need_bool(const msgpack_object *o, const char *key, bool *v, struct sbx_err *err)
{
    return sbx_param_bool(o, key, SBX_REQUIRED, v, err) == 0 ? 0 : -1;
}

static int need_i64(const msgpack_object *o, const char *key, int64_t *v, struct sbx_err *err)
{
    return sbx_param_i64(o, key, SBX_REQUIRED, INT64_MIN, INT64_MAX, v, err) == 0 ? 0 : -1;
}

/* A key that must be present with a nil value or a value read by the caller: 1 when nil. */
int sbx__nil_or(const msgpack_object *o, const char *key, const msgpack_object **v,
                struct sbx_err *err)
{
    *v = sbx_obj_get(o, key);
    if (*v == NULL) {
        return sbx_err_param(err, key, "\"%s\" is missing", key);
    }
    return (*v)->type == MSGPACK_OBJECT_NIL ? 1 : 0;
}

static void pack_caps(msgpack_packer *pk, const char *const *caps)
{
    uint32_t n = 0;

    while (caps != NULL && caps[n] != NULL) {
        n++;
    }
    (void)msgpack_pack_array(pk, n);
    for (uint32_t i = 0; i < n; i++) {
        sbx_pack_cstr(pk, caps[i]);
    }
}

/* --- hello (§6.2, §6.4) -------------------------------------------------------------------- */

void sbx_hello_pack(msgpack_packer *pk, const struct sbx_hello *h)
{
    uint32_t n =
        2 + (h->client != NULL) + (h->caps != NULL) + (h->token != NULL) + (h->recv_window != 0);

    (void)msgpack_pack_map(pk, n);
    sbx_pack_kv_u64(pk, "version", h->version);
    sbx_pack_kv_u64(pk, "min_version", h->min_version);
    if (h->client != NULL) {
        sbx_pack_cstr(pk, "client");
        sbx_pack_strn(pk, h->client, h->client_len);
    }
    if (h->caps != NULL) {
        sbx_pack_cstr(pk, "capabilities");
        pack_caps(pk, h->caps);
    }
    if (h->token != NULL) {
        sbx_pack_cstr(pk, "token");
        sbx_pack_strn(pk, h->token, h->token_len);
    }
    if (h->recv_window != 0) {
        sbx_pack_kv_u64(pk, "recv_window", h->recv_window);
    }
}

int sbx_hello_read(const msgpack_object *params, struct sbx_hello *h, struct sbx_err *err)
{
    int r;

    memset(h, 0, sizeof(*h));
    /* Versions are uints; there is no version 0, so {version: 0} is answered VERSION by the
     * negotiation, not BAD_PARAM here: min_version defaults to 1, or to version if below. */
    if (sbx_param_u64(params, "version", SBX_REQUIRED, 0, UINT64_MAX, &h->version, err) != 0) {
        return -1;
    }
    r = sbx_param_u64(params, "min_version", SBX_OPTIONAL, 0, UINT64_MAX, &h->min_version, err);
    if (r < 0) {
        return -1;
    }
    if (r == 1) {
        h->min_version = h->version < SBX_PROTO_MIN_VERSION ? h->version : SBX_PROTO_MIN_VERSION;
    }
    if (sbx_param_str(params, "token", SBX_OPTIONAL, SBX_TOKEN_MAX, &h->token, &h->token_len, err) <
            0 ||
        sbx_param_str(params, "client", SBX_OPTIONAL, SBX_HELLO_CLIENT_MAX, &h->client,
                      &h->client_len, err) < 0 ||
        sbx_param_array(params, "capabilities", SBX_OPTIONAL, SBX_CAPS_MAX, &h->capv, err) < 0 ||
        sbx_param_u64(params, "recv_window", SBX_OPTIONAL, SBX_RECV_WINDOW_MIN, SBX_STREAM_WINDOW,
                      &h->recv_window, err) < 0) {
        return -1;
    }
    for (uint32_t i = 0; h->capv != NULL && i < h->capv->via.array.size; i++) {
        const msgpack_object *o = &h->capv->via.array.ptr[i];
        if (o->type != MSGPACK_OBJECT_STR || o->via.str.size > SBX_HELLO_CAP_MAX) {
            char field[SBX_ERR_FIELD_MAX];
            (void)snprintf(field, sizeof(field), "capabilities[%u]", i);
            return sbx_err_param(err, field, "%s must be a string of at most %u bytes", field,
                                 SBX_HELLO_CAP_MAX);
        }
    }
    if (h->min_version > h->version) {
        return sbx_err_param(err, "min_version", "min_version %llu is above version %llu",
                             (unsigned long long)h->min_version, (unsigned long long)h->version);
    }
    return 0;
}

void sbx_hello_result_pack(msgpack_packer *pk, const struct sbx_hello_result *r)
{
    (void)msgpack_pack_map(pk, 6 + (r->recv_window != 0));
    sbx_pack_kv_u64(pk, "version", r->version);
    sbx_pack_kv_str(pk, "agent", r->agent);
    sbx_pack_kv_str(pk, "agent_version", r->agent_version);
    sbx_pack_cstr(pk, "capabilities");
    pack_caps(pk, r->caps);
    sbx_pack_cstr(pk, "limits");
    (void)msgpack_pack_map(pk, 6);
    sbx_pack_kv_u64(pk, "frame_max", r->limits.frame_max);
    sbx_pack_kv_u64(pk, "chunk_max", r->limits.chunk_max);
    sbx_pack_kv_u64(pk, "stream_window", r->limits.stream_window);
    sbx_pack_kv_u64(pk, "max_streams", r->limits.max_streams);
    sbx_pack_kv_u64(pk, "max_procs", r->limits.max_procs);
    sbx_pack_kv_u64(pk, "max_conns", r->limits.max_conns);
    sbx_pack_kv_u64(pk, "conn", r->conn);
    if (r->recv_window != 0) {
        sbx_pack_kv_u64(pk, "recv_window", r->recv_window);
    }
}

int sbx_hello_result_read(const msgpack_object *o, struct sbx_hello_result *r, struct sbx_err *err)
{
    const msgpack_object *lim;

    memset(r, 0, sizeof(*r));
    if (o == NULL || o->type != MSGPACK_OBJECT_MAP) {
        return sbx_err_set(err, SBX_E_BAD_MESSAGE, "hello result: not a map");
    }
    if (sbx__need_u64(o, "version", 1, UINT32_MAX, &r->version, err) < 0 ||
        sbx_param_str(o, "agent", SBX_REQUIRED, 256, &r->agent, &r->agent_len, err) != 0 ||
        sbx_param_str(o, "agent_version", SBX_REQUIRED, 256, &r->agent_version,
                      &r->agent_version_len, err) != 0 ||
        sbx_param_array(o, "capabilities", SBX_REQUIRED, 256, &r->capv, err) != 0 ||
        sbx_param_map(o, "limits", SBX_REQUIRED, 64, &lim, err) != 0 ||
        sbx__need_u64(o, "conn", 0, UINT64_MAX, &r->conn, err) < 0) {
        return sbx__bad_message(err, "hello result");
    }
    /* Clients must use the announced limits (§6.4): a missing or impossible one is refused. */
    if (sbx__need_u64(lim, "frame_max", 1, SBX_FRAME_MAX, &r->limits.frame_max, err) < 0 ||
        sbx__need_u64(lim, "chunk_max", 1, SBX_STREAM_CHUNK_MAX, &r->limits.chunk_max, err) < 0 ||
        sbx__need_u64(lim, "stream_window", 1, UINT32_MAX, &r->limits.stream_window, err) < 0 ||
        sbx__need_u64(lim, "max_streams", 1, UINT32_MAX, &r->limits.max_streams, err) < 0 ||
        sbx__need_u64(lim, "max_procs", 1, UINT32_MAX, &r->limits.max_procs, err) < 0 ||
        sbx__need_u64(lim, "max_conns", 1, UINT32_MAX, &r->limits.max_conns, err) < 0) {
        return sbx__bad_message(err, "hello result limits");
    }
    /* Present when the client asked for it: the credit our out streams start with (§6.4). */
    if (sbx_param_u64(o, "recv_window", SBX_OPTIONAL, 1, UINT32_MAX, &r->recv_window, err) < 0) {
        return sbx__bad_message(err, "hello result");
    }
    return 0;
}

bool sbx_hello_result_has_cap(const struct sbx_hello_result *r, const char *cap)
{
    size_t n = strlen(cap);

    for (uint32_t i = 0; r->capv != NULL && i < r->capv->via.array.size; i++) {
        const msgpack_object *o = &r->capv->via.array.ptr[i];
        if (o->type == MSGPACK_OBJECT_STR && o->via.str.size == n &&
            memcmp(o->via.str.ptr, cap, n) == 0) {
            return true;
        }
    }
    return false;
}

/* --- exit map (§14.3) ---------------------------------------------------------------------- */

void sbx_exit_pack(msgpack_packer *pk, const struct sbx_exit *x)
{
    char sigbuf[32];

    (void)msgpack_pack_map(pk, 13);
    sbx_pack_kv_u64(pk, "id", x->id);
    sbx_pack_kv_u64(pk, "pid", x->pid);
    if (x->exited) {
        sbx_pack_kv_i64(pk, "code", x->code);
        sbx_pack_kv_nil(pk, "signal");
        sbx_pack_kv_nil(pk, "signo");
    } else {
        sbx_pack_kv_nil(pk, "code");
        pack_str_or_nil(pk, "signal", sbx_signal_name(x->signo, sigbuf, sizeof(sigbuf)));
        sbx_pack_kv_i64(pk, "signo", x->signo);
    }
    sbx_pack_kv_bool(pk, "core", x->core);
    sbx_pack_kv_u64(pk, "duration_ns", x->duration_ns);
    sbx_pack_kv_bool(pk, "drained", x->drained);
    sbx_pack_kv_bool(pk, "timed_out", x->timed_out);
    sbx_pack_kv_bool(pk, "oom", x->oom);
    sbx_pack_kv_u64(pk, "stdout_bytes", x->stdout_bytes);
    sbx_pack_kv_u64(pk, "stderr_bytes", x->stderr_bytes);
    sbx_pack_cstr(pk, "rusage");
    (void)msgpack_pack_map(pk, 3);
    sbx_pack_kv_u64(pk, "maxrss_kb", x->maxrss_kb);
    sbx_pack_kv_u64(pk, "utime_us", x->utime_us);
    sbx_pack_kv_u64(pk, "stime_us", x->stime_us);
}

int sbx_exit_read(const msgpack_object *o, struct sbx_exit *x, struct sbx_err *err)
{
    const msgpack_object *code, *signo, *ru;
    uint64_t v;
    int rc, rs;

    memset(x, 0, sizeof(*x));
    if (o == NULL || o->type != MSGPACK_OBJECT_MAP) {
        return sbx_err_set(err, SBX_E_BAD_MESSAGE, "exit map: not a map");
    }
    if (sbx__need_u32(o, "id", &x->id, err) < 0 || sbx__need_u32(o, "pid", &x->pid, err) < 0 ||
        (rc = sbx__nil_or(o, "code", &code, err)) < 0 ||
        (rs = sbx__nil_or(o, "signo", &signo, err)) < 0) {
        return sbx__bad_message(err, "exit map");
    }
    if (rc == 0) {
        if (sbx__need_u64(o, "code", 0, 255, &v, err) < 0) {
            return sbx__bad_message(err, "exit map");
        }
        x->exited = true;
        x->code = (int)v;
    } else if (rs == 0) {
        if (sbx__need_u64(o, "signo", 1, 64, &v, err) < 0) {
            return sbx__bad_message(err, "exit map");
        }
        x->signo = (int)v;
    } else {
        sbx_err_param(err, "code", "neither code nor signo is set");
        return sbx__bad_message(err, "exit map");
    }
    if (need_bool(o, "core", &x->core, err) < 0 ||
        sbx__need_u64(o, "duration_ns", 0, UINT64_MAX, &x->duration_ns, err) < 0 ||
        need_bool(o, "drained", &x->drained, err) < 0 ||
        need_bool(o, "timed_out", &x->timed_out, err) < 0 ||
        /* oom came with capability "limits": an older agent's map has none (false). */
        sbx_param_bool(o, "oom", SBX_OPTIONAL, &x->oom, err) < 0 ||
        sbx__need_u64(o, "stdout_bytes", 0, UINT64_MAX, &x->stdout_bytes, err) < 0 ||
        sbx__need_u64(o, "stderr_bytes", 0, UINT64_MAX, &x->stderr_bytes, err) < 0 ||
        sbx_param_map(o, "rusage", SBX_REQUIRED, 16, &ru, err) != 0 ||
        sbx__need_u64(ru, "maxrss_kb", 0, UINT64_MAX, &x->maxrss_kb, err) < 0 ||
        sbx__need_u64(ru, "utime_us", 0, UINT64_MAX, &x->utime_us, err) < 0 ||
        sbx__need_u64(ru, "stime_us", 0, UINT64_MAX, &x->stime_us, err) < 0) {
        return sbx__bad_message(err, "exit map");
    }
    return 0;
}

int sbx_exit_status(const struct sbx_exit *x)
{
    return x->exited ? x->code : 128 + x->signo;
}

/* --- FileInfo (§17.2) ---------------------------------------------------------------------- */

void sbx_fileinfo_pack(msgpack_packer *pk, const struct sbx_fileinfo *fi)
{
    (void)msgpack_pack_map(pk, 15 + (fi->target != NULL));
    sbx_pack_kv_str(pk, "type", fi->type);
    sbx_pack_kv_u64(pk, "size", fi->size);
    sbx_pack_kv_u64(pk, "mode", fi->mode);
    sbx_pack_kv_u64(pk, "uid", fi->uid);
    sbx_pack_kv_u64(pk, "gid", fi->gid);
    sbx_pack_kv_u64(pk, "nlink", fi->nlink);
    sbx_pack_kv_u64(pk, "ino", fi->ino);
    sbx_pack_kv_u64(pk, "dev", fi->dev);
    sbx_pack_kv_u64(pk, "rdev", fi->rdev);
    sbx_pack_kv_u64(pk, "blksize", fi->blksize);
    sbx_pack_kv_u64(pk, "blocks", fi->blocks);
    sbx_pack_kv_i64(pk, "atime_ns", fi->atime_ns);
    sbx_pack_kv_i64(pk, "mtime_ns", fi->mtime_ns);
    sbx_pack_kv_i64(pk, "ctime_ns", fi->ctime_ns);
    if (fi->has_birthtime) {
        sbx_pack_kv_i64(pk, "birthtime_ns", fi->birthtime_ns);
    } else {
        sbx_pack_kv_nil(pk, "birthtime_ns");
    }
    if (fi->target != NULL) {
        sbx_pack_cstr(pk, "target");
        sbx_pack_bstr(pk, fi->target, fi->target_len);
    }
}

int sbx_fileinfo_read(const msgpack_object *o, struct sbx_fileinfo *fi, struct sbx_err *err)
{
    const msgpack_object *bt, *t;
    const char *type;
    size_t tlen;
    int rb;

    memset(fi, 0, sizeof(*fi));
    if (o == NULL || o->type != MSGPACK_OBJECT_MAP) {
        return sbx_err_set(err, SBX_E_BAD_MESSAGE, "FileInfo: not a map");
    }
    /* Clients tolerate other type values (§17.2): any short name is kept as it came. */
    if (sbx_param_str(o, "type", SBX_REQUIRED, sizeof(fi->type_buf) - 1, &type, &tlen, err) != 0 ||
        sbx__need_u64(o, "size", 0, UINT64_MAX, &fi->size, err) < 0 ||
        sbx__need_u64(o, "mode", 0, UINT64_MAX, &fi->mode, err) < 0 ||
        sbx__need_u32(o, "uid", &fi->uid, err) < 0 || sbx__need_u32(o, "gid", &fi->gid, err) < 0 ||
        sbx__need_u64(o, "nlink", 0, UINT64_MAX, &fi->nlink, err) < 0 ||
        sbx__need_u64(o, "ino", 0, UINT64_MAX, &fi->ino, err) < 0 ||
        sbx__need_u64(o, "dev", 0, UINT64_MAX, &fi->dev, err) < 0 ||
        sbx__need_u64(o, "rdev", 0, UINT64_MAX, &fi->rdev, err) < 0 ||
        sbx__need_u64(o, "blksize", 0, UINT64_MAX, &fi->blksize, err) < 0 ||
        sbx__need_u64(o, "blocks", 0, UINT64_MAX, &fi->blocks, err) < 0 ||
        need_i64(o, "atime_ns", &fi->atime_ns, err) < 0 ||
        need_i64(o, "mtime_ns", &fi->mtime_ns, err) < 0 ||
        need_i64(o, "ctime_ns", &fi->ctime_ns, err) < 0 ||
        (rb = sbx__nil_or(o, "birthtime_ns", &bt, err)) < 0 ||
        (rb == 0 && need_i64(o, "birthtime_ns", &fi->birthtime_ns, err) < 0)) {
        return sbx__bad_message(err, "FileInfo");
    }
    memcpy(fi->type_buf, type, tlen);
    fi->type_buf[tlen] = '\0';
    fi->type = fi->type_buf;
    fi->has_birthtime = rb == 0;
    t = sbx_obj_get(o, "target");
    if (t != NULL && t->type != MSGPACK_OBJECT_NIL) {
        if (!sbx_obj_bytes(t, &fi->target, &fi->target_len)) {
            sbx_err_param(err, "target", "target must be a byte string");
            return sbx__bad_message(err, "FileInfo");
        }
    }
    return 0;
}

/* --- proc.spawn result (§14.2) ------------------------------------------------------------- */

void sbx__pack_sid_or_nil(msgpack_packer *pk, const char *k, uint32_t sid)
{
    if (sid != 0) {
        sbx_pack_kv_u64(pk, k, sid);
    } else {
        sbx_pack_kv_nil(pk, k);
    }
}

void sbx_spawn_result_pack(msgpack_packer *pk, const struct sbx_spawn_result *r)
{
    (void)msgpack_pack_map(pk, 5);
    sbx_pack_kv_u64(pk, "id", r->id);
    sbx_pack_kv_u64(pk, "pid", r->pid);
    sbx__pack_sid_or_nil(pk, "stdin", r->in);
    sbx__pack_sid_or_nil(pk, "stdout", r->out);
    sbx__pack_sid_or_nil(pk, "stderr", r->err);
}

/* A sid|nil field (present): 0 for nil. */
int sbx__read_sid_or_nil(const msgpack_object *o, const char *key, uint32_t *sid,
                         struct sbx_err *err)
{
    const msgpack_object *v;
    uint64_t x;
    int r = sbx__nil_or(o, key, &v, err);

    *sid = 0;
    if (r != 0) {
        return r < 0 ? -1 : 0;
    }
    if (sbx__need_u64(o, key, 1, UINT32_MAX, &x, err) < 0) {
        return -1;
    }
    *sid = (uint32_t)x;
    return 0;
}

int sbx_spawn_result_read(const msgpack_object *o, struct sbx_spawn_result *r, struct sbx_err *err)
{
    memset(r, 0, sizeof(*r));
    if (o == NULL || o->type != MSGPACK_OBJECT_MAP) {
        return sbx_err_set(err, SBX_E_BAD_MESSAGE, "proc.spawn result: not a map");
    }
    if (sbx__need_u32(o, "id", &r->id, err) < 0 || sbx__need_u32(o, "pid", &r->pid, err) < 0 ||
        sbx__read_sid_or_nil(o, "stdin", &r->in, err) < 0 ||
        sbx__read_sid_or_nil(o, "stdout", &r->out, err) < 0 ||
        sbx__read_sid_or_nil(o, "stderr", &r->err, err) < 0 ||
        sbx__distinct_sids((const uint32_t[]){ r->in, r->out, r->err },
                           (const char *const[]){ "stdin", "stdout", "stderr" }, 3, err) < 0) {
        return sbx__bad_message(err, "proc.spawn result");
    }
    return 0;
}

/* --- one-stream results (§17.4, §17.5, §18), repl.eval streams (§16.3), pack.create (§19.1) - */

/* A required sid of a result read from the peer. */
int sbx__need_sid(const msgpack_object *o, const char *key, uint32_t *sid, struct sbx_err *err)
{
    uint64_t v;

    if (sbx__need_u64(o, key, 1, UINT32_MAX, &v, err) < 0) {
        return -1;
    }
    *sid = (uint32_t)v;
    return 0;
}

int sbx__distinct_sids(const uint32_t *sids, const char *const *keys, size_t n, struct sbx_err *err)
{
    for (size_t i = 0; i < n; i++) {
        for (size_t j = 0; j < i; j++) {
            if (sids[i] != 0 && sids[i] == sids[j]) {
                return sbx_err_param(err, keys[i], "%s and %s are the same stream (%u)", keys[j],
                                     keys[i], sids[i]);
            }
        }
    }
    return 0;
}

/* An optional sid (absent or nil: 0). */
static int opt_sid(const msgpack_object *o, const char *key, uint32_t *sid, struct sbx_err *err)
{
    uint64_t v;
    int r = sbx_param_u64(o, key, SBX_OPTIONAL, 1, UINT32_MAX, &v, err);

    *sid = r == 0 ? (uint32_t)v : 0;
    return r < 0 ? -1 : 0;
}

void sbx_stream_result_pack(msgpack_packer *pk, const struct sbx_stream_result *r)
{
    (void)msgpack_pack_map(pk, 1 + 2 * r->has_size);
    sbx_pack_kv_u64(pk, "stream", r->stream);
    if (r->has_size) {
        sbx_pack_kv_u64(pk, "size", r->size);
        sbx_pack_kv_u64(pk, "mode", r->mode);
    }
}

int sbx_stream_result_read(const msgpack_object *o, bool with_size, struct sbx_stream_result *r,
                           struct sbx_err *err)
{
    memset(r, 0, sizeof(*r));
    if (o == NULL || o->type != MSGPACK_OBJECT_MAP) {
        return sbx_err_set(err, SBX_E_BAD_MESSAGE, "stream result: not a map");
    }
    if (sbx__need_sid(o, "stream", &r->stream, err) < 0) {
        return sbx__bad_message(err, "stream result");
    }
    if (!with_size) {
        return 0;
    }
    if (sbx__need_u64(o, "size", 0, UINT64_MAX, &r->size, err) < 0 ||
        sbx__need_u64(o, "mode", 0, UINT64_MAX, &r->mode, err) < 0) {
        return sbx__bad_message(err, "transfer.download result");
    }
    r->has_size = true;
    return 0;
}

void sbx_eval_streams_pack(msgpack_packer *pk, const struct sbx_eval_streams *r)
{
    (void)msgpack_pack_map(pk, 3);
    sbx_pack_kv_u64(pk, "eval", r->eval);
    sbx_pack_kv_u64(pk, "stdout", r->out);
    sbx_pack_kv_u64(pk, "stderr", r->err);
}

int sbx_eval_streams_read(const msgpack_object *o, struct sbx_eval_streams *r, struct sbx_err *err)
{
    memset(r, 0, sizeof(*r));
    if (o == NULL || o->type != MSGPACK_OBJECT_MAP) {
        return sbx_err_set(err, SBX_E_BAD_MESSAGE, "repl.eval result: not a map");
    }
    if (sbx__need_u32(o, "eval", &r->eval, err) < 0 ||
        sbx__need_sid(o, "stdout", &r->out, err) < 0 ||
        sbx__need_sid(o, "stderr", &r->err, err) < 0 ||
        sbx__distinct_sids((const uint32_t[]){ r->out, r->err },
                           (const char *const[]){ "stdout", "stderr" }, 2, err) < 0) {
        return sbx__bad_message(err, "repl.eval result");
    }
    return 0;
}

void sbx_pack_result_pack(msgpack_packer *pk, const struct sbx_pack_result *r)
{
    (void)msgpack_pack_map(pk, 2 + (r->build_out != 0 ? 2 : 0));
    sbx_pack_kv_u64(pk, "id", r->id);
    if (r->build_out != 0) {
        sbx_pack_kv_u64(pk, "build_stdout", r->build_out);
        sbx_pack_kv_u64(pk, "build_stderr", r->build_err);
    }
    sbx_pack_kv_u64(pk, "archive", r->archive);
}

int sbx_pack_result_read(const msgpack_object *o, struct sbx_pack_result *r, struct sbx_err *err)
{
    memset(r, 0, sizeof(*r));
    if (o == NULL || o->type != MSGPACK_OBJECT_MAP) {
        return sbx_err_set(err, SBX_E_BAD_MESSAGE, "pack.create result: not a map");
    }
    if (sbx__need_u32(o, "id", &r->id, err) < 0 ||
        opt_sid(o, "build_stdout", &r->build_out, err) < 0 ||
        opt_sid(o, "build_stderr", &r->build_err, err) < 0 ||
        sbx__need_sid(o, "archive", &r->archive, err) < 0 ||
        sbx__distinct_sids((const uint32_t[]){ r->build_out, r->build_err, r->archive },
                           (const char *const[]){ "build_stdout", "build_stderr", "archive" }, 3,
                           err) < 0) {
        return sbx__bad_message(err, "pack.create result");
    }
    return 0;
}

/* --- stream notifications (§8.3–§8.5) ------------------------------------------------------ */

void sbx_credit_pack(msgpack_packer *pk, uint32_t stream, uint32_t bytes)
{
    sbx_pack_notify_head(pk, SBX_N_STREAM_CREDIT);
    (void)msgpack_pack_map(pk, 2);
    sbx_pack_kv_u64(pk, "stream", stream);
    sbx_pack_kv_u64(pk, "bytes", bytes);
}

void sbx_end_pack(msgpack_packer *pk, uint32_t stream, const struct sbx_err *e, bool truncated)
{
    sbx_pack_notify_head(pk, SBX_N_STREAM_END);
    (void)msgpack_pack_map(pk, 1 + (e != NULL) + truncated);
    sbx_pack_kv_u64(pk, "stream", stream);
    if (e != NULL) {
        sbx_pack_cstr(pk, "error");
        sbx_pack_err(pk, e);
    }
    if (truncated) {
        sbx_pack_kv_bool(pk, "truncated", true);
    }
}

void sbx_cancel_pack(msgpack_packer *pk, uint32_t stream, const struct sbx_err *e)
{
    sbx_pack_notify_head(pk, SBX_N_STREAM_CANCEL);
    (void)msgpack_pack_map(pk, 1 + (e != NULL));
    sbx_pack_kv_u64(pk, "stream", stream);
    if (e != NULL) {
        sbx_pack_cstr(pk, "error");
        sbx_pack_err(pk, e);
    }
}

/* An optional errormap field: has_error and @e filled when present and not nil. */
static int read_error_field(const msgpack_object *o, bool *has, struct sbx_err *e,
                            struct sbx_err *err)
{
    const msgpack_object *eo = sbx_obj_get(o, "error");

    *has = false;
    if (eo == NULL || eo->type == MSGPACK_OBJECT_NIL) {
        return 0;
    }
    if (eo->type != MSGPACK_OBJECT_MAP) {
        return sbx_err_param(err, "error", "error must be an error map");
    }
    sbx_err_from_obj(eo, e);
    *has = true;
    return 0;
}

int sbx_stream_note_read(const char *method, const msgpack_object *params,
                         struct sbx_stream_note *n, struct sbx_err *err)
{
    uint64_t v;

    memset(n, 0, sizeof(*n));
    if (sbx__need_u64(params, "stream", 1, UINT32_MAX, &v, err) < 0) {
        return sbx__bad_message(err, method);
    }
    n->stream = (uint32_t)v;
    if (strcmp(method, SBX_N_STREAM_CREDIT) == 0) {
        if (sbx__need_u64(params, "bytes", 0, UINT32_MAX, &v, err) < 0) {
            return sbx__bad_message(err, method);
        }
        n->bytes = (uint32_t)v;
        return 0;
    }
    if (read_error_field(params, &n->has_error, &n->error, err) < 0 ||
        (strcmp(method, SBX_N_STREAM_END) == 0 &&
         sbx_param_bool(params, "truncated", SBX_OPTIONAL, &n->truncated, err) < 0)) {
        return sbx__bad_message(err, method);
    }
    return 0;
}

/* --- transfer.done (§18.5) ----------------------------------------------------------------- */

void sbx_transfer_done_pack(msgpack_packer *pk, const struct sbx_transfer_done *d,
                            const struct sbx_err *e)
{
    sbx_pack_notify_head(pk, SBX_N_TRANSFER_DONE);
    if (e != NULL) {
        (void)msgpack_pack_map(pk, 2);
        sbx_pack_kv_u64(pk, "stream", d->stream);
        sbx_pack_cstr(pk, "error");
        sbx_pack_err(pk, e);
        return;
    }
    (void)msgpack_pack_map(pk, 1 + d->has_size + (d->sha256[0] != '\0') + d->has_files);
    sbx_pack_kv_u64(pk, "stream", d->stream);
    if (d->has_size) {
        sbx_pack_kv_u64(pk, "size", d->size);
    }
    if (d->sha256[0] != '\0') {
        sbx_pack_kv_str(pk, "sha256", d->sha256);
    }
    if (d->has_files) {
        sbx_pack_kv_u64(pk, "files", d->files);
    }
}

int sbx_transfer_done_read(const msgpack_object *o, struct sbx_transfer_done *d,
                           struct sbx_err *err)
{
    const char *sha;
    size_t n;
    uint64_t v;
    int r;

    memset(d, 0, sizeof(*d));
    if (sbx__need_u64(o, "stream", 1, UINT32_MAX, &v, err) < 0 ||
        read_error_field(o, &d->failed, &d->error, err) < 0) {
        return sbx__bad_message(err, SBX_N_TRANSFER_DONE);
    }
    d->stream = (uint32_t)v;
    if (d->failed) {
        return 0;
    }
    if ((r = sbx_param_u64(o, "size", SBX_OPTIONAL, 0, UINT64_MAX, &d->size, err)) < 0) {
        return sbx__bad_message(err, SBX_N_TRANSFER_DONE);
    }
    d->has_size = r == 0;
    if ((r = sbx_param_u64(o, "files", SBX_OPTIONAL, 0, UINT64_MAX, &d->files, err)) < 0) {
        return sbx__bad_message(err, SBX_N_TRANSFER_DONE);
    }
    d->has_files = r == 0;
    r = sbx_param_str(o, "sha256", SBX_OPTIONAL, 64, &sha, &n, err);
    if (r < 0 || (r == 0 && n != 64)) {
        if (r == 0) {
            sbx_err_param(err, "sha256", "sha256 must be 64 hex digits");
        }
        return sbx__bad_message(err, SBX_N_TRANSFER_DONE);
    }
    if (r == 0) {
        memcpy(d->sha256, sha, 64);
        d->sha256[64] = '\0';
    }
    return 0;
}

/* --- checking outgoing frames ---------------------------------------------------------------- */

/* An error map: a str code and a str message of at most 1024 bytes (§7.1). */
static int check_errormap(const msgpack_object *o, struct sbx_err *err)
{
    const char *s;
    size_t n;

    if (o->type != MSGPACK_OBJECT_MAP ||
        sbx_param_str(o, "code", SBX_REQUIRED, SBX_ERR_CODE_MAX, &s, &n, err) != 0 || n == 0 ||
        sbx_param_str(o, "message", SBX_REQUIRED, 1024, &s, &n, err) != 0) {
        return sbx_err_set(err, SBX_E_BAD_MESSAGE, "an error map needs a code and a message");
    }
    return 0;
}

int sbx_schema_check(const uint8_t *payload, size_t len, struct sbx_err *err)
{
    struct sbx_decoder d;
    struct sbx_msg m;
    int rc = 0;

    if (sbx_decoder_init(&d) != 0) {
        return 0; /* out of memory: nothing to say about the frame */
    }
    if (sbx_msg_decode(&d, payload, len, &m, err) < 0) {
        rc = -1;
    } else if (m.kind == SBX_MSG_RESPONSE && m.error != NULL) {
        rc = check_errormap(m.error, err);
        if (rc == 0 && m.result->type != MSGPACK_OBJECT_NIL) {
            rc = sbx_err_set(err, SBX_E_BAD_MESSAGE, "an error response has a result");
        }
    } else if (m.kind == SBX_MSG_NOTIFY) {
        char method[SBX_METHOD_MAX + 1];
        memcpy(method, m.method, m.method_len);
        method[m.method_len] = '\0';
        if (m.params == NULL) {
            rc = sbx_err_set(err, SBX_E_BAD_MESSAGE, "%s: params must be a map", method);
        } else if (strcmp(method, SBX_N_ERROR) == 0) {
            rc = check_errormap(m.params, err);
        } else if (strcmp(method, SBX_N_STREAM_CREDIT) == 0 ||
                   strcmp(method, SBX_N_STREAM_END) == 0 ||
                   strcmp(method, SBX_N_STREAM_CANCEL) == 0) {
            struct sbx_stream_note n;
            rc = sbx_stream_note_read(method, m.params, &n, err);
        } else if (strcmp(method, SBX_N_PROC_EXIT) == 0) {
            struct sbx_exit x;
            rc = sbx_exit_read(m.params, &x, err);
        } else if (strcmp(method, SBX_N_TRANSFER_DONE) == 0) {
            struct sbx_transfer_done t;
            rc = sbx_transfer_done_read(m.params, &t, err);
        }
    }
    sbx_decoder_destroy(&d);
    return rc;
}
