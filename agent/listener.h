/* Listeners (listener.c): unix, TCP, vsock and virtio-serial. */
#ifndef SBX_AGENT_LISTENER_H
#define SBX_AGENT_LISTENER_H

#include "agent.h"
#include "conn.h"

/* --- listeners ---------------------------------------------------------------------------- */

struct agent_listener {
    struct agent_link link;
    struct agent *a;
    enum agent_transport transport;
    char addr[SBX_PATH_MAX + 16];
    union {
        uv_pipe_t pipe;
        uv_tcp_t tcp;
        uv_poll_t poll; /* vsock: libuv has no AF_VSOCK, so accept through a poll handle */
        uv_stream_t stream;
        uv_handle_t handle;
    } h;
    uv_timer_t retry;        /* serial: reopen the port after the host went away */
    int fd;                  /* vsock listening fd; serial device fd */
    char path[SBX_PATH_MAX]; /* serial device path, unix socket path */
    struct agent_conn *serial_conn;
    bool closing;
};

/* Listen on @addr (unix:, tcp:, vsock:, serial:; the agent opens the socket itself). */
int agent_listen(struct agent *a, const char *addr, struct sbx_err *err);
/*
 * Serve a listening socket the agent was given, @spec "FD=ADDR" (--listen-fd, from sbx-init,
 * which holds it across agent restarts): fd FD must be a stream socket listening on ADDR. The fd
 * is made close-on-exec first, whatever happens next; it is closed on failure once it proved to
 * be that socket.
 */
int agent_listen_fd(struct agent *a, const char *spec, struct sbx_err *err);
/* The serial connection went away: schedule reopening the port. */
void agent_listener_serial_gone(struct agent_listener *l);

#endif /* SBX_AGENT_LISTENER_H */
