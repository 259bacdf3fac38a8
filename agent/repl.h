/* REPL sessions (repl.c). */
#ifndef SBX_AGENT_REPL_H
#define SBX_AGENT_REPL_H

#include "agent.h"

/* --- REPL sessions (repl.c) ----------------------------------------------------------------- */

void agent_repl_start(struct agent_conn *c, const struct sbx_msg *m);
void agent_repl_eval(struct agent_conn *c, const struct sbx_msg *m);
void agent_repl_close(struct agent_conn *c, const struct sbx_msg *m);
void agent_repl_list(struct agent_conn *c, const struct sbx_msg *m);
/* The connection is going away: its pending start/eval replies are dropped, sessions stay. */
void agent_repl_conn_gone(struct agent *a, struct agent_conn *c);

#endif /* SBX_AGENT_REPL_H */
