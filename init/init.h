/* init.h: sbx-init's state, configuration and the functions its files share. */
#ifndef SBX_INIT_H
#define SBX_INIT_H

#include <netinet/in.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>
#include <time.h>

#include "filter.h"

/* Every cap in one place (house style: nothing unbounded). */
#define INIT_ENV_MAX        32    /* sbx.env.* entries */
#define INIT_ENV_LEN        1024  /* one "NAME=VALUE" */
#define INIT_LISTEN_MAX     8     /* --listen addresses */
#define INIT_VALUE_LEN      256   /* the listen list, root= */
#define INIT_PATH_LEN       512   /* mount points, including --root-prefix */
#define INIT_MOUNTS_MAX     16    /* mounts we made and unmount at shutdown */
#define INIT_FILE_MAX       16384 /* /proc/cmdline, the config file, the module list */
#define INIT_CTL_MAX        512   /* one control-channel datagram */
#define INIT_DURATION_MAX_S (10LL * 365 * 24 * 3600)

#define INIT_NSEC           1000000000LL
#define INIT_MSEC           1000000LL
#define INIT_BACKOFF_MIN_NS (100 * INIT_MSEC) /* first restart of a crashing agent */
#define INIT_BACKOFF_MAX_NS (5 * INIT_NSEC)
#define INIT_STABLE_NS      (10 * INIT_NSEC) /* an agent up this long is not crash-looping */
#define INIT_SHELL_PAUSE_NS (1 * INIT_NSEC)  /* rescue shell restarts at most once a second */
#define INIT_ROOT_WAIT_NS   (5 * INIT_NSEC)  /* wait for root= to appear */
#define INIT_SYNC_STALL_NS  (10 * INIT_NSEC) /* shutdown: sync and unmount with no progress */
#define INIT_SYNC_MAX_S     3600             /* sbx.shutdown_sync, at most */
#define INIT_MEMINFO_READ   4096 /* of /proc/meminfo: Dirty and Writeback are in its first KiB */

/* Resource limits (cgroup.c, docs/INIT.md "Resource limits"). */
#define INIT_CGROUP_ROOT     "/sys/fs/cgroup"
#define INIT_CGROUP_WORKLOAD INIT_CGROUP_ROOT "/workload" /* the agent's --cgroup */
#define INIT_LIMIT_AUTO      0            /* sbx.workload.*: "auto", sized at boot */
#define INIT_LIMIT_NONE      UINT64_MAX   /* sbx.workload.*: "max", no limit */
#define INIT_SBX_MEMORY_MIN  (32LL << 20) /* init and the agent: memory never reclaimed */
#define INIT_SBX_CPU_WEIGHT  1000         /* ...and their CPU share (workloads: 100) */
#define INIT_WL_RESERVE      (32LL << 20) /* auto memory_max: 90% of RAM minus this */
#define INIT_WL_PIDS_AUTO    4096         /* auto pids_max: this, at most threads-max / 2 */

enum init_lifetime { INIT_LIFETIME_NONE, INIT_LIFETIME_SESSION, INIT_LIFETIME_DURATION };
enum init_action { INIT_RUN, INIT_POWEROFF, INIT_REBOOT };

struct init_config {
    enum init_lifetime lifetime;
    int64_t lifetime_s, session_grace_s, shutdown_grace_s;
    int64_t shutdown_sync_s; /* sync and unmount at shutdown, at most (while they progress) */
    char listen[INIT_VALUE_LEN];
    char hostname[65];
    int rescue_after; /* failed agent starts in a row before the rescue shell; 0 = never */
    bool debug_shell, vsock_allow_local, has_ip, has_gw;
    enum sbx_filter_mode seccomp; /* sbx.seccomp */
    struct in_addr ip, gw;
    int ip_prefix;
    char root[INIT_VALUE_LEN];       /* root=, "" when absent */
    char token_file[INIT_VALUE_LEN]; /* sbx.token_file: the agent's --token-file; "" for none */
    char replay[32]; /* sbx.replay: the agent's --replay SIZE[,TOTAL]; "" for its default */
    bool squashfs, root_ro, overlay;
    bool quiet; /* do not report (the root-switch-only first pass) */
    /* sbx.workload.*: the limits of all workload processes together; INIT_LIMIT_AUTO or _NONE,
     * else bytes, processes, percent of one CPU. */
    uint64_t wl_memory_max, wl_pids_max, wl_cpu_max;
    int nenv;
    char env[INIT_ENV_MAX][INIT_ENV_LEN]; /* "NAME=VALUE"; later sources replace earlier */
};

