/* REPL sessions (repl.c). */
#ifndef SBX_AGENT_REPL_H
#define SBX_AGENT_REPL_H

#include "agent.h"

/* --- REPL sessions (repl.c) ----------------------------------------------------------------- */

/* Request handlers (agent_handler, AGENT_REPLIED in agent.h). repl.start and a non-streaming
 * repl.eval return AGENT_LATER: the driver's report, the interpreter's exit, a timeout or
 * repl.close answers them. */
int agent_repl_start(struct agent_conn *c, const struct sbx_msg *m, struct sbx_err *err);
int agent_repl_eval(struct agent_conn *c, const struct sbx_msg *m, struct sbx_err *err);
int agent_repl_close(struct agent_conn *c, const struct sbx_msg *m, struct sbx_err *err);
int agent_repl_list(struct agent_conn *c, const struct sbx_msg *m, struct sbx_err *err);
/* repl.collect (PROTOCOL.md §16.7): the result of the session's last eval that finished after its
 * requester's connection had gone, once. */
int agent_repl_collect(struct agent_conn *c, const struct sbx_msg *m, struct sbx_err *err);

#endif /* SBX_AGENT_REPL_H */
