/* agent.c: starts, reaps and restarts the agent and the rescue shell. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "init.h"

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

/* In the child: exec with init's original signal mask (dispositions are SIG_DFL already) and
 * the configured environment; the agent's starts with SBX_INIT_FD, so getenv() finds ours. */
static _Noreturn void child_exec(struct init_state *st, char **argv, bool agent)
{
    char *envp[INIT_ENV_MAX + 2] = { (char *)"SBX_INIT_FD=3" }; /* the rest: NULL */

    for (int j = 0; j < st->cfg.nenv; j++) {
        envp[j + 1] = st->cfg.env[j];
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

void init_agent_start(struct init_state *st)
{
    char *argv[2 * INIT_LISTEN_MAX + 3], listen[INIT_VALUE_LEN], *save = NULL;
    int64_t now = init_now(CLOCK_BOOTTIME);
    int sv[2], argc = 0, null;
    pid_t pid;

    st->agent.restart_ns = 0;
    st->agent_ready = false;
    argv[argc++] = (char *)st->agent_path;
    strcpy(listen, st->cfg.listen); /* validated: at most INIT_LISTEN_MAX entries */
    for (char *a = strtok_r(listen, ",", &save); a; a = strtok_r(NULL, ",", &save)) {
        argv[argc++] = (char *)"--listen";
        argv[argc++] = a;
    }
    if (st->cfg.vsock_allow_local) {
        argv[argc++] = (char *)"--vsock-allow-local";
    }
    argv[argc] = NULL;
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0) {
        schedule_restart(st, now, "socketpair failed");
        return;
    }
    if ((pid = fork()) == 0) {
        /* fd 3 is the control channel (dup2 clears close-on-exec, except onto itself); the
         * console's input belongs to the rescue shell, the agent gets /dev/null. */
        if ((sv[1] == 3 ? fcntl(3, F_SETFD, 0) : dup2(sv[1], 3)) < 0 || setsid() < 0 ||
            ((null = open("/dev/null", O_RDONLY | O_CLOEXEC)) >= 0 && dup2(null, 0) < 0)) {
            init_log("agent: child setup: %m");
            _exit(127);
        }
        child_exec(st, argv, true);
    }
    close(sv[1]);
    if (pid < 0) {
        close(sv[0]);
        schedule_restart(st, now, "fork failed");
        return;
    }
    /* Recorded before the loop can reap it: single-threaded, so there is no race. */
    st->ctl = sv[0];
    st->agent.pid = pid;
    st->agent.started_ns = now;
    init_log("agent: started %s (pid %d)", st->agent_path, (int)pid);
    init_ctl_send_boot(st, now);
}

void init_shell_start(struct init_state *st)
{
    char *argv[] = { (char *)st->shell_path, NULL };
    pid_t pid = fork();

    if (pid == 0) {
        /* Its own session and the console as its tty, for job control; best effort: a shell
         * without them (on a pipe, in tests) is still a shell. */
        if (setsid() < 0 || (isatty(0) && ioctl(0, TIOCSCTTY, 1) < 0) ||
            init_oom_score_adj(0) < 0) {
            init_log("rescue shell: setup: %m; going on");
        }
        child_exec(st, argv, false);
    }
    st->shell.started_ns = init_now(CLOCK_BOOTTIME);
    st->shell.restart_ns = st->shell.started_ns + INIT_SHELL_PAUSE_NS; /* the earliest restart */
    if (pid < 0) {
        init_log("rescue shell: fork: %m");
        return;
    }
    st->shell.pid = pid;
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
        init_set_clients(st, 0); /* its connections died with it */
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
    int status;
    pid_t pid;

    while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
        if (pid == st->agent.pid || pid == st->shell.pid) {
            exited(st, pid == st->agent.pid ? &st->agent : &st->shell, status,
                   init_now(CLOCK_BOOTTIME));
        }
        /* Anything else is an orphan re-parented to us: reaping it is all it needs. */
    }
    return pid < 0 && errno == ECHILD;
}
