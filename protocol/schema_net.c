/*
 * The wire schema's net records (sbx/schema.h): net.connect params and result (§20.1) and the
 * entries of net.listening (§20.2). One pack function and one read function each, shared by the
 * agent and libsbx.
 */
#include <string.h>

#include "sbx/schema.h"
#include "schema_int.h"

/* Longest `proto` and `addr` of a net.listening entry ("tcp6"; an IPv6 address in text form). */
#define PROTO_MAX 8
#define ADDR_MAX  64

/* --- net.connect (§20.1) ------------------------------------------------------------------- */

void sbx_net_connect_params_pack(msgpack_packer *pk, const struct sbx_net_connect_params *p)
{
    (void)msgpack_pack_map(pk, 1 + (p->host != NULL) + (p->timeout_ms != 0));
    sbx_pack_kv_u64(pk, "port", p->port);
    if (p->host != NULL) {
        sbx_pack_kv_str(pk, "host", p->host);
    }
    if (p->timeout_ms != 0) {
        sbx_pack_kv_u64(pk, "timeout_ms", p->timeout_ms);
    }
}

int sbx_net_connect_params_read(const msgpack_object *params, struct sbx_net_connect_params *p,
                                struct sbx_err *err)
{
    uint64_t v = 0;
    int r;

    memset(p, 0, sizeof(*p));
    sbx_err_clear(err);
    if (sbx_param_u64(params, "port", SBX_REQUIRED, 1, 65535, &v, err) != 0) {
        return -1;
    }
    p->port = (uint32_t)v;
    r = sbx_param_str(params, "host", SBX_OPTIONAL, SBX_NET_HOST_MAX, &p->host, &p->host_len, err);
    if (r < 0) {
        return -1;
    }
    if (r == 0 && (p->host_len == 0 || !sbx_utf8_valid(p->host, p->host_len) ||
                   memchr(p->host, '\0', p->host_len) != NULL)) {
        p->host = NULL;
        p->host_len = 0;
        return sbx_err_param(err, "host", "host must be a non-empty UTF-8 string without NUL");
    }
    v = 0;
    if (sbx_param_u64(params, "timeout_ms", SBX_OPTIONAL, 0, UINT32_MAX, &v, err) < 0) {
        return -1;
    }
    p->timeout_ms = (uint32_t)v;
    return 0;
}

void sbx_net_connect_result_pack(msgpack_packer *pk, const struct sbx_net_connect_result *r)
{
    (void)msgpack_pack_map(pk, 2);
    sbx_pack_kv_u64(pk, "in", r->in);
    sbx_pack_kv_u64(pk, "out", r->out);
}

int sbx_net_connect_result_read(const msgpack_object *o, struct sbx_net_connect_result *r,
                                struct sbx_err *err)
{
    memset(r, 0, sizeof(*r));
    if (o == NULL || o->type != MSGPACK_OBJECT_MAP) {
        return sbx_err_set(err, SBX_E_BAD_MESSAGE, "net.connect result: not a map");
    }
    if (sbx__need_sid(o, "in", &r->in, err) < 0 || sbx__need_sid(o, "out", &r->out, err) < 0) {
        return sbx__bad_message(err, "net.connect result");
    }
    if (r->in == r->out) {
        (void)sbx_err_param(err, "out", "in and out are the same stream");
        return sbx__bad_message(err, "net.connect result");
    }
    return 0;
}

/* --- net.listening entries (§20.2) --------------------------------------------------------- */

void sbx_listening_pack(msgpack_packer *pk, const struct sbx_listening *l)
{
    (void)msgpack_pack_map(pk, 4);
    sbx_pack_kv_str(pk, "proto", l->proto);
    sbx_pack_kv_str(pk, "addr", l->addr);
    sbx_pack_kv_u64(pk, "port", l->port);
    if (l->has_pid) {
        sbx_pack_kv_u64(pk, "pid", l->pid);
    } else {
        sbx_pack_kv_nil(pk, "pid");
    }
}

int sbx_listening_read(const msgpack_object *o, struct sbx_listening *l, struct sbx_err *err)
{
    uint64_t v = 0;
    int r;

    memset(l, 0, sizeof(*l));
    if (o == NULL || o->type != MSGPACK_OBJECT_MAP) {
        return sbx_err_set(err, SBX_E_BAD_MESSAGE, "net.listening entry: not a map");
    }
    if (sbx_param_str(o, "proto", SBX_REQUIRED, PROTO_MAX, &l->proto, &l->proto_len, err) != 0 ||
        sbx_param_str(o, "addr", SBX_REQUIRED, ADDR_MAX, &l->addr, &l->addr_len, err) != 0 ||
        sbx__need_u64(o, "port", 0, 65535, &v, err) < 0) {
        return sbx__bad_message(err, "net.listening entry");
    }
    l->port = (uint32_t)v;
    if ((r = sbx_param_u64(o, "pid", SBX_OPTIONAL, 0, UINT32_MAX, &v, err)) < 0) {
        return sbx__bad_message(err, "net.listening entry");
    }
    l->has_pid = r == 0;
    l->pid = r == 0 ? (uint32_t)v : 0;
    return 0;
}
