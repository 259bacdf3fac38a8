/*
 * cgroup.c: the VM's cgroup v2 hierarchy (docs/INIT.md "Resource limits"). init and the agent
 * live in a protected cgroup, every process the agent starts lives below one limited cgroup:
 *
 *     /sys/fs/cgroup           controllers cpu, memory, pids enabled for the two below
 *     |-- sbx                  sbx-init, the agent (and the rescue shell): memory.min, cpu.weight
 *     `-- workload             sbx.workload.*: memory.max, pids.max, cpu.max of all of them;
 *         `-- <n>              one per process the agent starts (the agent makes and removes them)
 *
 * So a fork bomb or a memory hog of a workload hits its own cgroup's limits, or those of the
 * workload cgroup, before it can starve init or the agent of memory, processes or CPU.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/magic.h>
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/sysinfo.h>
#include <unistd.h>

#include "init.h"

#define INIT_CGROUP_SBX INIT_CGROUP_ROOT "/sbx"

static const char *const init_controllers[] = { "cpu", "memory", "pids" };

/* Writes `value` to `dir`/`file`. Returns 0 or -errno. */
static int cg_write(const char *dir, const char *file, const char *value)
{
    char path[INIT_PATH_LEN];
    size_t n = strlen(value);
    int fd, rc;

    snprintf(path, sizeof(path), "%s/%s", dir, file);
    if ((fd = open(path, O_WRONLY | O_CLOEXEC)) < 0) {
        return -errno;
    }
    rc = write(fd, value, n) == (ssize_t)n ? 0 : -errno;
    close(fd);
    return rc;
}

/* cg_write, logging a failure; returns whether it worked. */
static bool cg_set(const char *dir, const char *file, const char *value)
{
    int rc = cg_write(dir, file, value);

    INIT_LOG_IF(rc < 0, "cgroup: %s/%s=%s: %s", dir, file, value, strerror(-rc));
    return rc == 0;
}

/* "auto" memory_max: 90% of the RAM minus INIT_WL_RESERVE (what the kernel, init and the agent
 * keep for themselves), at least 16 MiB. */
static uint64_t auto_memory(void)
{
    struct sysinfo si;
    uint64_t total, max;

    if (sysinfo(&si) < 0) {
        return INIT_LIMIT_NONE;
    }
    total = (uint64_t)si.totalram * si.mem_unit;
    max = total / 10 * 9;
    return max > (uint64_t)INIT_WL_RESERVE + (16u << 20) ? max - INIT_WL_RESERVE : 16u << 20;
}

/* "auto" pids_max: INIT_WL_PIDS_AUTO, but at most half of kernel.threads-max. pids.max does not
 * limit init's and the agent's forks, threads-max limits everyone's: the other half is theirs
 * (and the kernel's). threads-max is RAM / 128 KiB, so a 512 MiB VM has about 3900. */
static uint64_t auto_pids(void)
{
    char buf[32];
    ssize_t n = init_read_file("/proc/sys/kernel/threads-max", buf, sizeof(buf), NULL);
    long long t;

    buf[n > 0 && buf[n - 1] == '\n' ? n - 1 : n > 0 ? n : 0] = '\0';
    t = init_parse_uint(buf, 1LL << 31);
    if (t < 0 || t / 2 >= INIT_WL_PIDS_AUTO) {
        return INIT_WL_PIDS_AUTO;
    }
    return t / 2 > 16 ? (uint64_t)t / 2 : 16;
}

/* A limit's cgroup value: "max" or the number (cpu_max: "<quota> <period>" in microseconds). */
static void limit_value(char *buf, size_t size, uint64_t v, bool cpu)
{
    if (v == INIT_LIMIT_NONE) {
        snprintf(buf, size, "max");
    } else if (cpu) {
        snprintf(buf, size, "%llu 100000", (unsigned long long)v * 1000);
    } else {
        snprintf(buf, size, "%llu", (unsigned long long)v);
    }
}

