/* main.c: sbx-init, the PID 1 of every sandbox VM: boot steps, main loop and shutdown. */
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/reboot.h>
#include <sys/signalfd.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

#include "init.h"

static const char init_usage[] =
    "usage: sbx-init [options]   (PID 1 of an sbx VM, configured by the kernel command line)\n"
    "  --config FILE        config file (default /etc/sbx/init.conf)\n"
    "test-only options (run as PID 1 of a PID namespace; see docs/INIT.md):\n"
    "  --agent PATH         agent binary (default /sbin/sbx-agent)\n"
    "  --shell PATH         rescue shell (default /bin/sh)\n"
    "  --cmdline-file FILE  kernel command line (default /proc/cmdline)\n"
    "  --modules FILE       module list (default /etc/sbx/modules)\n"
    "  --root-prefix DIR    mount everything under DIR, never switch root\n";

/* What sbx.seccomp means, by mode (docs/INIT.md "Seccomp"). */
static const char *const init_seccomp_says[] = {
    "the agent and what it starts run unfiltered",
    "the agent and what it starts run under the baseline filter",
    "the agent runs under the baseline filter, what it starts under the workload filter too",
    "the filters of strict, which log what they would deny and deny nothing",
};

void init_request_shutdown(struct init_state *st, enum init_action action, const char *why)
{
    if (st->action == INIT_RUN) {
        st->action = action;
        snprintf(st->why, sizeof(st->why), "%s", why);
    }
}

/* True for --help. Unknown arguments (boot words the kernel passes on) are logged and skipped. */
static bool parse_args(struct init_state *st, int argc, char **argv)
{
    const struct {
        const char *name, **slot;
    } opts[] = { { "--agent", &st->agent_path },          { "--shell", &st->shell_path },
                 { "--config", &st->config_path },        { "--modules", &st->modules_path },
                 { "--cmdline-file", &st->cmdline_path }, { "--root-prefix", &st->prefix } };

    for (int i = 1; i < argc; i++) {
        size_t k = 0;

        while (k < 6 && (strcmp(argv[i], opts[k].name) != 0 || i + 1 == argc)) {
            k++;
        }
        if (strcmp(argv[i], "--help") == 0) {
            return true;
        } else if (k < 6) {
            *opts[k].slot = argv[++i];
        } else {
            init_log("ignoring argument \"%.60s\"", argv[i]);
        }
    }
    return false;
}

/* Blocks every signal but the synchronous faults (a buggy init must die, not hang) and reads
 * them from a signalfd. Dispositions go back to SIG_DFL, so a SIG_IGN we inherited (a shell
 * ignores SIGINT for background jobs) cannot leak into children. */
static int setup_signals(struct init_state *st)
{
    static const int faults[] = { SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT, SIGTRAP, SIGSYS };
    sigset_t all;

    for (int sig = 1; sig < NSIG; sig++) {
        (void)signal(sig, SIG_DFL); /* fails for SIGKILL, SIGSTOP and libc-internal ones */
    }
    (void)sigfillset(&all); /* cannot fail on a valid set, nor sigdelset on valid numbers */
    for (size_t i = 0; i < sizeof(faults) / sizeof(faults[0]); i++) {
        (void)sigdelset(&all, faults[i]);
    }
    if (sigprocmask(SIG_SETMASK, &all, &st->orig_mask) < 0) {
        return -errno;
    }
    st->sigfd = signalfd(-1, &all, SFD_NONBLOCK | SFD_CLOEXEC);
    return st->sigfd < 0 ? -errno : 0;
}

static void read_signals(struct init_state *st)
{
    struct signalfd_siginfo si;
    char why[80];

    while (read(st->sigfd, &si, sizeof(si)) == (ssize_t)sizeof(si)) {
        int sig = (int)si.ssi_signo;

        snprintf(why, sizeof(why), "signal %d (%s) from pid %u", sig, strsignal(sig), si.ssi_pid);
        /* Ctrl-Alt-Del (SIGINT once CAD is off), SIGTERM, and the busybox (USR1/USR2/PWR)
         * and systemd (RTMIN+3/+4/+5) conventions; a halt is a poweroff in a VM. */
        if (sig == SIGRTMIN + 5) {
            init_request_shutdown(st, INIT_REBOOT, why);
        } else if (sig == SIGINT || sig == SIGTERM || sig == SIGPWR || sig == SIGUSR1 ||
                   sig == SIGUSR2 || sig == SIGRTMIN + 3 || sig == SIGRTMIN + 4) {
            init_request_shutdown(st, INIT_POWEROFF, why);
        } else if (sig != SIGCHLD && sig != SIGWINCH && sig != SIGPIPE) {
            init_log("ignoring %s", why); /* SIGCHLD: reaping runs every round anyway */
        }
    }
}

