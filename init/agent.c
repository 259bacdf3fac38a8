/* agent.c: the agent (started, reaped, restarted; its control channel) and the rescue shell. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "init.h"
#include "listen.h"

int init_oom_score_adj(int value)
{
    char buf[16];
    int n = snprintf(buf, sizeof(buf), "%d", value);
    int fd = open("/proc/self/oom_score_adj", O_WRONLY | O_CLOEXEC);
    int rc = fd < 0 || write(fd, buf, (size_t)n) != n ? -errno : 0;

    if (fd >= 0) {
        close(fd);
    }
    return rc;
}

/* The control channel: one ASCII line per SOCK_SEQPACKET datagram (docs/INIT.md). */
static __attribute__((format(printf, 2, 3))) void ctl_send(struct init_state *st, const char *fmt,
                                                           ...)
{
    char buf[INIT_CTL_MAX + 1];
    va_list ap;
    int n;

    va_start(ap, fmt);
    n = vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    /* Non-blocking: a wedged agent must never stall PID 1. */
    if (st->ctl >= 0 && n > 0 && n <= INIT_CTL_MAX &&
        send(st->ctl, buf, (size_t)n, MSG_DONTWAIT | MSG_NOSIGNAL) != n) {
        init_log("ctl: send \"%.40s\": %m", buf);
    }
}

/* Answers "extend" and "lifetime?": the agent pairs each question with one reply. */
static void reply_lifetime(struct init_state *st, const char *arg)
{
    /* Only the lifetime mode's own timer is ever set: deadline_ns or session_ns, or none. */
    ctl_send(st, "lifetime mode=%s deadline_ns=%lld", init_lifetime_names[st->cfg.lifetime],
             (long long)(st->deadline_ns != 0 ? st->deadline_ns : st->session_ns));
}

/* Records the number of connected host clients and runs the session timer. */
static void set_clients(struct init_state *st, int n)
{
    bool session = st->cfg.lifetime == INIT_LIFETIME_SESSION;

    if (session && n > 0 && st->session_ns != 0) {
        st->session_ns = 0;
        init_log("lifetime: a client connected; session timer stopped");
    } else if (session && n == 0 && st->clients > 0) {
        /* Armed only on the way down: a VM nobody has connected to yet stays up. */
        st->session_ns = init_now(CLOCK_BOOTTIME) + st->cfg.session_grace_s * INIT_NSEC;
        init_log("lifetime: last client left; power off in %llds unless one connects",
                 (long long)st->cfg.session_grace_s);
    }
    st->clients = n;
}

static void on_ready(struct init_state *st, const char *arg)
{
    int64_t now = init_now(CLOCK_BOOTTIME);

    st->agent_ready = true;
    st->start_failures = 0;
    init_log("agent ready (pid %d): %.6fs after init started, %.6fs after boot", (int)st->agent.pid,
             (double)(now - st->start_ns) / INIT_NSEC, (double)now / INIT_NSEC);
}

static void on_clients(struct init_state *st, const char *arg)
{
    long long n = init_parse_uint(arg, 1 << 20);

    if (n < 0) {
        init_log("ctl: clients: n= missing or not a number; ignored");
        return;
    }
    init_log("agent: %lld host client(s) connected", n);
    set_clients(st, (int)n);
}

static void on_extend(struct init_state *st, const char *arg)
{
    long long s = init_parse_uint(arg, INIT_DURATION_MAX_S);
    int64_t now = init_now(CLOCK_BOOTTIME);

    if (s < 0) {
        init_log("ctl: extend: seconds= missing or not a number; ignored");
    } else if (st->cfg.lifetime != INIT_LIFETIME_DURATION) {
        init_log("ctl: extend: lifetime is not a duration; ignored");
    } else {
        /* From the later of now and the current deadline: extending never shortens. At most
         * 10 years from now, as sbx.lifetime: extends in a row used to overflow the deadline
         * after 29 of 10 years each, into the past (an immediate power-off). */
        int64_t from = st->deadline_ns > now ? st->deadline_ns : now;
        int64_t cap = now + INIT_DURATION_MAX_S * INIT_NSEC;

        st->deadline_ns = from >= cap                  ? from
                          : cap - from < s * INIT_NSEC ? cap
                                                       : from + s * INIT_NSEC;
        init_log("lifetime: extended by %llds; power off in %.3fs", s,
                 (double)(st->deadline_ns - now) / INIT_NSEC);
    }
    reply_lifetime(st, NULL); /* always, even when ignored */
}

