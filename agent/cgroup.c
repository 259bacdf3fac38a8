/*
 * Workload cgroups: one per process the agent starts, below the workload cgroup (cgroup.h).
 *
 * The loop makes the cgroup (mkdir, the limits, cgroup.procs opened) before the clone; the child
 * joins it by writing "0" to that fd as its first step, before it runs anything of the workload
 * (agent/proc.c child_exec), so there is no moment in which a workload process runs outside it.
 * Reaped, the process's memory.events tells whether the OOM killer struck in its cgroup (the exit
 * map's `oom`), and the cgroup is removed. Processes it left behind (a background child, a fork
 * bomb whose leader exited) keep it alive: it is then removed when cgroup.events says it is empty
 * (an inotify watch, as the kernel documents it), or, without a watch, at a later reap.
 */
#include "cgroup.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/magic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <unistd.h>

/* The workload cgroup and the cgroups of ours in it that still hold processes. */
struct agent_cgroup {
    struct agent *a;
    int dirfd;               /* the workload cgroup */
    char path[SBX_PATH_MAX]; /* ...its path, for the watches */
    bool memory, pids, cpu;  /* controllers its children get (its cgroup.subtree_control) */
    uint64_t next;           /* the last number given to a cgroup */
    struct agent_link lingering;
    unsigned nlingering;
    bool linger_full_logged;
};

/* A cgroup whose process was reaped while others are still in it. */
struct cg_linger {
    struct agent_link link; /* in lingering */
    struct agent_cgroup *set;
    uint64_t n;
    bool watching; /* ev is started; else retried at every reap */
    uv_fs_event_t ev;
};

/* "<n>" or "<n>/<file>", relative to the workload cgroup (buffers of 32 bytes and more hold
 * any number and file name used here). */
static void cg_name(char *buf, size_t size, uint64_t n, const char *file)
{
    (void)snprintf(buf, size, "%llu%s%s", (unsigned long long)n, file != NULL ? "/" : "",
                   file != NULL ? file : "");
}

/* Writes @value to <n>/@file. 0 or -errno. */
static int cg_write(const struct agent_cgroup *g, uint64_t n, const char *file, const char *value)
{
    char name[64];
    size_t len = strlen(value);
    int fd, rc;

    cg_name(name, sizeof(name), n, file);
    fd = openat(g->dirfd, name, O_WRONLY | O_CLOEXEC);
    if (fd < 0) {
        return -errno;
    }
    rc = write(fd, value, len) == (ssize_t)len ? 0 : -errno;
    close(fd);
    return rc;
}

/* Removes <n>: 0 when it is gone (also when it was already), -EBUSY while processes are in it,
 * or another -errno. */
static int cg_rmdir(const struct agent_cgroup *g, uint64_t n)
{
    char name[32];

    cg_name(name, sizeof(name), n, NULL);
    return unlinkat(g->dirfd, name, AT_REMOVEDIR) == 0 || errno == ENOENT ? 0 : -errno;
}

/* --- cgroups left behind ------------------------------------------------------------------- */

static void linger_closed_cb(uv_handle_t *h)
{
    free(h->data);
}

static void linger_end(struct cg_linger *l)
{
    agent_list_del(&l->link);
    l->set->nlingering--;
    uv_close((uv_handle_t *)&l->ev, linger_closed_cb);
}

/* cgroup.events changed: maybe the last process left. */
static void linger_cb(uv_fs_event_t *h, const char *file, int events, int status)
{
    struct cg_linger *l = h->data;

    (void)file;
    (void)events;
    (void)status;
    if (cg_rmdir(l->set, l->n) != -EBUSY) {
        linger_end(l);
    }
}

/* Retry the cgroups nobody watches (their watch could not be set up). */
static void linger_retry(struct agent_cgroup *g)
{
    struct agent_link *it = g->lingering.next;

    while (it != &g->lingering) {
        struct cg_linger *l = agent_container_of(it, struct cg_linger, link);
        it = it->next;
        if (!l->watching && cg_rmdir(g, l->n) != -EBUSY) {
            linger_end(l);
        }
    }
}

/* <n> is busy: remove it once it is empty. Past SBX_CG_LINGER_MAX it is left (an empty cgroup
 * costs the kernel little; the next agent's start-up sweep removes it). */