/* Sends `sig` to all, then waits up to `ns` for every process to be gone, reaping; true if so. */
static bool kill_all(struct init_state *st, int sig, int64_t ns)
{
    INIT_LOG_IF(kill(-1, sig) < 0 && errno != ESRCH, "shutdown: kill(-1, %s): %m",
                sig == SIGKILL ? "SIGKILL" : "SIGTERM");
    for (int64_t until = init_now(CLOCK_BOOTTIME) + ns;;) {
        struct pollfd p = { st->sigfd, POLLIN, 0 };
        int64_t left = until - init_now(CLOCK_BOOTTIME);

        if (init_reap(st)) {
            init_log("shutdown: all processes gone");
            return true;
        }
        if (left <= 0) {
            return false;
        }
        /* Woken by SIGCHLD; at most 50 ms, so a coalesced signal cannot cost the grace. */
        if (poll(&p, 1, left > 50 * INIT_MSEC ? 50 : (int)(left / INIT_MSEC) + 1) > 0) {
            read_signals(st); /* a shutdown is under way: requests change nothing */
        }
    }
}

/* Dirty + Writeback of /proc/meminfo in KiB, or -1 (no /proc: the sync child unmounts it). */
static long long dirty_kib(void)
{
    char buf[INIT_MEMINFO_READ];

    return init_read_file("/proc/meminfo", buf, sizeof(buf), NULL) > 0 ? init_meminfo_dirty(buf)
                                                                       : -1;
}

/* sync, unmount what init mounted, sync, in a child: a filesystem that does not answer (a hung
 * network or FUSE mount, a dying disk) must not keep the machine from powering off, and a disk
 * that is slow but writing must not lose what it has still to write. So the child is waited for
 * while the kernel's dirty and writeback memory keeps falling, sbx.shutdown_sync at most, and
 * given up after INIT_SYNC_STALL_NS without a fall (init_sync_wait). Left behind, it stays stuck
 * in the kernel. */
static void sync_and_unmount(struct init_state *st)
{
    int64_t now = init_now(CLOCK_BOOTTIME), next = now, max = st->cfg.shutdown_sync_s * INIT_NSEC;
    struct init_sync_watch w = { now, now, dirty_kib() };
    bool slow = false;
    int status;
    pid_t pid;

    init_log("shutdown: sync");
    if ((pid = fork()) == 0) {
        sync();
        init_umount_all(st);
        sync();
        _exit(0);
    }
    if (pid < 0) {
        init_log("shutdown: fork: %m; sync and unmount skipped");
        return;
    }
    while (waitpid(pid, &status, WNOHANG) == 0) {
        struct timespec ts = { 0, 10 * 1000 * 1000 };
        bool sample = (now = init_now(CLOCK_BOOTTIME)) >= next; /* twice a second is enough */
        long long kib = sample ? dirty_kib() : -1;

        next = sample ? now + INIT_NSEC / 2 : next;
        if (!init_sync_wait(&w, kib, now, max)) {
            bool capped = now - w.start_ns >= max;

            init_log("shutdown: sync and unmount still running after %.1fs (%s %llds); going on "
                     "without them",
                     (double)(now - w.start_ns) / INIT_NSEC,
                     capped ? "sbx.shutdown_sync:" : "no fall in dirty and writeback memory for",
                     capped ? (long long)st->cfg.shutdown_sync_s : INIT_SYNC_STALL_NS / INIT_NSEC);
            return;
        }
        if (!slow && now - w.start_ns >= INIT_SYNC_STALL_NS) {
            slow = true;
            init_log("shutdown: sync still running after %llds; dirty and writeback memory fell "
                     "in that time (to %lld KiB): waiting on while it falls, %llds in all at most",
                     INIT_SYNC_STALL_NS / INIT_NSEC, w.low_kib, (long long)st->cfg.shutdown_sync_s);
        }
        (void)nanosleep(&ts, NULL);
    }
    INIT_LOG_IF(slow, "shutdown: sync and unmount done after %.1fs",
                (double)(init_now(CLOCK_BOOTTIME) - w.start_ns) / INIT_NSEC);
}

/* SIGTERM to all, grace, SIGKILL, sync, unmount, then reboot(2) from a child: POWER_OFF
 * (and HALT) can end in do_exit() of the caller, and PID 1 must never exit. */
