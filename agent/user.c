/*
 * Users: lookup straight from /etc/passwd and /etc/group (a static glibc's getpwnam() needs NSS
 * modules at run time, which a minimal image does not have, so the agent parses the files itself),
 * and acting as a user on a thread (user.h).
 */
#include "user.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "env.h"
#include "sbx/msg.h"

/* Split @line at ':' into at most @max fields (in place). Returns the number of fields. */
static int split_fields(char *line, char **f, int max)
{
    int n = 0;

    line[strcspn(line, "\n")] = '\0';
    f[n++] = line;
    for (char *p = line; *p != '\0' && n < max; p++) {
        if (*p == ':') {
            *p = '\0';
            f[n++] = p + 1;
        }
    }
    return n;
}

static bool parse_id(const char *s, unsigned long *out)
{
    char *end;

    if (*s == '\0') {
        return false;
    }
    errno = 0;
    *out = strtoul(s, &end, 10);
    return errno == 0 && *end == '\0' && *out < UINT32_MAX;
}

static FILE *open_etc(const char *root, const char *name)
{
    char path[512];

    (void)snprintf(path, sizeof(path), "%s/etc/%s", root, name);
    return fopen(path, "re");
}

/* Fill @u from the passwd entry matching @name (or @uid when name is NULL). 0 found, -1 not. */
static int passwd_find(const char *root, const char *name, uid_t uid, struct agent_user *u)
{
    FILE *fp = open_etc(root, "passwd");
    char line[2048];
    int found = -1;

    if (fp == NULL) {
        return -1;
    }
    while (fgets(line, sizeof(line), fp) != NULL) {
        char *f[7];
        unsigned long pu, pg;
        if (split_fields(line, f, 7) < 7 || !parse_id(f[2], &pu) || !parse_id(f[3], &pg)) {
            continue;
        }
        if (name != NULL ? strcmp(f[0], name) != 0 : pu != uid) {
            continue;
        }
        u->uid = (uid_t)pu;
        u->gid = (gid_t)pg;
        (void)snprintf(u->name, sizeof(u->name), "%s", f[0]);
        (void)snprintf(u->home, sizeof(u->home), "%s", f[5]);
        (void)snprintf(u->shell, sizeof(u->shell), "%s", f[6]);
        found = 0;
        break;
    }
    fclose(fp);
    return found;
}

/* Supplementary groups: the primary gid plus every group listing the user as a member. */
static void groups_find(const char *root, struct agent_user *u)
{
    FILE *fp = open_etc(root, "group");
    char line[8192];

    u->ngroups = 0;
    u->groups[u->ngroups++] = u->gid;
    if (fp == NULL || u->name[0] == '\0') {
        if (fp != NULL) {
            fclose(fp);
        }
        return;
    }
    while (fgets(line, sizeof(line), fp) != NULL && u->ngroups < (int)SBX_GROUPS_MAX) {
        char *f[4], *save = NULL;
        unsigned long g;
        if (split_fields(line, f, 4) < 4 || !parse_id(f[2], &g) || (gid_t)g == u->gid) {
            continue;
        }
        for (char *m = strtok_r(f[3], ",", &save); m != NULL; m = strtok_r(NULL, ",", &save)) {
            if (strcmp(m, u->name) == 0) {
                u->groups[u->ngroups++] = (gid_t)g;
                break;
            }
        }
    }
    fclose(fp);
}

int agent_user_by_uid(const char *root, uid_t uid, struct agent_user *u)
{
    memset(u, 0, sizeof(*u));
    if (passwd_find(root, NULL, uid, u) < 0) {
        u->uid = uid;
        u->gid = (gid_t)uid;
        u->ngroups = 1;
        u->groups[0] = u->gid;
        return -1;
    }
    groups_find(root, u);
    return 0;
}

int agent_user_lookup(const char *root, const char *name, struct agent_user *u, struct sbx_err *err)
{
    unsigned long id;

    memset(u, 0, sizeof(*u));
    if (name[0] == '\0') {
        sbx_err_param(err, "user", "user must not be empty");
        return -1;
    }
    if (parse_id(name, &id)) {
        (void)agent_user_by_uid(root, (uid_t)id, u);
        return 0;
    }
    if (passwd_find(root, name, 0, u) < 0) {
        sbx_err_sys(err, ENOENT, "user", "no user \"%s\" in %s/etc/passwd", name, root);
        snprintf(err->field, sizeof(err->field), "user");
        return -1;
    }
    groups_find(root, u);
    return 0;
}

/* --- acting as a user ---------------------------------------------------------------------- */

void agent_ident_from_user(const struct agent_user *u, struct agent_ident *id)
{
    memset(id, 0, sizeof(*id));
    id->uid = u->uid;
    id->gid = u->gid;
    id->ngroups = u->ngroups < 0 ? 0 : u->ngroups;
    memcpy(id->groups, u->groups, (size_t)id->ngroups * sizeof(id->groups[0]));
    if (u->name[0] != '\0') {
        (void)snprintf(id->name, sizeof(id->name), "%s", u->name);
    } else {
        (void)snprintf(id->name, sizeof(id->name), "%u", (unsigned)u->uid);
    }
    /* The agent's own uid (root) keeps the agent's full rights: nothing to switch. */
    id->self = u->uid == geteuid();
}

