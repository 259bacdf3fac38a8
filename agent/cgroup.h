/*
 * Workload cgroups (cgroup.c): every process the agent starts gets a cgroup of its own below the
 * workload cgroup sbx-init made (--cgroup DIR, docs/INIT.md "Resource limits"), with the limits
 * its request asked for (PROTOCOL.md §14.10), so its OOM kills are its own to report. Without
 * --cgroup the agent has no limits to offer: capability "limits" is not announced, a request
 * that asks for one is UNSUPPORTED, and processes stay in the agent's cgroup.
 */
#ifndef SBX_AGENT_CGROUP_H
#define SBX_AGENT_CGROUP_H

#include <stdbool.h>
#include <stdint.h>

#include "agent.h"
#include "sbx/schema.h"

struct agent_cgroup;

/* What a start asks for; 0: nothing of its own (the workload cgroup's limits still apply). */
struct agent_limits {
    uint64_t memory_max; /* bytes */
    uint32_t pids_max;
    uint32_t cpu_max; /* percent of one CPU */
};

/* A process's cgroup, <workload>/<n>. Made on the loop before the clone, joined by the child,
 * removed once the process is reaped (or, while processes it left behind are still in it, as
 * soon as the last of them is gone). */
struct agent_cg {
    struct agent_cgroup *set; /* NULL: none */
    uint64_t n;               /* its number (never reused by this agent) */
    int procs_fd; /* its cgroup.procs, open for writing: the child joins by writing "0" */
    bool owned;   /* not handed back yet (agent_cg_release) */
};

#define AGENT_CG_NONE ((struct agent_cg){ NULL, 0, -1, false })

/* --cgroup @dir: use it for the processes started from now on, and remove the cgroups a previous
 * agent left in it (keeping those processes still use). 0, or -errno (logged): no limits. */
int agent_cgroup_open(struct agent *a, const char *dir);
/* True when the agent has a workload cgroup: capability "limits". */
bool agent_cgroup_on(const struct agent *a);
/* The limits of spawn params @sp, into @l: UNSUPPORTED (field named) for one this guest cannot
 * apply (no workload cgroup, or its controller is not enabled there). 0 or -1 with @err. */
int agent_cgroup_limits(const struct agent *a, const struct sbx_spawn_params *sp,
                        struct agent_limits *l, struct sbx_err *err);
/* A new cgroup with limits @l into @cg (AGENT_CG_NONE without a workload cgroup). 0, or -1 with
 * @err (errno, stage "cgroup"). */
int agent_cg_create(struct agent *a, const struct agent_limits *l, struct agent_cg *cg,
                    struct sbx_err *err);
/* The child has joined (or will never): close cgroup.procs. */
void agent_cg_joined(struct agent_cg *cg);
/* Its process was reaped: whether the kernel's OOM killer killed anything in the cgroup
 * (memory.events oom_kill), then hand the cgroup back (agent_cg_release). */
bool agent_cg_exited(struct agent_cg *cg);
/* Hand the cgroup back: removed now if empty, else as soon as it is. Idempotent. */
void agent_cg_release(struct agent_cg *cg);
/* SIGKILL every process in it (cgroup.kill), those that left the process group too. 0 or
 * -errno (-ENOENT once it is removed: they are all gone). */
int agent_cg_kill(const struct agent_cg *cg);

#endif /* SBX_AGENT_CGROUP_H */
