/*
 * The fs family's per-connection state (fsconn.c), shared by the files that keep something in
 * it: fsfile.c (file handles), fsdir.c (readdir cursors) and fsjob.c (running fs.remove and
 * fs.copy). Nothing outside those files includes it.
 */
#ifndef SBX_AGENT_FSCONN_H
#define SBX_AGENT_FSCONN_H

#include "conn.h"
#include "fs.h"

/* Per-connection fs state: file handles and readdir cursors. */
struct agent_fs {
    struct fs_handle *fh;
    unsigned nfh, capfh;
    uint32_t next_fh;
    struct agent_link cursors;
    unsigned ncursors;
    uint32_t next_cursor;
    struct agent_link jobs; /* fs.remove / fs.copy on the threadpool */
    struct agent_conn *conn;
    struct agent_conn_ref ref; /* frees all of it when the connection closes */
};

/* @c's fs state, made on first use and registered to be released when @c closes; NULL when
 * out of memory. Loop thread. */
struct agent_fs *agent_fs_state(struct agent_conn *c);

/*
 * What the state's release (fsconn.c) calls, in this order, when the connection closes; @fs is
 * freed right afterwards.
 */
/* fsfile.c: close every file handle (nobody is left to hear of a close error), free the table. */
void agent_fs_handles_close(struct agent_fs *fs);
/* fsjob.c: forget the running jobs; each finishes on its own and then only frees itself. */
void agent_fs_jobs_detach(struct agent_fs *fs);
/* fsdir.c: close every readdir cursor. */
void agent_fs_cursors_free(struct agent_fs *fs);

#endif /* SBX_AGENT_FSCONN_H */