static _Noreturn void shutdown_now(struct init_state *st)
{
    int cmd = st->action == INIT_REBOOT ? RB_AUTOBOOT : RB_POWER_OFF, status = 0;
    pid_t pid;

    init_log("shutdown: %s (%s)", cmd == RB_AUTOBOOT ? "reboot" : "poweroff", st->why);
    if (st->ctl >= 0) {
        close(st->ctl);
        st->ctl = -1;
    }
    init_log("shutdown: SIGTERM to all processes; grace %llds",
             (long long)st->cfg.shutdown_grace_s);
    if (!kill_all(st, SIGTERM, st->cfg.shutdown_grace_s * INIT_NSEC)) {
        init_log("shutdown: SIGKILL to all processes");
        if (!kill_all(st, SIGKILL, 2 * INIT_NSEC)) {
            init_log("shutdown: processes left after SIGKILL (uninterruptible?)");
        }
    }
    sync_and_unmount(st);
    init_log("shutdown: reboot(%s)", cmd == RB_AUTOBOOT ? "RB_AUTOBOOT" : "RB_POWER_OFF");
    /* Let a serial console show that line, for half a second at most: a console that takes
     * nothing (stopped, ^S) must not keep the machine from powering off. ENOTTY: not a tty. */
    for (int i = 0, q; i < 50 && ioctl(STDERR_FILENO, TIOCOUTQ, &q) == 0 && q > 0; i++) {
        struct timespec ts = { 0, 10 * 1000 * 1000 };
        (void)nanosleep(&ts, NULL);
    }
    if ((pid = fork()) == 0) {
        _exit(reboot(cmd) < 0 ? errno : 0);
    }
    if (pid < 0) {
        (void)reboot(cmd); /* no child to do it: the last resort */
    } else if (waitpid(pid, &status, 0) == pid && WIFEXITED(status)) {
        init_log("shutdown: reboot(2) returned: %s; halted", strerror(WEXITSTATUS(status)));
    }
    for (;;) {
        pause();
    }
}

static _Noreturn void fatal(struct init_state *st, const char *what)
{
    init_log("fatal: %s: %m; powering off", what);
    init_request_shutdown(st, INIT_POWEROFF, "fatal error");
    shutdown_now(st);
}

/* Fires the timers that are due and lowers *next to the earliest one still pending. */
static void run_timers(struct init_state *st, int64_t now, int64_t *next)
{
    if (st->deadline_ns != 0 && now >= st->deadline_ns) {
        init_request_shutdown(st, INIT_POWEROFF, "lifetime deadline reached");
    }
    if (st->session_ns != 0 && now >= st->session_ns) {
        init_request_shutdown(st, INIT_POWEROFF, "session ended");
    }
    if (st->action != INIT_RUN) {
        return;
    }
    if (st->agent.restart_ns != 0 && now >= st->agent.restart_ns) {
        init_agent_start(st);
    }
    if (st->want_shell && st->shell.pid == 0 && now >= st->shell.restart_ns) {
        init_shell_start(st);
    }
    const int64_t at[] = { st->deadline_ns, st->session_ns, st->agent.restart_ns,
                           st->want_shell && st->shell.pid == 0 ? st->shell.restart_ns : 0 };
    for (int i = 0; i < 4; i++) {
        *next = at[i] != 0 && at[i] < *next ? at[i] : *next;
    }
}

static _Noreturn void main_loop(struct init_state *st)
{
    for (;;) {
        struct pollfd p[2] = { { st->sigfd, POLLIN, 0 }, { -1, POLLIN, 0 } };
        int64_t now = init_now(CLOCK_BOOTTIME), next = now + 60 * INIT_NSEC;

        run_timers(st, now, &next);
        if (st->reap_more) {
            next = now; /* zombies still wait: look at the rest and come back at once */
        }
        if (st->action != INIT_RUN) {
            shutdown_now(st);
        }
        p[1].fd = st->ctl; /* after run_timers, which may have started an agent */
        if (poll(p, 2, next <= now ? 0 : (int)((next - now + INIT_MSEC - 1) / INIT_MSEC)) < 0 &&
            errno != EINTR) {
            fatal(st, "poll");
        }
        if (p[0].revents & POLLIN) {
            read_signals(st);
        }
        if (p[1].revents != 0) {
            init_ctl_read(st);
        }
        /* Every round, not only on SIGCHLD: signals coalesce, and no zombie may wait. */
        (void)init_reap(st);
    }
}

