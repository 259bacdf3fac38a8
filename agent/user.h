/*
 * Acting as a user (user.c): the identity a file-system request (fs, transfer, pack) acts as, and
 * switching the calling thread's file-system credentials to it and back. The passwd lookup itself
 * (struct agent_user, agent_user_lookup) is declared in env.h.
 *
 * Linux keeps credentials per thread and checks file access with the fsuid, fsgid and
 * supplementary groups of the thread that makes the call (and some files, /proc/sys's, with its
 * euid), so the thread that does a request's file work (the loop thread around a short call, a
 * threadpool worker for a whole job, a job's own thread) switches its effective ids to the
 * request's identity with raw setresuid/setresgid/setgroups system calls, which change that
 * thread only (glibc's wrappers would change every thread), and switches back before it does
 * anything else. A switched thread must create no thread and queue no threadpool
 * work: a new thread would start with the switched credentials.
 */
#ifndef SBX_AGENT_USER_H
#define SBX_AGENT_USER_H

#include <stdbool.h>
#include <sys/types.h>

#include "agent.h"

/* The agent's environment variable naming the image's workload user: the identity fs, transfer
 * and pack requests act as when they name none (PROTOCOL.md §17.1). Unset or empty: the agent's
 * own identity. */
#define AGENT_WORKLOAD_USER_ENV "SBX_WORKLOAD_USER"

/* An identity to act as: whose permissions the kernel checks file access with. */
struct agent_ident {
    bool self; /* the agent's own identity: nothing to switch */
    uid_t uid;
    gid_t gid;
    int ngroups;
    gid_t groups[SBX_GROUPS_MAX];
    char name[64]; /* the user's name, or its uid in decimal, for messages */
};

/*
 * The identity a request acts as (PROTOCOL.md §17.1), into @id: its `user` param (a user name of
 * the guest's /etc/passwd, or a uid in decimal), else the workload user named by
 * AGENT_WORKLOAD_USER_ENV, else the agent's own identity. Its groups come from /etc/group (under
 * a->passwd_root). A default that names no user fails the request rather than fall back to root.
 * Returns 0, or -1 with @err: BAD_PARAM (`field: "user"`) for a bad param, ENOENT (`field:
 * "user"`) for an unknown name. Loop thread.
 */
int agent_ident_param(struct agent *a, const msgpack_object *params, struct agent_ident *id,
                      struct sbx_err *err);

struct agent_user;

/*
 * The user named by the `user` param of @params (a name of the guest's /etc/passwd under
 * a->passwd_root, or a uid in decimal), with its groups, into @u; without it and with
 * @use_default, the workload user AGENT_WORKLOAD_USER_ENV names. Returns 1 with @u filled; 0 when
 * there is none (the agent's own identity, @u untouched); -1 with @err as agent_ident_param.
 */
int agent_user_param(struct agent *a, const msgpack_object *params, bool use_default,
                     struct agent_user *u, struct sbx_err *err);

/* The identity of the passwd entry @u (struct agent_user, env.h) into @id. */
void agent_ident_from_user(const struct agent_user *u, struct agent_ident *id);

/* What agent_ident_enter saved: the thread's credentials before it. */
struct agent_ident_scope {
    bool active;
    uid_t euid;
    gid_t egid;
    int ngroups;
    gid_t groups[SBX_GROUPS_MAX];
};

/*
 * Switch the calling thread's effective identity (euid, egid and with them the file-system ids,
 * supplementary groups) to @id, saving the current one in @sc; nothing is switched for the
 * agent's own identity. Every later access of this thread is checked as @id, with no effective
 * capability (those that bypass file permissions included), until agent_ident_leave(@sc). Returns
 * 0, or -1 with errno (EPERM: the agent may not switch, not being root; the thread is then
 * unchanged).
 */
int agent_ident_enter(const struct agent_ident *id, struct agent_ident_scope *sc);

/* agent_ident_enter for a request handler: -1 with @err (the errno, "act as user \"name\""). */
int agent_ident_enter_err(const struct agent_ident *id, struct agent_ident_scope *sc,
                          struct sbx_err *err);

/* Switch the thread back to what @sc saved (nothing when nothing was switched or it was already
 * switched back); errno is kept. A thread that cannot get its own credentials back aborts the
 * agent: it would go on with a user's. */
void agent_ident_leave(struct agent_ident_scope *sc);

/* A scope that switches back when it ends: `_cleanup_ident_ struct agent_ident_scope sc = {0};` */
#define _cleanup_ident_ __attribute__((cleanup(agent_ident_leave)))

#endif /* SBX_AGENT_USER_H */