static void on_shutdown(struct init_state *st, const char *arg)
{
    const char *action = arg != NULL ? arg : "poweroff";

    if (strcmp(action, "poweroff") == 0 || strcmp(action, "reboot") == 0) {
        init_request_shutdown(st, action[0] == 'r' ? INIT_REBOOT : INIT_POWEROFF,
                              "asked by the agent");
    } else {
        init_log("ctl: shutdown: action=\"%.20s\" is not poweroff or reboot; ignored", action);
    }
}

/* What each verb does, by enum init_ctl_verb; arg: its argument's value, or NULL. */
static void (*const init_ctl_handlers[INIT_CTL_NVERBS])(struct init_state *st, const char *arg) = {
    [INIT_CTL_READY] = on_ready,          [INIT_CTL_CLIENTS] = on_clients,
    [INIT_CTL_EXTEND] = on_extend,        [INIT_CTL_SHUTDOWN] = on_shutdown,
    [INIT_CTL_LIFETIME] = reply_lifetime,
};

/* Whether a recv() of 0 on the channel was its end, not an empty datagram (legal on SOCK_SEQPACKET,
 * and ignored): the agent closed its end (POLLHUP) or shut it down for writing (SHUT_WR: POLLRDHUP
 * only; recv() then gives 0 for ever), and no message with a byte in it waits behind. FIONREAD
 * counts the bytes of every datagram queued on a SOCK_SEQPACKET socket, so 0 means only empty
 * ones are left, if any: nothing to read on for. */
static bool ctl_ended(int fd)
{
    struct pollfd p = { fd, POLLIN | POLLRDHUP, 0 };
    int queued = 0;

    if (poll(&p, 1, 0) < 0 || (p.revents & (POLLHUP | POLLRDHUP)) == 0) {
        return false;
    }
    return ioctl(fd, FIONREAD, &queued) < 0 || queued == 0;
}

/* Handles up to `max` datagrams of the control channel, stopping early when none waits; closes the
 * channel at its end. */
static void ctl_read(struct init_state *st, int max)
{
    char buf[INIT_CTL_MAX + 1];
    const char *arg;
    int v;

    for (int i = 0; st->ctl >= 0 && i < max; i++) {
        /* MSG_TRUNC: the real length, so an oversized datagram is dropped whole, not cut short. */
        ssize_t n = recv(st->ctl, buf, INIT_CTL_MAX, MSG_DONTWAIT | MSG_TRUNC);

        if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
            return; /* EINTR: the main loop comes back */
        }
        /* The agent closed its end with our answers unread. The kernel says so once, before the
         * datagrams it sent last, which still count (a final shutdown, say): read on. */
        if (n < 0 && errno == ECONNRESET) {
            continue;
        }
        if (n < 0 || (n == 0 && ctl_ended(st->ctl))) {
            INIT_LOG_IF(n < 0, "ctl: recv: %m; closing the channel");
            close(st->ctl); /* the agent's exit itself is handled by reaping */
            st->ctl = -1;
            return;
        }
        if (n > INIT_CTL_MAX) {
            init_log("ctl: message of %zd bytes (max %d); ignored", n, INIT_CTL_MAX);
            continue;
        }
        if ((v = init_ctl_parse(buf, (size_t)n, &arg)) >= 0) {
            init_ctl_handlers[v](st, arg);
        }
    }
}

void init_ctl_read(struct init_state *st)
{
    /* A batch per round: an agent sending in a loop refills the channel as fast as it is read,
     * and the main loop must still get to signals, reaping and timers (poll is back at once). */
    ctl_read(st, INIT_CTL_BATCH);
}