/* A supervised child: the agent or the rescue shell. Times are CLOCK_BOOTTIME. */
struct init_child {
    pid_t pid; /* 0 when not running */
    int64_t started_ns;
    int64_t restart_ns; /* agent: 0 = not scheduled; shell: due when not running */
    int64_t backoff_ns; /* agent: the next restart delay */
};

/* The whole of sbx-init's state; one instance lives in main() and is passed explicitly. */
struct init_state {
    struct init_config cfg;
    const char *agent_path, *shell_path, *config_path, *cmdline_path, *modules_path;
    const char *prefix; /* --root-prefix (tests), "" in production */
    sigset_t orig_mask; /* what children get back before exec */
    int sigfd, ctl;     /* ctl: init's end of the control channel, -1 when none */
    int64_t start_ns;   /* CLOCK_BOOTTIME at entry to main() */
    struct init_child agent, shell;
    /* The listening sockets of sbx.listen, by position, held for every agent; -1: not held. */
    int listen_fds[INIT_LISTEN_MAX];
    bool agent_ready;        /* this agent instance said "ready" */
    bool want_shell;         /* sbx.debug=shell, or the agent kept failing */
    int start_failures;      /* agents in a row that died before "ready" */
    int clients;             /* host clients, as last reported by the agent */
    int64_t deadline_ns;     /* duration lifetime: power off then; 0 = none */
    int64_t session_ns;      /* session lifetime: power off then; 0 = not armed */
    enum init_action action; /* set once a shutdown was requested */
    char why[80];
    int nmounts;
    char mounts[INIT_MOUNTS_MAX][INIT_PATH_LEN]; /* in mount order; unmounted in reverse */
    bool cgroup;    /* the workload cgroup is set up: the agent gets --cgroup */
    bool reap_more; /* the last init_reap stopped at INIT_REAP_BATCH */
    char cmdline[INIT_FILE_MAX];
};

/* config.c */
/* Reads clock `id` in nanoseconds; 0 if it is unavailable. */
int64_t init_now(clockid_t id);
/* Gives init_log a non-blocking description of the console of its own (once /proc is there). */
void init_log_open(void);
/* Logs "sbx-init[<monotonic s>]: <message>" to the console in one write; keeps errno (%m). */
void init_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Logs the message when `failed` (a step that fails is reported, and boot goes on). */
#define INIT_LOG_IF(failed, ...) ((failed) ? init_log(__VA_ARGS__) : (void)0)
/* Reads up to size-1 bytes of `path` into buf, NUL-terminated. Returns the length or -errno.
 * With `cut`, for a reader of lines: a longer file is read up to its last whole line within
 * size-1 bytes (a line cut short would say something else: "sbx.lifetime=3600" would be read as
 * "sbx.lifetime=36"), and *cut is the number of the first line left out, 0 when none was. */
ssize_t init_read_file(const char *path, char *buf, size_t size, int *cut);
/* Fills `cfg` with the built-in defaults (listed in docs/INIT.md); keeps cfg->quiet. */
void init_config_defaults(struct init_config *cfg);
/* Applies one key. A bad value is reported (unless cfg->quiet) and gets the default: -EINVAL;
 * an unknown sbx.* key is reported: -ENOENT; other keys are the kernel's: ignored, 0. */
int init_config_set(struct init_config *cfg, const char *key, const char *value);
/* Applies the `key=value` lines of a file ('#' starts a comment line). 0 or -errno. */
int init_config_load_file(struct init_config *cfg, const char *path);
/* Applies the `key=value` lines of a file's text `text`, cut up in place; `path` names it in the
 * log. What init_config_load_file does once it has read the file. */
void init_config_load_text(struct init_config *cfg, char *text, const char *path);
/* Applies a kernel command line, tokenised in place; "double quotes" group words. */
void init_config_load_cmdline(struct init_config *cfg, char *cmdline);
/* Parses "<N>[s|m|h]" into seconds. Returns 0, -EINVAL or -ERANGE. */
int init_parse_duration(const char *s, int64_t *seconds);
/* Parses a decimal number in [0, max]; -1 if `s` is NULL or not one. */
long long init_parse_uint(const char *s, long long max);
/* Dirty + Writeback of /proc/meminfo's text, in KiB: what the kernel has still to write. -1 when
 * either is missing or malformed. */
long long init_meminfo_dirty(const char *text);
/* The wait for sync and unmount at shutdown (main.c; docs/INIT.md "Shutdown"). */
struct init_sync_watch {
    int64_t start_ns;    /* when they began (CLOCK_BOOTTIME) */
    int64_t progress_ns; /* when Dirty + Writeback last fell to a new low (start_ns at first) */
    long long low_kib;   /* that low; -1 while unknown */
};
/* Records a reading of Dirty + Writeback at `now` (`kib`, -1 for none) and returns whether to wait
 * on: while less than max_ns have passed since the start, and less than INIT_SYNC_STALL_NS since
 * the start or the last new low. A writeback that is slow but gets on is waited for; one that is
 * stuck (a hung network or FUSE mount, a dying disk) is given up as before. */
