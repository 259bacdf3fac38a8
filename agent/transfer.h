/* Transfers and packs (transfer.c, tree.c, untar.c, pack.c). */
#ifndef SBX_AGENT_TRANSFER_H
#define SBX_AGENT_TRANSFER_H

#include "agent.h"

/* --- transfers and packs (transfer.c, tree.c, untar.c, pack.c) ------------------------------- */

/*
 * Work that may outlive its stream (an upload finishing in the threadpool, a tree extraction
 * thread, a pack job) holds a connection ref (conn.h, struct agent_conn_ref) named `job`: its
 * job.conn is where its notifications go, NULL once the connection is gone.
 */

/*
 * Request handlers (agent_handler). Each answers its request before returning, never later:
 * AGENT_REPLIED once the stream ids are sent, or -1 with @err set for the dispatcher to send. How
 * the transfer ends comes afterwards, as transfer.done (uploads) or the end of the stream.
 */
int agent_transfer_upload(struct agent_conn *c, const struct sbx_msg *m, struct sbx_err *err);
int agent_transfer_download(struct agent_conn *c, const struct sbx_msg *m, struct sbx_err *err);
int agent_transfer_upload_tree(struct agent_conn *c, const struct sbx_msg *m, struct sbx_err *err);
int agent_transfer_download_tree(struct agent_conn *c, const struct sbx_msg *m,
                                 struct sbx_err *err);
int agent_pack_create(struct agent_conn *c, const struct sbx_msg *m, struct sbx_err *err);
/* Reply {stream: @sid} to request @id. */
void agent_reply_stream(struct agent_conn *c, uint32_t id, uint32_t sid);
/* Send [2, "transfer.done", {stream, error}] on @c (NULL: nothing to send to). */
void agent_transfer_done_err(struct agent_conn *c, uint32_t sid, const struct sbx_err *e);

#endif /* SBX_AGENT_TRANSFER_H */