/* Defaults, then the config file, then the command line (highest precedence). */
static void load_config(struct init_state *st, bool quiet)
{
    char cmdline[INIT_FILE_MAX];
    int rc;

    st->cfg.quiet = quiet;
    init_config_defaults(&st->cfg);
    rc = quiet ? 0 : init_config_load_file(&st->cfg, st->config_path);
    INIT_LOG_IF(rc < 0 && rc != -ENOENT, "config: %s: %s", st->config_path, strerror(-rc));
    memcpy(cmdline, st->cmdline, sizeof(cmdline)); /* tokenising writes into it */
    init_config_load_cmdline(&st->cfg, cmdline);
    st->cfg.quiet = false;
}

int main(int argc, char **argv)
{
    struct init_state st = {
        .agent_path = "/sbin/sbx-agent",
        .shell_path = "/bin/sh",
        .config_path = "/etc/sbx/init.conf",
        .cmdline_path = "/proc/cmdline",
        .modules_path = "/etc/sbx/modules",
        .prefix = "",
        .sigfd = -1,
        .ctl = -1,
        .listen_fds = { [0 ... INIT_LISTEN_MAX - 1] = -1 }, /* none held yet */
        .agent.backoff_ns = INIT_BACKOFF_MIN_NS,
        .start_ns = init_now(CLOCK_BOOTTIME), /* first: the kernel's share of the boot */
    };
    bool help = parse_args(&st, argc, argv);
    ssize_t n;
    int rc;

    if (getpid() != 1) { /* its shutdown would reboot the machine it was run on by mistake */
        fputs(help ? init_usage : "sbx-init: must run as PID 1 (tests: unshare --pid --fork)\n",
              help ? stdout : stderr);
        return help ? 0 : 1;
    }
    /* The console first: with fds 0-2 closed (no console in the initramfs), any fd opened before
     * would take one of them (the signalfd took 0, and the rescue shell had no stdin). */
    init_console_setup(&st);
    rc = setup_signals(&st);
    init_log_open(); /* where /proc is mounted already; else after init_mount_early */
    init_log("sbx-init starting: %.6fs after boot", (double)st.start_ns / INIT_NSEC);
    if (rc < 0) {
        errno = -rc;
        fatal(&st, "signals");
    }
    /* Ctrl-Alt-Del becomes SIGINT to us, not an instant reset. EINVAL: a PID namespace (tests). */
    INIT_LOG_IF(reboot(RB_DISABLE_CAD) < 0 && errno != EINVAL, "reboot(RB_DISABLE_CAD): %m");
    init_mount_early(&st);
    init_log_open();
    INIT_LOG_IF(init_oom_score_adj(-1000) < 0, "oom_score_adj: %m");
    init_modules_load(st.modules_path);
    /* Uncut: the kernel's own command line is far shorter (2 KiB on x86 and arm64). */
    n = init_read_file(st.cmdline_path, st.cmdline, sizeof(st.cmdline), NULL);
    INIT_LOG_IF(n < 0, "config: %s: %s", st.cmdline_path, strerror((int)-n));
    /* A silent first pass gives root= for the switch, before the new root's config file. */
    if (st.prefix[0] == '\0') {
        load_config(&st, true);
        if (init_root_switch(&st)) {
            init_mount_early(&st);
        }
    }
    load_config(&st, false);
    init_log("config: lifetime=%s session_grace=%llds shutdown_grace=%llds listen=%s "
             "debug=%s rescue_after=%d env=%d",
             init_lifetime_names[st.cfg.lifetime], (long long)st.cfg.session_grace_s,
             (long long)st.cfg.shutdown_grace_s, st.cfg.listen,
             st.cfg.debug_shell ? "shell" : "none", st.cfg.rescue_after, st.cfg.nenv);
    init_log("seccomp: %s: %s", sbx_filter_mode_name(st.cfg.seccomp),
             init_seccomp_says[st.cfg.seccomp]);
    init_harden(&st);
    init_cgroup_setup(&st);
    init_net_setup(&st.cfg);
    if (st.cfg.lifetime == INIT_LIFETIME_DURATION) {
        /* Counted from init's start, so it does not depend on how the agent fares. */
        st.deadline_ns = st.start_ns + st.cfg.lifetime_s * INIT_NSEC;
        init_log("lifetime: power off in %llds", (long long)st.cfg.lifetime_s);
    }
    st.want_shell = st.cfg.debug_shell;
    init_agent_start(&st);
    main_loop(&st);
}