void init_cgroup_setup(struct init_state *st)
{
    const struct init_config *cfg = &st->cfg;
    char on[32] = "", buf[32], mem[24], pids[24], cpu[24];
    struct statfs sf;
    int rc;

    /* Only the machine's own init: in a test's PID namespace (--root-prefix, or the root-switch
     * tests without it) the cgroups are the test machine's, not ours to rearrange. */
    if (!init_is_machine_init(st)) {
        INIT_LOG_IF(st->prefix[0] == '\0',
                    "cgroup: not the machine's init (a PID namespace); no workload limits");
        return;
    }
    if (statfs(INIT_CGROUP_ROOT, &sf) < 0 || sf.f_type != CGROUP2_SUPER_MAGIC) {
        init_log("cgroup: %s is not cgroup2; no workload limits", INIT_CGROUP_ROOT);
        return;
    }
    /* Moving a process into a cgroup waits for an RCU grace period unless the hierarchy
     * favours such changes (Linux >= 6.0): the agent moves every child it starts (measured
     * under TCG: 20 ms a spawn, 9 ms with it); forks and exits pay a little instead. */
    INIT_LOG_IF(mount(NULL, INIT_CGROUP_ROOT, NULL, MS_REMOUNT | MS_NOSUID | MS_NODEV | MS_NOEXEC,
                      "favordynmods") < 0,
                "cgroup: favordynmods: %m; starts are slower");
    /* One at a time: a kernel without one of them still gets the others. */
    for (size_t i = 0; i < sizeof(init_controllers) / sizeof(init_controllers[0]); i++) {
        snprintf(buf, sizeof(buf), "+%s", init_controllers[i]);
        if (cg_set(INIT_CGROUP_ROOT, "cgroup.subtree_control", buf)) {
            snprintf(on + strlen(on), sizeof(on) - strlen(on), "%s%s", on[0] ? "," : "",
                     init_controllers[i]);
        }
    }
    if ((mkdir(INIT_CGROUP_SBX, 0755) < 0 && errno != EEXIST) ||
        (mkdir(INIT_CGROUP_WORKLOAD, 0755) < 0 && errno != EEXIST)) {
        init_log("cgroup: mkdir: %m; no workload limits");
        return;
    }
    /* init itself: the agent (and the rescue shell) start where init is. */
    if ((rc = cg_write(INIT_CGROUP_SBX, "cgroup.procs", "0")) < 0) {
        init_log("cgroup: moving init to %s: %s; init and the agent are not protected",
                 INIT_CGROUP_SBX, strerror(-rc));
    }
    snprintf(buf, sizeof(buf), "%lld", INIT_SBX_MEMORY_MIN);
    (void)cg_set(INIT_CGROUP_SBX, "memory.min", buf);
    snprintf(buf, sizeof(buf), "%d", INIT_SBX_CPU_WEIGHT);
    (void)cg_set(INIT_CGROUP_SBX, "cpu.weight", buf);

    limit_value(mem, sizeof(mem),
                cfg->wl_memory_max == INIT_LIMIT_AUTO ? auto_memory() : cfg->wl_memory_max, false);
    limit_value(pids, sizeof(pids),
                cfg->wl_pids_max == INIT_LIMIT_AUTO ? auto_pids() : cfg->wl_pids_max, false);
    limit_value(cpu, sizeof(cpu), cfg->wl_cpu_max, true);
    (void)cg_set(INIT_CGROUP_WORKLOAD, "memory.max", mem);
    (void)cg_set(INIT_CGROUP_WORKLOAD, "pids.max", pids);
    (void)cg_set(INIT_CGROUP_WORKLOAD, "cpu.max", cpu);
    /* The agent's per-process cgroups get the same controllers. */
    for (size_t i = 0; i < sizeof(init_controllers) / sizeof(init_controllers[0]); i++) {
        if (strstr(on, init_controllers[i]) != NULL) {
            snprintf(buf, sizeof(buf), "+%s", init_controllers[i]);
            (void)cg_set(INIT_CGROUP_WORKLOAD, "cgroup.subtree_control", buf);
        }
    }
    st->cgroup = true;
    init_log("cgroup: controllers %s; workload memory.max=%s pids.max=%s cpu.max=%s",
             on[0] ? on : "none", mem, pids, cpu);
}