/* Gives the child fds[i] as fd 3 + i, without close-on-exec (every other fd of init has it). Each
 * is first copied above that range, so no dup2 overwrites one that is still to be placed. */
static int place_fds(const int *fds, int n)
{
    int tmp[1 + INIT_LISTEN_MAX];

    for (int i = 0; i < n; i++) {
        if ((tmp[i] = fcntl(fds[i], F_DUPFD_CLOEXEC, 3 + n)) < 0) {
            return -1;
        }
    }
    for (int i = 0; i < n; i++) {
        if (dup2(tmp[i], 3 + i) < 0) {
            return -1;
        }
    }
    return 0;
}

/* Forks child `c` (returns fork's result) to exec argv with init's original signal mask (the
 * dispositions are SIG_DFL already) and the configured environment, in which the agent's
 * SBX_INIT_FD comes first, so getenv() finds ours. The agent gets `fds` (the control channel,
 * then the listening sockets) as fds 3, 4, ... (place_fds), /dev/null as stdin, and the
 * baseline seccomp filter: the console's input belongs to the rescue shell, which gets its own
 * session and the console as its tty, for job control (best effort: a shell without them, on a
 * pipe in tests, is still a shell), and no filter: it is the operator's. */
static pid_t spawn(struct init_state *st, struct init_child *c, char **argv, const int *fds,
                   int nfds)
{
    char *envp[INIT_ENV_MAX + 2] = { (char *)"SBX_INIT_FD=3" }; /* the rest: NULL */
    bool agent = c == &st->agent;
    pid_t pid = fork();
    int null, rc;

    if (pid != 0) {
        c->pid = pid > 0 ? pid : 0;
        c->started_ns = init_now(CLOCK_BOOTTIME);
        return pid;
    }
    if (agent && (place_fds(fds, nfds) < 0 || setsid() < 0 ||
                  ((null = open("/dev/null", O_RDONLY | O_CLOEXEC)) >= 0 && dup2(null, 0) < 0))) {
        init_log("agent: child setup: %m");
        _exit(127);
    }
    if (!agent &&
        (setsid() < 0 || (isatty(0) && ioctl(0, TIOCSCTTY, 1) < 0) || init_oom_score_adj(0) < 0)) {
        init_log("rescue shell: setup: %m; going on");
    }
    for (int j = 0; j < st->cfg.nenv; j++) {
        envp[j + 1] = st->cfg.env[j];
    }
    /* Last, so the setup above ran unfiltered (and the exec discards what building it took);
     * a filter that does not load fails the start rather than run the agent without it. */
    if (agent && (rc = sbx_filter_install(SBX_FILTER_KIND_BASELINE, st->cfg.seccomp)) < 0) {
        errno = -rc;
        init_log("agent: seccomp: %m");
        _exit(127);
    }
    if (sigprocmask(SIG_SETMASK, &st->orig_mask, NULL) == 0) {
        execve(argv[0], argv, agent ? envp : envp + 1);
    }
    init_log("exec %s: %m", argv[0]);
    _exit(127);
}

/* Schedules the next agent start after a failed or short-lived one, doubling the delay. */
static void schedule_restart(struct init_state *st, int64_t now, const char *what)
{
    struct init_child *a = &st->agent;

    a->restart_ns = now + a->backoff_ns;
    init_log("agent: %s; restart in %.3fs", what, (double)a->backoff_ns / INIT_NSEC);
    a->backoff_ns =
        a->backoff_ns * 2 > INIT_BACKOFF_MAX_NS ? INIT_BACKOFF_MAX_NS : a->backoff_ns * 2;
    if (!st->agent_ready && ++st->start_failures == st->cfg.rescue_after && !st->want_shell) {
        init_log("agent: %d failed starts in a row; starting the rescue shell", st->start_failures);
        st->want_shell = true;
        st->shell.restart_ns = 0;
    }
}

