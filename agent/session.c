/* session family: hello, ping, info, shutdown, lifetime. */
#include "session.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "agent.h"
#include "cgroup.h"
#include "conn.h"
#include "proc.h"
#include "sbx/schema.h"

const char *const agent_capabilities[] = { "session", "env",       "process",  "process.attach",
                                           "pty",     "fs",        "transfer", "pack",
                                           "repl",    "net",       "fs.umask", "fs.futimes",
                                           "fs.lock", "repl.json", NULL };

/* Compare without an early exit, so the token cannot be guessed byte by byte from timing. */
static bool token_equal(const char *want, const char *got, size_t glen)
{
    size_t wlen = strlen(want);
    unsigned char diff = (unsigned char)(wlen != glen);

    for (size_t i = 0; i < glen; i++) {
        diff |= (unsigned char)(got[i] ^ want[i % (wlen ? wlen : 1)]);
    }
    return diff == 0;
}

int agent_session_hello(struct agent_conn *c, const struct sbx_msg *m, struct sbx_err *err)
{
    struct agent *a = c->a;
    struct sbx_hello h;
    uint64_t ver;
    msgpack_packer *pk;

    if (c->hello_done) {
        sbx_err_set(err, SBX_E_BAD_MESSAGE, "hello already done on this connection");
        return -1;
    }
    if (sbx_hello_read(m->params, &h, err) < 0) {
        return -1;
    }
    if (a->token[0] != '\0' && (h.token == NULL || !token_equal(a->token, h.token, h.token_len))) {
        sbx_err_set(err, SBX_E_AUTH,
                    h.token == NULL ? "this listener needs a token in hello" : "wrong token");
        c->close_after_flush = true; /* after the AUTH reply has been written (§6.5) */
        return -1;
    }
    /* negotiated = min(version, agent_max); it must reach max(min_version, agent_min) (§6.3). */
    ver = h.version > SBX_PROTO_VERSION ? SBX_PROTO_VERSION : h.version;
    if (ver < h.min_version || ver < SBX_PROTO_MIN_VERSION) {
        sbx_err_set(err, SBX_E_VERSION, "client speaks %llu..%llu, agent speaks %u..%u",
                    (unsigned long long)h.min_version, (unsigned long long)h.version,
                    SBX_PROTO_MIN_VERSION, SBX_PROTO_VERSION);
        err->min = SBX_PROTO_MIN_VERSION;
        err->max = SBX_PROTO_VERSION;
        err->has_min = err->has_max = true;
        return -1;
    }
    agent_conn_hello_done(c, (uint32_t)ver);
    if (h.recv_window != 0) {
        c->out_window = (uint32_t)h.recv_window;
    }

    {
        /* "limits" only where there is a workload cgroup to apply them (cgroup.h). */
        const char *caps[ARRAY_SIZE(agent_capabilities) + 1];
        size_t ncaps = 0;
        struct sbx_hello_result res = {
            .version = ver,
            .agent = AGENT_NAME,
            .agent_version = AGENT_VERSION,
            .caps = caps,
            /* max_conns: the cap of this connection's pool (TCP has its own, section 2.1). */
            .limits = { SBX_FRAME_MAX, SBX_STREAM_CHUNK_MAX, SBX_STREAM_WINDOW, SBX_MAX_STREAMS,
                        SBX_MAX_PROCS, agent_conn_pool_cap(c->transport) },
            .conn = c->num,
            .recv_window = h.recv_window, /* echoed: a client then knows it was applied */
        };
        while (agent_capabilities[ncaps] != NULL) {
            caps[ncaps] = agent_capabilities[ncaps];
            ncaps++;
        }
        if (agent_cgroup_on(a)) {
            caps[ncaps++] = "limits";
        }
        caps[ncaps] = NULL;
        pk = agent_conn_begin(c);
        sbx_pack_response_head(pk, m->id);
        sbx_hello_result_pack(pk, &res);
    }
    agent_conn_send(c);
    return AGENT_REPLIED;
}

