/* The method table: every request goes through here (crun's commands[], QEMU's QAPI tables). */
#include <assert.h>
#include <string.h>

#include "agent.h"
#include "conn.h"
#include "env.h"
#include "fs.h"
#include "net.h"
#include "proc.h"
#include "repl.h"
#include "session.h"
#include "transfer.h"

struct agent_method {
    const char *name;
    agent_handler fn;
    uint32_t min_version;
};

static const struct agent_method methods[] = {
    { "hello", agent_session_hello, 1 },
    { "ping", agent_session_ping, 1 },
    { "info", agent_session_info, 1 },
    { "shutdown", agent_session_shutdown, 1 },
    { "lifetime.get", agent_session_lifetime_get, 1 },
    { "lifetime.extend", agent_session_lifetime_extend, 1 },
    { "clock.set", agent_session_clock_set, 1 },
    { "env.get", agent_env_get, 1 },
    { "env.set", agent_env_set, 1 },
    { "env.unset", agent_env_unset, 1 },
    { "env.list", agent_env_list, 1 },
    { "proc.spawn", agent_proc_spawn, 1 },
    { "proc.wait", agent_proc_wait, 1 },
    { "proc.kill", agent_proc_kill, 1 },
    { "proc.list", agent_proc_list, 1 },
    { "proc.close_stdin", agent_proc_close_stdin, 1 },
    { "proc.release", agent_proc_release, 1 },
    { "proc.resize", agent_proc_resize, 1 },
    { "proc.attach", agent_proc_attach, 1 },
    { "fs.stat", agent_fs_stat, 1 },
    { "fs.lstat", agent_fs_lstat, 1 },
    { "fs.readdir", agent_fs_readdir, 1 },
    { "fs.mkdir", agent_fs_mkdir, 1 },
    { "fs.remove", agent_fs_remove, 1 },
    { "fs.rename", agent_fs_rename, 1 },
    { "fs.copy", agent_fs_copy, 1 },
    { "fs.chmod", agent_fs_chmod, 1 },
    { "fs.chown", agent_fs_chown, 1 },
    { "fs.symlink", agent_fs_symlink, 1 },
    { "fs.link", agent_fs_link, 1 },
    { "fs.readlink", agent_fs_readlink, 1 },
    { "fs.realpath", agent_fs_realpath, 1 },
    { "fs.truncate", agent_fs_truncate, 1 },
    { "fs.utime", agent_fs_utime, 1 },
    { "fs.mktemp", agent_fs_mktemp, 1 },
    { "fs.walk", agent_fs_walk, 1 },
    { "fs.glob", agent_fs_glob, 1 },
    { "fs.watch", agent_fs_watch, 1 },
    { "fs.unwatch", agent_fs_unwatch, 1 },
    { "fs.open", agent_fs_open, 1 },
    { "fs.read", agent_fs_read, 1 },
    { "fs.write", agent_fs_write, 1 },
    { "fs.seek", agent_fs_seek, 1 },
    { "fs.fstat", agent_fs_fstat, 1 },
    { "fs.fsync", agent_fs_fsync, 1 },
    { "fs.ftruncate", agent_fs_ftruncate, 1 },
    { "fs.close", agent_fs_close, 1 },
    { "fs.umask", agent_fs_umask, 1 },
    { "fs.futimes", agent_fs_futimes, 1 },
    { "fs.flock", agent_fs_flock, 1 },
    { "fs.funlock", agent_fs_funlock, 1 },
    { "transfer.upload", agent_transfer_upload, 1 },
    { "transfer.download", agent_transfer_download, 1 },
    { "transfer.upload_tree", agent_transfer_upload_tree, 1 },
    { "transfer.download_tree", agent_transfer_download_tree, 1 },
    { "pack.create", agent_pack_create, 1 },
    { "repl.start", agent_repl_start, 1 },
    { "repl.eval", agent_repl_eval, 1 },
    { "repl.close", agent_repl_close, 1 },
    { "repl.list", agent_repl_list, 1 },
    { "repl.collect", agent_repl_collect, 1 },
    { "net.connect", agent_net_connect, 1 },
    { "net.listening", agent_net_listening, 1 },
};

/*
 * Run @am's handler for @m and send the error it returns. Debug builds check the handler's word
 * against what it did: AGENT_REPLIED must have sent exactly one response to this request,
 * AGENT_LATER and an error none (agent_conn_send counts responses to c->cur_req).
 */
static void dispatch_run(struct agent_conn *c, const struct agent_method *am,
                         const struct sbx_msg *m)
{
    struct sbx_err err;
    int r;

    sbx_err_clear(&err);
    c->cur_req = m->id;
    c->cur_replies = 0;
    r = am->fn(c, m, &err);
    c->cur_req = -1;
    if (r < 0) {
        assert(c->cur_replies == 0);
        if (!sbx_err_isset(&err)) {
            sbx_err_set(&err, SBX_E_INTERNAL, "%s failed without saying why", am->name);
        }
        agent_conn_reply_error(c, m->id, &err);
        return;
    }
    /* A handler may answer other waiting requests too (repl.close cancels a pending eval), and a
     * client may reuse the id of one still waiting (§5.1: not detected), so a reply counted for
     * this id beyond one may be that other request's: REPLIED needs at least one. */
    assert(r == AGENT_REPLIED ? c->cur_replies >= 1 || c->closing : c->cur_replies == 0);
}

void agent_dispatch(struct agent_conn *c, const struct sbx_msg *m)
{
    struct sbx_err err;

    for (size_t i = 0; i < ARRAY_SIZE(methods); i++) {
        const struct agent_method *am = &methods[i];
        if (!sbx_msg_method_is(m, am->name)) {
            continue;
        }
        if (c->hello_done && c->version < am->min_version) {
            sbx_err_set(&err, SBX_E_UNKNOWN_METHOD, "%s needs protocol version %u", am->name,
                        am->min_version);
            agent_conn_reply_error(c, m->id, &err);
            return;
        }
        dispatch_run(c, am, m);
        return;
    }
    sbx_err_set(&err, SBX_E_UNKNOWN_METHOD, "unknown method \"%.*s\"", (int)m->method_len,
                m->method);
    agent_conn_reply_error(c, m->id, &err);
}