/* Creates and keeps the listening socket of address `i` of sbx.listen, `addr`, unless it is one
 * init leaves to the agent: a serial port (a device, not a socket), TCP without a token file (the
 * agent refuses it and says why), an address the agent will report as bad, vsock under
 * --root-prefix (vsock is not namespaced: a test must not take a port of the machine it runs
 * on), or a socket that fails now (logged; tried again at the next start). */
static void hold_listener(struct init_state *st, int i, const char *addr)
{
    struct sbx_listen_addr la;
    int fd;

    if (sbx_listen_parse(addr, &la) != NULL || la.kind == SBX_LISTEN_SERIAL ||
        (la.kind == SBX_LISTEN_TCP && st->cfg.token_file[0] == '\0') ||
        (la.kind == SBX_LISTEN_VSOCK && st->prefix[0] != '\0')) {
        return;
    }
    if ((fd = sbx_listen_open(&la)) < 0) {
        errno = -fd;
        init_log("listen: %s: %m; the agent opens it itself", addr);
        return;
    }
    st->listen_fds[i] = fd;
    init_log("listen: %s: held by init for every agent", addr);
}

/*
 * The agent's listen options for sbx.listen, whose addresses `list` (a copy to cut up) keeps.
 * Init holds the listening sockets (hold_listener) from the first start on and gives the same
 * ones to every agent, as fds 4, 5, ... (stored in `fds`) named by `--listen-fd N=ADDR`
 * (written in `spec`): a restarting agent never leaves its port free for a workload to take and
 * receive the host's hello. Other addresses are `--listen ADDR`. Returns the number of fds.
 */
static int listen_args(struct init_state *st, char *list, char **argv, int *argc,
                       char (*spec)[INIT_VALUE_LEN + 8], int *fds)
{
    char *save = NULL;
    int i = 0, n = 0;

    for (char *a = strtok_r(list, ",", &save); a; a = strtok_r(NULL, ",", &save), i++) {
        if (st->listen_fds[i] < 0) {
            hold_listener(st, i, a);
        }
        if (st->listen_fds[i] >= 0) {
            (void)snprintf(spec[n], sizeof(spec[n]), "%d=%s", 4 + n, a); /* fits by its size */
            fds[n] = st->listen_fds[i];
            argv[(*argc)++] = (char *)"--listen-fd";
            argv[(*argc)++] = spec[n++];
        } else {
            argv[(*argc)++] = (char *)"--listen";
            argv[(*argc)++] = a;
        }
    }
    return n;
}

void init_agent_start(struct init_state *st)
{
    char *argv[2 * INIT_LISTEN_MAX + 11], listen[INIT_VALUE_LEN], secs[24];
    char spec[INIT_LISTEN_MAX][INIT_VALUE_LEN + 8];
    int64_t now = init_now(CLOCK_BOOTTIME);
    int sv[2], fds[1 + INIT_LISTEN_MAX], nfds, argc = 0;
    pid_t pid;

    st->agent.restart_ns = 0;
    st->agent_ready = false;
    argv[argc++] = (char *)st->agent_path;
    strcpy(listen, st->cfg.listen); /* validated: at most INIT_LISTEN_MAX entries */
    nfds = 1 + listen_args(st, listen, argv, &argc, spec, fds + 1);
    argv[argc++] = (char *)"--seccomp";
    argv[argc++] = (char *)sbx_filter_mode_name(st->cfg.seccomp);
    if (st->cfg.vsock_allow_local) {
        argv[argc++] = (char *)"--vsock-allow-local";
    }
    /* The file's name, never the token: every process can read the agent's command line. */
    if (st->cfg.token_file[0] != '\0') {
        argv[argc++] = (char *)"--token-file";
        argv[argc++] = st->cfg.token_file;
    }
    if (st->cfg.replay[0] != '\0') {
        argv[argc++] = (char *)"--replay";
        argv[argc++] = st->cfg.replay;
    }
    /* Where the agent puts the processes it starts, one cgroup each (cgroup.c). */
    if (st->cgroup) {
        argv[argc++] = (char *)"--cgroup";
        argv[argc++] = (char *)INIT_CGROUP_WORKLOAD;
    }
    argv[argc] = NULL;
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0) {
        schedule_restart(st, now, "socketpair failed");
        return;
    }
    fds[0] = sv[1];
    pid = spawn(st, &st->agent, argv, fds, nfds);
    close(sv[1]);
    if (pid < 0) {
        close(sv[0]);
        schedule_restart(st, now, "fork failed");
        return;
    }
    st->ctl = sv[0];
    init_log("agent: started %s (pid %d)", st->agent_path, (int)pid);
    /* Its boot timings: init's start (the kernel's share of the boot) and the agent's fork. */
    snprintf(secs, sizeof(secs), "%lld", (long long)st->cfg.lifetime_s);
    ctl_send(st, "boot kernel_ns=%lld init_ns=%lld lifetime=%s deadline_ns=%lld",
             (long long)st->start_ns, (long long)now,
             st->cfg.lifetime == INIT_LIFETIME_DURATION ? secs
                                                        : init_lifetime_names[st->cfg.lifetime],
             (long long)st->deadline_ns);
}

