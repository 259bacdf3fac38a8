/*
 * The fs family's per-connection state (fsconn.h): made by the first request that keeps
 * something for later (a file handle, a readdir cursor, a running fs.remove or fs.copy) and
 * released, with everything in it, when the connection closes.
 */
#include "fsconn.h"

#include <stdlib.h>

/* The connection closed: its handles and cursors go; running jobs finish on their own. */
static void fs_gone(struct agent_conn_ref *r)
{
    struct agent_fs *fs = agent_container_of(r, struct agent_fs, ref);

    agent_fs_handles_close(fs);
    agent_fs_jobs_detach(fs);
    agent_fs_cursors_free(fs);
    fs->conn->fs = NULL;
    free(fs);
}

struct agent_fs *agent_fs_state(struct agent_conn *c)
{
    if (c->fs == NULL) {
        c->fs = calloc(1, sizeof(*c->fs));
        if (c->fs != NULL) {
            agent_list_init(&c->fs->cursors);
            agent_list_init(&c->fs->jobs);
            c->fs->next_fh = 1;
            c->fs->next_cursor = 1;
            c->fs->conn = c;
            agent_conn_ref_add(c, &c->fs->ref, fs_gone);
        }
    }
    return c->fs;
}
