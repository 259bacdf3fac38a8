/*
 * User and group lookup straight from /etc/passwd and /etc/group. A static glibc's getpwnam()
 * needs NSS modules at run time, which a minimal image does not have, so the agent parses the
 * files itself.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agent.h"
#include "env.h"

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