int agent_user_param(struct agent *a, const msgpack_object *params, bool use_default,
                     struct agent_user *u, struct sbx_err *err)
{
    char name[SBX_USER_MAX + 1];
    const char *def;
    int r = sbx_param_cstr(params, "user", SBX_OPTIONAL, name, sizeof(name), err);

    if (r < 0) {
        return -1;
    }
    if (r == 1) {
        def = use_default ? getenv(AGENT_WORKLOAD_USER_ENV) : NULL;
        if (def == NULL || def[0] == '\0') {
            return 0;
        }
        (void)snprintf(name, sizeof(name), "%s", def);
    }
    return agent_user_lookup(a->passwd_root, name, u, err) < 0 ? -1 : 1;
}

int agent_ident_param(struct agent *a, const msgpack_object *params, struct agent_ident *id,
                      struct sbx_err *err)
{
    struct agent_user u;
    int r = agent_user_param(a, params, true, &u, err);

    if (r < 0) {
        return -1;
    }
    if (r == 0) {
        memset(id, 0, sizeof(*id));
        id->self = true;
        id->uid = geteuid();
        id->gid = getegid();
        (void)snprintf(id->name, sizeof(id->name), "%u", (unsigned)id->uid);
        return 0;
    }
    agent_ident_from_user(&u, id);
    return 0;
}

/*
 * Set the calling thread's effective uid and gid, and its groups (raw calls: this thread only;
 * glibc's wrappers would change every thread). The effective ids, not only the file-system ones
 * (which follow them): some checks look at the euid (/proc/sys files let an euid of 0 write
 * whatever the fsuid) and a non-zero euid also clears the thread's effective capabilities, so
 * nothing the thread opens as @uid carries root's (a /proc file that shows more to
 * CAP_SYSLOG). The real and saved ids stay root's, so the way back is open. Order: groups and
 * gid while the thread still has CAP_SETGID, the uid last; back, the uid first.
 */
static int set_creds(uid_t uid, gid_t gid, int ngroups, const gid_t *groups)
{
    if (syscall(SYS_setgroups, (size_t)ngroups, groups) < 0 ||
        syscall(SYS_setresgid, (gid_t)-1, gid, (gid_t)-1) < 0 ||
        syscall(SYS_setresuid, (uid_t)-1, uid, (uid_t)-1) < 0) {
        return -1;
    }
    return 0;
}

static int restore_creds(uid_t uid, gid_t gid, int ngroups, const gid_t *groups)
{
    if (syscall(SYS_setresuid, (uid_t)-1, uid, (uid_t)-1) < 0 ||
        syscall(SYS_setresgid, (gid_t)-1, gid, (gid_t)-1) < 0 ||
        syscall(SYS_setgroups, (size_t)ngroups, groups) < 0) {
        return -1;
    }
    return syscall(SYS_geteuid) == (long)uid && syscall(SYS_getegid) == (long)gid ? 0 : -1;
}

int agent_ident_enter(const struct agent_ident *id, struct agent_ident_scope *sc)
{
    int n, e;

    sc->active = false;
    if (id->self) {
        return 0;
    }
    n = (int)syscall(SYS_getgroups, (int)SBX_GROUPS_MAX, sc->groups);
    if (n < 0) {
        return -1; /* EINVAL: the agent itself has more groups than the scope keeps */
    }
    sc->ngroups = n;
    sc->euid = (uid_t)syscall(SYS_geteuid);
    sc->egid = (gid_t)syscall(SYS_getegid);
    if (syscall(SYS_setgroups, (size_t)id->ngroups, id->groups) < 0) {
        return -1; /* nothing changed (EPERM: the agent is not root) */
    }
    sc->active = true;
    if (set_creds(id->uid, id->gid, id->ngroups, id->groups) < 0) {
        e = errno;
        agent_ident_leave(sc);
        errno = e;
        return -1;
    }
    return 0;
}

int agent_ident_enter_err(const struct agent_ident *id, struct agent_ident_scope *sc,
                          struct sbx_err *err)
{
    if (agent_ident_enter(id, sc) < 0) {
        sbx_err_sys(err, errno, NULL, "act as user \"%s\"", id->name);
        snprintf(err->field, sizeof(err->field), "user");
        return -1;
    }
    return 0;
}

void agent_ident_leave(struct agent_ident_scope *sc)
{
    int e = errno; /* kept: callers report the errno of the call made as the user */

    if (!sc->active) {
        return;
    }
    sc->active = false;
    if (restore_creds(sc->euid, sc->egid, sc->ngroups, sc->groups) < 0) {
        agent_log("cannot switch a thread back to its own credentials: %s", strerror(errno));
        abort(); /* our own invariant: a thread must never go on as a user */
    }
    errno = e;
}
