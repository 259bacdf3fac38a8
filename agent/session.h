/* The session family (session.c), the method table (dispatch.c) and the init channel (initctl.c).
 */
#ifndef SBX_AGENT_SESSION_H
#define SBX_AGENT_SESSION_H

#include "agent.h"

int agent_session_hello(struct agent_conn *c, const struct sbx_msg *m, struct sbx_err *err);
int agent_session_ping(struct agent_conn *c, const struct sbx_msg *m, struct sbx_err *err);
int agent_session_info(struct agent_conn *c, const struct sbx_msg *m, struct sbx_err *err);
int agent_session_shutdown(struct agent_conn *c, const struct sbx_msg *m, struct sbx_err *err);
int agent_session_lifetime_get(struct agent_conn *c, const struct sbx_msg *m, struct sbx_err *err);
int agent_session_lifetime_extend(struct agent_conn *c, const struct sbx_msg *m,
                                  struct sbx_err *err);
int agent_session_clock_set(struct agent_conn *c, const struct sbx_msg *m, struct sbx_err *err);

/* A request handler: see AGENT_REPLIED (agent.h). */
typedef int (*agent_handler)(struct agent_conn *c, const struct sbx_msg *m, struct sbx_err *err);

/* Dispatch a request through the method table: run its handler, send the error it returns. */
void agent_dispatch(struct agent_conn *c, const struct sbx_msg *m);
/* Capabilities this agent announces, NULL-terminated. */
extern const char *const agent_capabilities[];

/* init <-> agent control channel (docs/INIT.md). */
int agent_initctl_open(struct agent *a, int fd);
void agent_initctl_send(struct agent *a, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
void agent_initctl_clients_changed(struct agent *a);
void agent_initctl_close(struct agent *a);

#endif /* SBX_AGENT_SESSION_H */