static void linger(struct agent_cgroup *g, uint64_t n)
{
    char path[SBX_PATH_MAX + 64];
    struct cg_linger *l = NULL;

    if (g->nlingering < SBX_CG_LINGER_MAX) {
        l = calloc(1, sizeof(*l));
    }
    if (l == NULL) {
        if (!g->linger_full_logged) {
            agent_log("cgroup: %u cgroups still hold processes; leaving %s/%llu and others",
                      g->nlingering, g->path, (unsigned long long)n);
            g->linger_full_logged = true;
        }
        return;
    }
    l->set = g;
    l->n = n;
    agent_list_add_tail(&g->lingering, &l->link);
    g->nlingering++;
    snprintf(path, sizeof(path), "%s/%llu/cgroup.events", g->path, (unsigned long long)n);
    (void)uv_fs_event_init(g->a->loop, &l->ev); /* cannot fail on Linux */
    l->ev.data = l;
    /* Without a watch (out of inotify watches) it is retried at every reap. */
    l->watching = uv_fs_event_start(&l->ev, linger_cb, path, 0) == 0;
    /* The last process may have left before the watch was set. */
    if (cg_rmdir(g, n) != -EBUSY) {
        linger_end(l);
    }
}

/* --- the workload cgroup ------------------------------------------------------------------- */

/* Its cgroup.subtree_control: which limits its children can have. */
static void read_controllers(struct agent_cgroup *g)
{
    char buf[256];
    int fd = openat(g->dirfd, "cgroup.subtree_control", O_RDONLY | O_CLOEXEC);
    ssize_t n = fd < 0 ? -1 : read(fd, buf, sizeof(buf) - 1);

    if (fd >= 0) {
        close(fd);
    }
    buf[n > 0 ? n : 0] = '\0';
    for (char *save = NULL, *w = strtok_r(buf, " \n", &save); w != NULL;
         w = strtok_r(NULL, " \n", &save)) {
        g->memory |= strcmp(w, "memory") == 0;
        g->pids |= strcmp(w, "pids") == 0;
        g->cpu |= strcmp(w, "cpu") == 0;
    }
}

/* Remove what an earlier agent left: its empty cgroups now, its busy ones when they empty. */
static void sweep(struct agent_cgroup *g)
{
    int fd = openat(g->dirfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    DIR *d = fd < 0 ? NULL : fdopendir(fd);
    struct dirent *e;

    if (d == NULL) {
        if (fd >= 0) {
            close(fd);
        }
        return;
    }
    while ((e = readdir(d)) != NULL) {
        char *end;
        unsigned long long n = strtoull(e->d_name, &end, 10);
        if (e->d_name[0] < '1' || e->d_name[0] > '9' || *end != '\0') {
            continue; /* not one of ours */
        }
        if (n > g->next) {
            g->next = n; /* numbers are never reused while the old ones may exist */
        }
        if (cg_rmdir(g, n) == -EBUSY) {
            linger(g, n);
        }
    }
    closedir(d);
}

int agent_cgroup_open(struct agent *a, const char *dir)
{
    struct agent_cgroup *g;
    struct statfs sf;
    int fd, e;

    if (strlen(dir) >= sizeof(g->path)) {
        agent_log("cgroup: --cgroup %s: too long; no limits", dir);
        return -ENAMETOOLONG;
    }
    fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0 || fstatfs(fd, &sf) < 0) {
        e = errno;
    } else {
        e = sf.f_type == CGROUP2_SUPER_MAGIC ? 0 : ENOTSUP;
    }
    if (e != 0) {
        agent_log("cgroup: --cgroup %s: %s; no limits", dir,
                  e == ENOTSUP ? "not a cgroup2 directory" : strerror(e));
        if (fd >= 0) {
            close(fd);
        }
        return -e;
    }
    g = calloc(1, sizeof(*g));
    if (g == NULL) {
        close(fd);
        return -ENOMEM;
    }
    g->a = a;
    g->dirfd = fd;
    snprintf(g->path, sizeof(g->path), "%s", dir);
    agent_list_init(&g->lingering);
    read_controllers(g);
    a->cgroup = g;
    sweep(g);
    agent_log("cgroup: a cgroup per process in %s (limits:%s%s%s)", dir, g->memory ? " memory" : "",
              g->pids ? " pids" : "", g->cpu ? " cpu" : "");
    return 0;
}

bool agent_cgroup_on(const struct agent *a)
{
    return a->cgroup != NULL;
}

static int unsupported(struct sbx_err *err, const char *field, const struct agent_cgroup *g,
                       const char *controller)
{
    sbx_err_set(err, SBX_E_UNSUPPORTED,
                g == NULL ? "%s: this agent has no cgroup to limit processes in (no capability "
                            "\"limits\")"
                          : "%s: the %s controller is not enabled in the workload cgroup",
                field, controller);
    snprintf(err->field, sizeof(err->field), "%s", field);
    return -1;
}

int agent_cgroup_limits(const struct agent *a, const struct sbx_spawn_params *sp,
                        struct agent_limits *l, struct sbx_err *err)
{
    const struct agent_cgroup *g = a->cgroup;

