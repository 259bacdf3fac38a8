/* Transfers and packs (transfer.c, tree.c, pack.c), and the jobs that outlive their streams. */
#ifndef SBX_AGENT_TRANSFER_H
#define SBX_AGENT_TRANSFER_H

#include "agent.h"

/* --- transfers and packs (transfer.c, tree.c, pack.c) ---------------------------------------- */

/*
 * Work that may outlive its stream (an upload finishing in the threadpool, a tree extraction
 * thread, a pack job) registers here, so a closing connection can tell it to send nothing more.
 */
struct agent_job {
    struct agent_link link;                 /* in a->jobs */
    struct agent_conn *conn;                /* NULL once the connection is gone */
    void (*conn_gone)(struct agent_job *j); /* may be NULL; runs before the connection is freed */
};
void agent_job_add(struct agent *a, struct agent_job *j, struct agent_conn *c);
void agent_job_del(struct agent_job *j);
/* The connection is closing: detach every job of @c (job->conn = NULL, then its conn_gone). */
void agent_job_conn_gone(struct agent *a, struct agent_conn *c);

void agent_transfer_upload(struct agent_conn *c, const struct sbx_msg *m);
void agent_transfer_download(struct agent_conn *c, const struct sbx_msg *m);
void agent_transfer_upload_tree(struct agent_conn *c, const struct sbx_msg *m);
void agent_transfer_download_tree(struct agent_conn *c, const struct sbx_msg *m);
void agent_pack_create(struct agent_conn *c, const struct sbx_msg *m);
/* Reply {stream: @sid} to request @id. */
void agent_reply_stream(struct agent_conn *c, uint32_t id, uint32_t sid);
/* Send [2, "transfer.done", {stream, error}] on @c (NULL: nothing to send to). */
void agent_transfer_done_err(struct agent_conn *c, uint32_t sid, const struct sbx_err *e);

#endif /* SBX_AGENT_TRANSFER_H */
