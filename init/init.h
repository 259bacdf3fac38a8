/* init.h: sbx-init's state, configuration and the functions its files share. */
#ifndef SBX_INIT_H
#define SBX_INIT_H

#include <netinet/in.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>
#include <time.h>

/* Every cap in one place (house style: nothing unbounded). */
#define INIT_ENV_MAX        32   /* sbx.env.* entries */
#define INIT_ENV_LEN        256  /* one "NAME=VALUE" */
#define INIT_LISTEN_MAX     8    /* --listen addresses */
#define INIT_VALUE_LEN      256  /* listen list, root device, any other string value */
#define INIT_PATH_LEN       512  /* mount points, including --root-prefix */
#define INIT_MOUNTS_MAX     16   /* mounts we made and unmount at shutdown */
#define INIT_CMDLINE_LEN    4096 /* /proc/cmdline */
#define INIT_CTL_MAX        512  /* one control-channel datagram */
#define INIT_DURATION_MAX_S (10LL * 365 * 24 * 3600)

#define INIT_NSEC           1000000000LL
#define INIT_MSEC           1000000LL
#define INIT_BACKOFF_MIN_NS (100 * INIT_MSEC) /* first restart of a crashing agent */
#define INIT_BACKOFF_MAX_NS (5 * INIT_NSEC)
#define INIT_STABLE_NS      (10 * INIT_NSEC) /* an agent up this long is not crash-looping */
#define INIT_SHELL_PAUSE_NS (1 * INIT_NSEC)  /* rescue shell restarts at most once a second */
#define INIT_ROOT_WAIT_NS   (5 * INIT_NSEC)  /* wait for root= to appear */

enum init_lifetime { INIT_LIFETIME_NONE, INIT_LIFETIME_SESSION, INIT_LIFETIME_DURATION };
enum init_action { INIT_RUN, INIT_POWEROFF, INIT_REBOOT };

struct init_config {
    enum init_lifetime lifetime;
    int64_t lifetime_s;       /* INIT_LIFETIME_DURATION only */
    int64_t session_grace_s;  /* sbx.session_grace */
    int64_t shutdown_grace_s; /* sbx.shutdown_grace */
    char listen[INIT_VALUE_LEN];
    char hostname[65];
    bool debug_shell;
    bool vsock_allow_local;
    int rescue_after;                /* consecutive failed agent starts before a rescue shell */
    bool has_ip, has_gw;
    struct in_addr ip, gw;
    int ip_prefix;
    char root[INIT_VALUE_LEN];       /* root=, "" when absent */
    char rootfstype[16];             /* rootfstype= */
    bool root_ro;                    /* "ro" on the command line */
    bool overlay;                    /* sbx.overlay=tmpfs */
    bool quiet;                      /* do not report (first, root-switch-only pass) */
    int nenv;
    char env[INIT_ENV_MAX][INIT_ENV_LEN]; /* "NAME=VALUE", later sources replace earlier */
};

/* A supervised child: the agent or the rescue shell. */
struct init_child {
    pid_t pid;           /* 0 when not running */
    int64_t started_ns;  /* CLOCK_BOOTTIME */
    int64_t restart_ns;  /* when to start it again; 0 = not scheduled */
    int64_t backoff_ns;  /* next restart delay of a crash-looping agent */
};

