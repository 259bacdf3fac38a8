/* The base environment (env.c) and users (user.c). */
#ifndef SBX_AGENT_ENV_H
#define SBX_AGENT_ENV_H

#include "agent.h"
#include "params.h" /* agent_env_check_map, agent_env_name_ok */

/* --- env, users, session, init channel ---------------------------------------------------- */

int agent_env_init(struct agent *a);
/* Build a NULL-terminated envp: base (unless @clear) overlaid with @overlay (a msgpack map,
 * already validated) and @extra ("K=V" strings, may be NULL). Caller frees with agent_strv_free
 * (strv.h). */
char **agent_env_build(struct agent *a, bool clear, const msgpack_object *overlay,
                       char *const *extra);
const char *agent_env_lookup(char *const *envp, const char *name);
int agent_env_get(struct agent_conn *c, const struct sbx_msg *m, struct sbx_err *err);
int agent_env_set(struct agent_conn *c, const struct sbx_msg *m, struct sbx_err *err);
int agent_env_unset(struct agent_conn *c, const struct sbx_msg *m, struct sbx_err *err);
int agent_env_list(struct agent_conn *c, const struct sbx_msg *m, struct sbx_err *err);

struct agent_user {
    uid_t uid;
    gid_t gid;
    gid_t groups[SBX_GROUPS_MAX];
    int ngroups;
    char name[64];
    char home[SBX_PATH_MAX];
    char shell[SBX_PATH_MAX];
};
/* Look @name (or a numeric uid) up in /etc/passwd and its groups in /etc/group, without NSS.
 * @root is the filesystem prefix ("" normally; tests point it elsewhere). */
int agent_user_lookup(const char *root, const char *name, struct agent_user *u,
                      struct sbx_err *err);
/* Fill @u for a numeric uid: passwd entry if there is one, else gid = uid and no groups. */
int agent_user_by_uid(const char *root, uid_t uid, struct agent_user *u);

#endif /* SBX_AGENT_ENV_H */