    if (sp->memory_max != 0 && (g == NULL || !g->memory)) {
        return unsupported(err, "memory_max", g, "memory");
    }
    if (sp->pids_max != 0 && (g == NULL || !g->pids)) {
        return unsupported(err, "pids_max", g, "pids");
    }
    if (sp->cpu_max != 0 && (g == NULL || !g->cpu)) {
        return unsupported(err, "cpu_max", g, "cpu");
    }
    l->memory_max = sp->memory_max;
    l->pids_max = sp->pids_max;
    l->cpu_max = sp->cpu_max;
    return 0;
}

int agent_cg_create(struct agent *a, const struct agent_limits *l, struct agent_cg *cg,
                    struct sbx_err *err)
{
    struct agent_cgroup *g = a->cgroup;
    char name[64], value[48];
    const char *file = NULL;
    int rc = 0;

    *cg = AGENT_CG_NONE;
    if (g == NULL) {
        return 0;
    }
    /* EEXIST: a number an earlier agent used and the sweep could not remove. */
    for (int tries = 0;; tries++) {
        cg_name(name, sizeof(name), ++g->next, NULL);
        if (mkdirat(g->dirfd, name, 0755) == 0) {
            break;
        }
        if (errno != EEXIST || tries == 64) {
            return sbx_err_sys(err, errno, "cgroup", "mkdir %s/%s", g->path, name);
        }
    }
    *cg = (struct agent_cg){ g, g->next, -1, true };
    if (l->memory_max != 0) {
        snprintf(value, sizeof(value), "%llu", (unsigned long long)l->memory_max);
        rc = cg_write(g, cg->n, file = "memory.max", value);
    }
    if (rc == 0 && l->pids_max != 0) {
        snprintf(value, sizeof(value), "%u", l->pids_max);
        rc = cg_write(g, cg->n, file = "pids.max", value);
    }
    if (rc == 0 && l->cpu_max != 0) {
        snprintf(value, sizeof(value), "%llu %u", (unsigned long long)l->cpu_max * 1000,
                 SBX_CPU_PERIOD_US);
        rc = cg_write(g, cg->n, file = "cpu.max", value);
    }
    if (rc == 0) {
        cg_name(name, sizeof(name), cg->n, file = "cgroup.procs");
        cg->procs_fd = openat(g->dirfd, name, O_WRONLY | O_CLOEXEC);
        rc = cg->procs_fd < 0 ? -errno : 0;
    }
    if (rc < 0) {
        sbx_err_sys(err, -rc, "cgroup", "%s/%llu/%s", g->path, (unsigned long long)cg->n, file);
        agent_cg_release(cg);
        return -1;
    }
    return 0;
}

void agent_cg_joined(struct agent_cg *cg)
{
    if (cg->procs_fd >= 0) {
        close(cg->procs_fd);
        cg->procs_fd = -1;
    }
}

/* memory.events' oom_kill: processes of the cgroup (and below) the OOM killer killed, whichever
 * cgroup's limit (or the whole machine's memory) ran out. The kernel counts a kill before it
 * sends the SIGKILL, so it is there by the time the process can be reaped. */
static bool cg_oom(const struct agent_cg *cg)
{
    char name[64], buf[512], *k;
    int fd;
    ssize_t n;

    cg_name(name, sizeof(name), cg->n, "memory.events");
    fd = openat(cg->set->dirfd, name, O_RDONLY | O_CLOEXEC);
    n = fd < 0 ? -1 : read(fd, buf, sizeof(buf) - 1);
    if (fd >= 0) {
        close(fd);
    }
    buf[n > 0 ? n : 0] = '\0';
    for (k = buf; (k = strstr(k, "oom_kill ")) != NULL; k++) {
        if (k == buf || k[-1] == '\n') {
            return strtoull(k + 9, NULL, 10) > 0;
        }
    }
    return false;
}

bool agent_cg_exited(struct agent_cg *cg)
{
    bool oom = cg->owned && cg->set->memory && cg_oom(cg);

    agent_cg_release(cg);
    return oom;
}

void agent_cg_release(struct agent_cg *cg)
{
    agent_cg_joined(cg);
    if (!cg->owned) {
        return;
    }
    cg->owned = false;
    linger_retry(cg->set); /* a reap is a good moment for those without a watch */
    if (cg_rmdir(cg->set, cg->n) == -EBUSY) {
        linger(cg->set, cg->n);
    }
}

int agent_cg_kill(const struct agent_cg *cg)
{
    if (cg->set == NULL) {
        return -ENOENT;
    }
    return cg_write(cg->set, cg->n, "cgroup.kill", "1");
}
