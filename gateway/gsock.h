/*
 * A TCP connection to a port inside a sandbox (a "guest socket"), made with the agent's
 * net.connect over the sandbox's link (link.h), for the HTTP ingress (ingress.c) and fetch to a
 * guest server (fetch.c). No guest network is needed: the agent connects from inside the guest.
 *
 * Bytes from the guest come to ops->data; they are acknowledged to the agent (which grants it
 * more credit) when ops->data returns, unless the socket is paused (gw_gsock_pause), in which
 * case they are acknowledged when it is resumed: a slow reader holds the agent's window, never
 * the gateway's memory. Bytes to the guest are queued with gw_gsock_write; ops->writable is
 * called when the queue fell to GW_GSOCK_LOW after gw_gsock_write returned 1 (above
 * GW_GSOCK_HIGH).
 *
 * Callbacks (all may be NULL except closed): connected once (net.connect answered), data, eof
 * (the guest half-closed: no more data), then closed exactly once (an error, the link ended,
 * or both directions finished) — after closed the gsock is freed and must not be used.
 * gw_gsock_close aborts at once: no callback after it.
 */
#ifndef SBX_GW_GSOCK_H
#define SBX_GW_GSOCK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "gw.h"

#define GW_GSOCK_HIGH (1u << 20)
#define GW_GSOCK_LOW  (256u << 10)

struct gw_gsock;

struct gw_gsock_ops {
    void (*connected)(void *user);
    void (*data)(void *user, const uint8_t *data, size_t len);
    void (*eof)(void *user);
    /* @err: NULL when both directions ended cleanly, else what failed ("ECONNREFUSED: ...",
     * "the sandbox stopped", ...); @errno_name: the errno name when the agent gave one
     * ("ECONNREFUSED", "ETIMEDOUT"), else NULL. */
    void (*closed)(void *user, const char *err, const char *errno_name);
    void (*writable)(void *user);
};

/* Connect to @host (an IP literal or "localhost"; NULL: 127.0.0.1) port @port inside @sb.
 * Returns the socket (connecting), or NULL with a message in @why (sandbox not running, out of
 * memory). */
struct gw_gsock *gw_gsock_open(struct gw_sandbox *sb, const char *host, uint16_t port,
                               const struct gw_gsock_ops *ops, void *user, char *why,
                               size_t whylen);
/* Queue @len bytes toward the guest (before `connected` too). 0, 1 when the queue is above
 * GW_GSOCK_HIGH (stop writing until `writable`), -1 when the socket is closed or shut down. */
int gw_gsock_write(struct gw_gsock *s, const void *data, size_t len);
/* Half-close toward the guest after what is queued. */
void gw_gsock_shutdown(struct gw_gsock *s);
/* Stop (true) or resume (false) acknowledging guest bytes. */
void gw_gsock_pause(struct gw_gsock *s, bool pause);
/* Abort: cancel both directions, free; no callback after this. */
void gw_gsock_close(struct gw_gsock *s);

/*
 * The TCP port process @pid (or a descendant of it) listens on inside @sb, found with
 * net.listening: @cb gets the port (the lowest when several), or 0 with a message when it
 * listens on none (yet), the process is gone, or the sandbox is not running. Returns a handle
 * that gw_pid_port_cancel drops before @cb (no call after), or NULL when the lookup could not
 * start (@cb not called, @why says why).
 */
struct gw_pid_port;
typedef void (*gw_pid_port_fn)(void *user, uint16_t port, const char *why);
struct gw_pid_port *gw_pid_port_find(struct gw_sandbox *sb, uint32_t pid, gw_pid_port_fn cb,
                                     void *user, char *why, size_t whylen);
void gw_pid_port_cancel(struct gw_pid_port *q);

#endif /* SBX_GW_GSOCK_H */
