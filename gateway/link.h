/*
 * The gateway's own connection to a sandbox's agent (a "link"), shared by everything that works
 * on a sandbox without an SDK WebSocket: the HTTP ingress and exposeHttp (ingress.c), fetch
 * (fetch.c), deploy jobs (deploy.c) and SSH sessions (ssh.c). One per sandbox, opened on first
 * use, multiplexing every user's requests and streams over one agent connection (the vm
 * backend's proxy has four agent ports; sessions take the rest).
 *
 * A user embeds a struct gw_link_user and joins: `up` comes once the agent said hello (at once
 * when it already has), `down` once when the link ends (EOF, the sandbox stopped, an error, no
 * hello within --agent-hello-timeout of the connect's start);
 * after `down` the user must not touch the connection again. Every request and every stream
 * the user made is failed through the usual events (RESPONSE with error EOF, CANCEL local)
 * before `down`.
 *
 * Requests: pass a struct gw_link_req (embedded in the user's state, its fn set) as the typed
 * call's `user`; its RESPONSE goes to fn. Streams: attach a struct gw_link_stream with
 * sbx_conn_stream_set_user; DATA, END, CANCEL, CREDIT and TRANSFER_DONE go to its fn. EXIT and
 * NOTIFY events go to every joined user's `event` (may be NULL), and so does the TRANSFER_DONE
 * of an upload whose stream its user already ended with sbx_conn_end (the core forgets a stream,
 * and its user pointer, once its end is sent): match it by ev->stream. After each write to the
 * agent completes, every user's `drained` (may be NULL) is called: feeders write more there.
 *
 * Calls made outside a link callback must be followed by gw_link_flush. Inside one (up, down,
 * event, drained, a req or stream fn) the link flushes on return.
 *
 * A link with no user closes after GW_LINK_IDLE_MS, freeing its agent port.
 */
#ifndef SBX_GW_LINK_H
#define SBX_GW_LINK_H

#include <stdbool.h>
#include <stddef.h>

#include "gw.h"

#define GW_LINK_IDLE_MS 10000

struct gw_link;

struct gw_link_user {
    struct gw_link_user *next; /* the link's list (the link's) */
    void (*up)(struct gw_link_user *u, struct sbx_conn *c);
    void (*down)(struct gw_link_user *u, const char *why);
    void (*event)(struct gw_link_user *u, const struct sbx_event *ev); /* EXIT, NOTIFY */
    void (*drained)(struct gw_link_user *u);
    bool joined; /* the link's */
    bool is_up;  /* the link's: up was called */
};

struct gw_link_req {
    void (*fn)(struct gw_link_req *r, const struct sbx_event *ev);
};

struct gw_link_stream {
    void (*fn)(struct gw_link_stream *st, const struct sbx_event *ev);
};

/* @sb's link, opened when it has none (connect + hello start now). NULL with a message in @why
 * when @sb is not READY, its address is not a unix socket, or out of memory. */
struct gw_link *gw_link_get(struct gw_sandbox *sb, char *why, size_t whylen);

/* Join @u to @l (up at once when the link is up). Leaving is gw_link_leave (safe from any
 * callback, including @u's own; a user that got `down` is already out). */
void gw_link_join(struct gw_link *l, struct gw_link_user *u);
void gw_link_leave(struct gw_link *l, struct gw_link_user *u);

/* The agent connection, or NULL when the link is not up. */
struct sbx_conn *gw_link_conn(struct gw_link *l);
/* The sandbox of @l. */
struct gw_sandbox *gw_link_sandbox(struct gw_link *l);

/* Write what the connection has queued. */
void gw_link_flush(struct gw_link *l);

/* End @sb's link if it has one (the sandbox stops, dies, or the gateway lets go of it): users
 * get `down` with @why. */
void gw_link_close(struct gw_sandbox *sb, const char *why);

#endif /* SBX_GW_LINK_H */