/* The whole of sbx-init's state; one instance lives in main() and is passed explicitly. */
struct init_state {
    struct init_config cfg;
    const char *agent_path, *shell_path, *config_path, *cmdline_path, *modules_path;
    char prefix[INIT_PATH_LEN]; /* --root-prefix (tests), "" in production */
    sigset_t orig_mask;         /* what children get back before exec */
    int sigfd;
    int ctl;                    /* init's end of the control socketpair, -1 when none */
    int64_t start_ns;           /* CLOCK_BOOTTIME at entry to main() */
    int64_t ready_ns;           /* CLOCK_BOOTTIME of the agent's last "ready", 0 before */
    struct init_child agent, shell;
    bool agent_ready;           /* this agent instance said "ready" */
    bool want_shell;            /* sbx.debug=shell, or the agent kept failing */
    int start_failures;         /* agents in a row that died before "ready" */
    int clients;                /* host clients, as last reported by the agent */
    int64_t deadline_ns;        /* duration lifetime: power off at; 0 = none */
    int64_t session_ns;         /* session lifetime: power off at; 0 = not armed */
    enum init_action action;    /* set once shutdown was requested */
    char why[64];               /* what requested it */
    int nmounts;
    char mounts[INIT_MOUNTS_MAX][INIT_PATH_LEN]; /* in mount order; unmounted in reverse */
    char cmdline[INIT_CMDLINE_LEN];
};

/* log.c */

/* Reads clock `id` in nanoseconds; 0 if the clock is unavailable (never fails the caller). */
int64_t init_now(clockid_t id);

/* Writes "sbx-init[<monotonic s>]: <message>\n" to stderr (the console) in one write(2). */
void init_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* config.c */

/* Fills `cfg` with the built-in defaults (docs/INIT.md lists them). */
void init_config_defaults(struct init_config *cfg);

/* Applies one key. A bad value is reported on the console (unless cfg->quiet), the key is
 * reset to its default and -EINVAL is returned; an unknown sbx.* key is reported and gives
 * -ENOENT; keys outside sbx.* that init does not use are ignored (0). */
int init_config_set(struct init_config *cfg, const char *key, const char *value);

/* Applies every `key=value` line of the file at `path` ('#' starts a comment line).
 * Returns 0, or -errno if the file cannot be read (the caller decides whether that matters). */
int init_config_load_file(struct init_config *cfg, const char *path);

/* Applies the keys of a kernel command line. `cmdline` is modified (tokenised in place);
 * double quotes group words and are removed, as the kernel does. */
void init_config_load_cmdline(struct init_config *cfg, char *cmdline);

/* Parses "<N>[s|m|h]" into seconds. Returns 0, or -EINVAL / -ERANGE. */
int init_parse_duration(const char *s, int64_t *seconds);

/* mount.c */

/* Mounts /proc, /sys, /dev, /dev/pts, /dev/shm, /run, /tmp and cgroup2 (each only if not
 * already mounted, all under st->prefix) and creates the /dev links. Never fails the boot. */
void init_mount_early(struct init_state *st);

/* Switches to the root= device when running from an initramfs; no-op otherwise. On any
 * failure it logs and leaves us in the initramfs, so the VM stays reachable. */
void init_root_switch(struct init_state *st);

/* Unmounts what init_mount_early/init_root_switch mounted, in reverse order. */
void init_umount_all(struct init_state *st);

/* modules.c */

/* Loads each module listed in the file at `path` with finit_module(2). */
void init_modules_load(const char *path);

/* net.c */

/* Sets the hostname, brings up lo, and configures eth0 when sbx.ip is set. */
void init_net_setup(const struct init_config *cfg);

/* agent.c */

/* Forks and execs the agent with its control channel on fd 3. */
void init_agent_start(struct init_state *st);

/* Forks and execs the rescue shell on the console. */
void init_shell_start(struct init_state *st);

/* Reaps every child that has exited; restarts the agent and shell as needed.
 * Returns true when init has no children left at all (waitpid said ECHILD). */
bool init_reap(struct init_state *st);

/* ctl.c */

/* Sends `boot ...` to the agent just started. */
void init_ctl_send_boot(struct init_state *st, int64_t exec_ns);

/* Reads and handles every pending datagram from the agent. */
void init_ctl_read(struct init_state *st);

/* main.c */

/* Requests a shutdown; the main loop performs it. The first request wins. */
void init_request_shutdown(struct init_state *st, enum init_action action, const char *why);

#endif