int agent_session_ping(struct agent_conn *c, const struct sbx_msg *m, struct sbx_err *err)
{
    agent_conn_reply_empty(c, m->id);
    return AGENT_REPLIED;
}

/* Read "MemTotal" and "MemAvailable" from /proc/meminfo (kB). */
static void meminfo(uint64_t *total, uint64_t *avail)
{
    FILE *fp = fopen("/proc/meminfo", "re");
    char line[256];

    *total = *avail = 0;
    if (fp == NULL) {
        return;
    }
    while (fgets(line, sizeof(line), fp) != NULL) {
        unsigned long long v;
        if (sscanf(line, "MemTotal: %llu kB", &v) == 1) {
            *total = v;
        } else if (sscanf(line, "MemAvailable: %llu kB", &v) == 1) {
            *avail = v;
        }
    }
    fclose(fp);
}

int agent_session_info(struct agent_conn *c, const struct sbx_msg *m, struct sbx_err *err)
{
    struct agent *a = c->a;
    msgpack_packer *pk = agent_conn_begin(c);
    double load[3] = { 0, 0, 0 };
    uint64_t running = 0;
    struct agent_link *l;
    uint64_t total, avail;
    FILE *fp;

    fp = fopen("/proc/loadavg", "re");
    if (fp != NULL) {
        if (fscanf(fp, "%lf %lf %lf", &load[0], &load[1], &load[2]) != 3) {
            load[0] = load[1] = load[2] = 0;
        }
        fclose(fp);
    }
    meminfo(&total, &avail);
    for (l = a->procs.next; l != &a->procs; l = l->next) {
        const struct agent_proc *p = agent_container_of(l, struct agent_proc, link);
        running += !agent_proc_done(p) && !p->internal;
    }

    sbx_pack_response_head(pk, m->id);
    msgpack_pack_map(pk, 10);
    sbx_pack_kv_str(pk, "agent", AGENT_NAME);
    sbx_pack_kv_str(pk, "agent_version", AGENT_VERSION);
    sbx_pack_kv_u64(pk, "version", c->version);
    sbx_pack_kv_i64(pk, "pid", getpid());
    sbx_pack_kv_u64(pk, "uptime_ns", agent_boottime_ns());
    sbx_pack_cstr(pk, "load");
    msgpack_pack_array(pk, 3);
    for (int i = 0; i < 3; i++) {
        msgpack_pack_double(pk, load[i]);
    }
    sbx_pack_cstr(pk, "memory");
    msgpack_pack_map(pk, 2);
    sbx_pack_kv_u64(pk, "total_kb", total);
    sbx_pack_kv_u64(pk, "available_kb", avail);
    sbx_pack_cstr(pk, "boot");
    if (a->have_boot) {
        /* CLOCK_BOOTTIME stamps taken in the guest: kernel start -> init -> agent -> ready. */
        msgpack_pack_map(pk, 4);
        sbx_pack_kv_u64(pk, "kernel_ns", a->boot_kernel_ns);
        sbx_pack_kv_u64(pk, "init_ns", a->boot_init_ns);
        sbx_pack_kv_u64(pk, "agent_ns", a->boot_agent_ns);
        sbx_pack_kv_u64(pk, "ready_ns", a->boot_ready_ns);
    } else {
        msgpack_pack_nil(pk);
    }
    sbx_pack_kv_u64(pk, "conns", a->nconns);
    sbx_pack_kv_u64(pk, "procs", running);
    agent_conn_send(c);
    return AGENT_REPLIED;
}

int agent_session_shutdown(struct agent_conn *c, const struct sbx_msg *m, struct sbx_err *err)
{
    char action[16] = "poweroff";

    if (sbx_param_cstr(m->params, "action", SBX_OPTIONAL, action, sizeof(action), err) < 0) {
        return -1;
    }
    if (strcmp(action, "poweroff") != 0 && strcmp(action, "reboot") != 0) {
        sbx_err_param(err, "action", "action must be \"poweroff\" or \"reboot\"");
        return -1;
    }
    if (!c->a->initctl_open) {
        sbx_err_set(err, SBX_E_UNSUPPORTED, "no sbx-init to power off (agent runs standalone)");
        return -1;
    }
    agent_conn_reply_empty(c, m->id);
    agent_initctl_send(c->a, "shutdown action=%s", action);
    return AGENT_REPLIED;
}