void init_shell_start(struct init_state *st)
{
    char *argv[] = { (char *)st->shell_path, NULL };
    pid_t pid = spawn(st, &st->shell, argv, NULL, 0);

    st->shell.restart_ns = st->shell.started_ns + INIT_SHELL_PAUSE_NS; /* the earliest restart */
    if (pid < 0) {
        init_log("rescue shell: fork: %m");
        return;
    }
    init_log("rescue shell: started %s on the console (pid %d)", st->shell_path, (int)pid);
}

static void exited(struct init_state *st, struct init_child *c, int status, int64_t now)
{
    bool agent = c == &st->agent;
    char what[160], sig[48] = "";

    if (WIFSIGNALED(status)) {
        snprintf(sig, sizeof(sig), " (%s)", strsignal(WTERMSIG(status)));
    }
    snprintf(what, sizeof(what), "pid %d %s %d%s after %.3fs", (int)c->pid,
             WIFEXITED(status) ? "exited with status" : "killed by signal",
             WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status), sig,
             (double)(now - c->started_ns) / INIT_NSEC);
    c->pid = 0;
    if (agent) {
        /* What it said last still counts (a shutdown, say), all of it, not a batch: it is dead, so
         * what waits ends (INIT_CTL_DRAIN bounds a child it leaked fd 3 to). And first: its
         * connections died with it, so a "clients n=1" it left must not come after and stop the
         * session timer with no agent running. */
        ctl_read(st, INIT_CTL_DRAIN);
        set_clients(st, 0);
        if (st->ctl >= 0) {
            close(st->ctl);
            st->ctl = -1;
        }
    }
    if (st->action != INIT_RUN) {
        init_log("%s: %s", agent ? "agent" : "rescue shell", what);
    } else if (agent) {
        if (now - c->started_ns >= INIT_STABLE_NS) {
            c->backoff_ns = INIT_BACKOFF_MIN_NS; /* it was not crash-looping */
        }
        schedule_restart(st, now, what);
    } else {
        c->restart_ns = c->restart_ns > now ? c->restart_ns : now; /* start + 1 s at the earliest */
        init_log("rescue shell: %s; restart in %.3fs", what,
                 (double)(c->restart_ns - now) / INIT_NSEC);
    }
}

bool init_reap(struct init_state *st)
{
    int status, n = 0;
    pid_t pid;

    st->reap_more = false;
    while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
        if (pid == st->agent.pid || pid == st->shell.pid) {
            exited(st, pid == st->agent.pid ? &st->agent : &st->shell, status,
                   init_now(CLOCK_BOOTTIME));
        }
        /* Anything else is an orphan re-parented to us: reaping it is all it needs. */
        if (++n == INIT_REAP_BATCH) {
            st->reap_more = true; /* the rest next round, after the signals and the channel */
            return false;
        }
    }
    return pid < 0 && errno == ECHILD;
}