bool init_sync_wait(struct init_sync_watch *w, long long kib, int64_t now, int64_t max_ns);
/* "none", "session", "duration", indexed by enum init_lifetime. */
extern const char *const init_lifetime_names[3];
/* The control channel's verbs from the agent (docs/INIT.md "Control channel"). */
enum init_ctl_verb {
    INIT_CTL_READY,
    INIT_CTL_CLIENTS,
    INIT_CTL_EXTEND,
    INIT_CTL_SHUTDOWN,
    INIT_CTL_LIFETIME,
    INIT_CTL_NVERBS
};
/* Parses the text of one datagram, `len` bytes in `buf` (which has room for one more: it is
 * cut up in place, an optional trailing '\n' dropped). Returns its verb, with the value of the
 * verb's argument (the first, if repeated) in *arg, NULL when absent; or -1 for a message to
 * ignore. What is wrong is logged, a bad argument is skipped. */
int init_ctl_parse(char *buf, size_t len, const char **arg);

/* system.c */
/* Opens the console on fds 0-2 unless the kernel did (it does if the initramfs has one); runs
 * before init opens any other fd, which would take one of 0-2. */
void init_console_setup(struct init_state *st);
/* Mounts the missing pseudo filesystems and /dev links under st->prefix; failures are logged. */
void init_mount_early(struct init_state *st);
/* Switches from an initramfs to root=; true if it did. On failure it stays, still reachable. */
bool init_root_switch(struct init_state *st);
/* Unmounts what we mounted, in reverse order; remounts a switched-to root read-only. */
void init_umount_all(struct init_state *st);
/* The kernel's own PID namespace (PROC_PID_INIT_INO): the inode of /proc/self/ns/pid there. */
#define INIT_PID_NS_FIRST 0xEFFFFFFCu
/* True when this is the machine's init: no --root-prefix and the kernel's first PID namespace (a
 * test's PID namespace must leave the test machine's sysctls and cgroups alone). */
bool init_is_machine_init(const struct init_state *st);
/* Sets the kernel's protections against local tricks (fs.protected_*, Yama ptrace_scope,
 * kptr/dmesg_restrict), only as the machine's init. Failures are logged. */
void init_harden(const struct init_state *st);
/* Loads each module of the list file `path` with finit_module(2); EEXIST is success. */
void init_modules_load(const char *path);
/* Sets the hostname, brings up lo, and configures eth0 when sbx.ip is set. */
void init_net_setup(const struct init_config *cfg);

/* cgroup.c */
/* Puts init (and so the agent) in the protected cgroup `sbx` and creates `workload` with the
 * sbx.workload.* limits (docs/INIT.md); sets st->cgroup. Not under --root-prefix. Failures are
 * logged and boot goes on without limits. */
void init_cgroup_setup(struct init_state *st);

/* agent.c */
/* Writes `value` to /proc/self/oom_score_adj. Returns 0 or -errno. */
int init_oom_score_adj(int value);
/* Forks and execs the agent with the control channel on its fd 3, and sends it "boot". */
void init_agent_start(struct init_state *st);
/* Forks and execs the rescue shell on the console. */
void init_shell_start(struct init_state *st);
/* Children reaped per init_reap call, at most: a workload making orphans as fast as they can be
 * reaped must not keep PID 1 from its signals, control channel and timers. */
#define INIT_REAP_BATCH 256
/* Reaps exited children (INIT_REAP_BATCH at most; st->reap_more when more may wait), scheduling
 * restarts; true when init has no children left (ECHILD). */
bool init_reap(struct init_state *st);
/* Control datagrams handled per init_ctl_read call, at most. */
#define INIT_CTL_BATCH 64
/* Control datagrams read from a dead agent's channel, at most: its send buffer holds about 280 by
 * default; more could only come from a child it leaked fd 3 to, still sending. */
#define INIT_CTL_DRAIN 4096
/* Handles the pending control-channel datagrams (bad ones are logged), INIT_CTL_BATCH at most;
 * closes the channel at its end (the agent closed it or shut it down for writing). */
void init_ctl_read(struct init_state *st);

/* main.c */
/* Requests a shutdown, which the main loop then performs. The first request wins. */
void init_request_shutdown(struct init_state *st, enum init_action action, const char *why);

#endif