/* A lifetime waiter's connection closed: its slot stays, since init answers in order, one reply
 * per question; the answer then goes nowhere (ref.conn is NULL). */
static void lifetime_waiter_gone(struct agent_conn_ref *r)
{
    (void)r;
}

/* Queue request @m for init's lifetime answer; AGENT_LATER, or -1 with @err. */
static int lifetime_wait(struct agent_conn *c, const struct sbx_msg *m, bool extend,
                         struct sbx_err *err)
{
    struct agent_waiter *w = calloc(1, sizeof(*w));

    if (w == NULL) {
        return sbx_err_oom(err);
    }
    agent_conn_ref_add(c, &w->ref, lifetime_waiter_gone);
    w->id = m->id;
    w->extend = extend;
    agent_list_add_tail(&c->a->lifetime_waiters, &w->link);
    return AGENT_LATER;
}

int agent_session_lifetime_get(struct agent_conn *c, const struct sbx_msg *m, struct sbx_err *err)
{
    if (!c->a->initctl_open) {
        msgpack_packer *pk = agent_conn_begin(c);
        sbx_pack_response_head(pk, m->id);
        msgpack_pack_map(pk, 1);
        sbx_pack_kv_str(pk, "mode", "none");
        agent_conn_send(c);
        return AGENT_REPLIED;
    }
    if (lifetime_wait(c, m, false, err) < 0) {
        return -1;
    }
    agent_initctl_send(c->a, "lifetime?");
    return AGENT_LATER;
}

int agent_session_lifetime_extend(struct agent_conn *c, const struct sbx_msg *m,
                                  struct sbx_err *err)
{
    uint64_t secs;

    if (sbx_param_u64(m->params, "seconds", SBX_REQUIRED, 1, INT32_MAX, &secs, err) != 0) {
        return -1;
    }
    if (!c->a->initctl_open) {
        sbx_err_set(err, SBX_E_UNSUPPORTED, "no sbx-init keeps a lifetime (agent runs standalone)");
        return -1;
    }
    if (lifetime_wait(c, m, true, err) < 0) {
        return -1;
    }
    agent_initctl_send(c->a, "extend seconds=%llu", (unsigned long long)secs);
    return AGENT_LATER;
}

int agent_session_clock_set(struct agent_conn *c, const struct sbx_msg *m, struct sbx_err *err)
{
    int64_t host;
    uint64_t threshold = 50000000u;
    int64_t skew;
    uint64_t mag;
    bool stepped = false;
    msgpack_packer *pk;

    if (sbx_param_i64(m->params, "unix_ns", SBX_REQUIRED, 0, INT64_MAX, &host, err) != 0 ||
        sbx_param_u64(m->params, "threshold_ns", SBX_OPTIONAL, 0, UINT64_MAX, &threshold, err) <
            0) {
        return -1;
    }
    skew = (int64_t)agent_realtime_ns() - host;
    mag = skew < 0 ? (uint64_t)(-skew) : (uint64_t)skew;
    if (mag > threshold) {
        /* Step, do not slew: after a snapshot restore the clock can be minutes behind. */
        struct timespec ts = { (time_t)(host / 1000000000), (long)(host % 1000000000) };
        if (clock_settime(CLOCK_REALTIME, &ts) < 0) {
            sbx_err_sys(err, errno, NULL, "set the clock");
            return -1;
        }
        stepped = true;
    }
    pk = agent_conn_begin(c);
    sbx_pack_response_head(pk, m->id);
    msgpack_pack_map(pk, 2);
    sbx_pack_kv_bool(pk, "stepped", stepped);
    sbx_pack_kv_i64(pk, "skew_ns", skew);
    agent_conn_send(c);
    return AGENT_REPLIED;
}
