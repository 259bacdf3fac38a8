/* stub_agent.c: a stand-in for sbx-agent in sbx-init's tests. It speaks the control channel on
 * fd 3 and runs a small script given in its environment (set through sbx.env.* on the test's
 * kernel command line, which also exercises init's environment handling):
 *   STUB_OUT     directory for reports: agent-<pid>.txt per start
 *   STUB_SCRIPT  commands separated by ';' (see run() below); afterwards the stub sleeps
 *   (a test and the stub take turns through files in STUB_OUT: touch, waitfile)
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

static FILE *report;

static void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static void say(const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vfprintf(report, fmt, ap);
    va_end(ap);
    fputc('\n', report);
    fflush(report);
}

static void sleep_ms(long ms)
{
    struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };

    while (nanosleep(&ts, &ts) < 0 && errno == EINTR) {
    }
}

static void touch(const char *path)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);

    if (fd < 0) {
        say("touch %s: %s", path, strerror(errno));
    } else {
        close(fd);
    }
}

static void send_msg(const char *buf, size_t len)
{
    if (send(3, buf, len, MSG_NOSIGNAL) != (ssize_t)len) {
        say("send-error=%s", strerror(errno));
    }
}

static void recv_msg(const char *what)
{
    struct pollfd p = { 3, POLLIN, 0 };
    char buf[1024];
    ssize_t n = -1;

    if (poll(&p, 1, 3000) == 1) {
        n = recv(3, buf, sizeof(buf) - 1, 0);
    }
    buf[n > 0 ? n : 0] = '\0';
    say("%s: %s", what, n > 0 ? buf : "(nothing)");
}

/* Counts processes named `comm` (any if NULL), and how many of them are zombies. */
static int count_procs(const char *comm, int *zombies, int *orphans)
{
    DIR *d = opendir("/proc");
    struct dirent *e;
    int n = 0;

    *zombies = *orphans = 0;
    while (d != NULL && (e = readdir(d)) != NULL) {
        char path[64], buf[512], *rp, name[32] = "";
        int fd, ppid = 0;
        char state = '?';
        ssize_t len;

        if (e->d_name[0] < '0' || e->d_name[0] > '9') {
            continue;
        }
        snprintf(path, sizeof(path), "/proc/%s/stat", e->d_name);
        fd = open(path, O_RDONLY | O_CLOEXEC);
        len = fd < 0 ? -1 : read(fd, buf, sizeof(buf) - 1);
        if (fd >= 0) {
            close(fd);
        }
        if (len <= 0) {
            continue;
        }
        buf[len] = '\0';
        rp = strrchr(buf, ')');
        if (rp == NULL || sscanf(rp + 2, "%c %d", &state, &ppid) != 2) {
            continue;
        }
        snprintf(name, sizeof(name), "%.*s", (int)(rp - strchr(buf, '(') - 1),
                 strchr(buf, '(') + 1);
        if (comm != NULL && strcmp(name, comm) != 0) {
            continue;
        }
        n++;
        *zombies += state == 'Z';
        *orphans += ppid == 1;
    }
    if (d != NULL) {
        closedir(d);
    }
    return n;
}

static void orphans(int count)
{
    int z, o, n = 0;
    int hold[2];

    /* The orphans live until the write end of @hold closes (after they were counted), not for a
     * fixed time: on a loaded machine forking 100 of them can take longer than any sleep. */
    if (pipe(hold) != 0) {
        say("pipe failed");
        return;
    }
    for (int i = 0; i < count; i++) {
        pid_t pid = fork();

        if (pid == 0) {
            if (fork() == 0) {
                char c;
                prctl(PR_SET_NAME, "stub-orphan");
                close(hold[1]);
                while (read(hold[0], &c, 1) < 0 && errno == EINTR) {
                }
                _exit(0);
            }
            _exit(0);
        }
        if (pid > 0) {
            waitpid(pid, NULL, 0); /* our own child only: the agent never waits for -1 */
        }
    }
    close(hold[0]);
    for (int i = 0; i < 500 && (count_procs("stub-orphan", &z, &o), o) < count; i++) {
        sleep_ms(10);
    }
    say("orphans_reparented=%d", o);
    close(hold[1]);
    for (int i = 0; i < 300 && (n = count_procs("stub-orphan", &z, &o)) > 0; i++) {
        sleep_ms(10);
    }
    sleep_ms(200);
    n = count_procs("stub-orphan", &z, &o);
    count_procs(NULL, &z, &o);
    say("orphans_left=%d zombies=%d", n, z);
}

static void sleepers(int count, int ignore_term)
{
    for (int i = 0; i < count; i++) {
        if (fork() == 0) {
            prctl(PR_SET_NAME, ignore_term ? "stub-stubborn" : "stub-sleeper");
            if (ignore_term) {
                signal(SIGTERM, SIG_IGN);
            }
            for (;;) {
                pause();
            }
        }
    }
}

static void run_sh(const char *cmd)
{
    pid_t pid = fork();
    int status = -1;

    if (pid == 0) {
        execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
        _exit(127);
    }
    if (pid > 0) {
        waitpid(pid, &status, 0);
    }
    say("sh-status=%d", status);
}

/* Runs one script command; false to end the script there. */
static bool run(char *cmd, const char *out)
{
    char *arg = strchr(cmd, ' ');
    char path[4096];

    if (arg != NULL) {
        *arg++ = '\0';
    }
    if (strcmp(cmd, "ready") == 0) {
        send_msg("ready\n", 6);
    } else if (strcmp(cmd, "send") == 0 && arg) {
        send_msg(arg, strlen(arg));
    } else if (strcmp(cmd, "sendlen") == 0 && arg) {
        size_t n = strtoul(arg, NULL, 10);
        char *buf = malloc(n + 1);

        memset(buf, 'x', n);
        send_msg(buf, n);
        free(buf);
    } else if (strcmp(cmd, "sendbin") == 0) {
        send_msg("ready\x01\xff", 7);
    } else if (strcmp(cmd, "sendnul") == 0) {
        send_msg("ready\0x", 7);
    } else if (strcmp(cmd, "recv") == 0) {
        recv_msg("recv");
    } else if (strcmp(cmd, "sleep") == 0 && arg) {
        sleep_ms(atol(arg));
    } else if (strcmp(cmd, "orphans") == 0 && arg) {
        orphans(atoi(arg));
    } else if (strcmp(cmd, "sleepers") == 0 && arg) {
        sleepers(atoi(arg), 0);
    } else if (strcmp(cmd, "stubborn") == 0 && arg) {
        sleepers(atoi(arg), 1);
    } else if (strcmp(cmd, "killself-once") == 0) {
        snprintf(path, sizeof(path), "%s/killed", out);
        if (access(path, F_OK) < 0) {
            fclose(fopen(path, "w"));
            raise(SIGKILL);
        }
    } else if (strcmp(cmd, "flood") == 0 && arg) {
        /* Four senders in blocking loops: the channel is refilled faster than init reads it. */
        for (int i = 0; i < 3 && fork() > 0; i++) {
        }
        for (;;) {
            send_msg(arg, strlen(arg));
        }
    } else if (strcmp(cmd, "closectl") == 0) {
        close(3);
    } else if (strcmp(cmd, "shutwr") == 0) {
        /* Half-closed: the agent says it will send no more, and lives on. */
        if (shutdown(3, SHUT_WR) < 0) {
            say("shutwr-error=%s", strerror(errno));
        }
    } else if (strcmp(cmd, "sendn") == 0 && arg) {
        /* "sendn N MSG": MSG N times, for a backlog longer than init reads in one round. */
        char *msg = strchr(arg, ' ');

        for (long i = atol(arg); msg != NULL && i > 0; i--) {
            send_msg(msg + 1, strlen(msg + 1));
        }
    } else if (strcmp(cmd, "pending") == 0) {
        /* Waits until init's answer is on fd 3 and leaves it unread: the agent's exit then
         * resets the channel (init's recv says ECONNRESET before what the agent sent last). */
        struct pollfd p = { 3, POLLIN, 0 };

        say("pending=%d", poll(&p, 1, 3000));
    } else if (strcmp(cmd, "touch") == 0 && arg) {
        /* Files in STUB_OUT are how a test and the stub take turns (touch, waitfile). */
        snprintf(path, sizeof(path), "%s/%s", out, arg);
        touch(path);
    } else if (strcmp(cmd, "waitfile") == 0 && arg) {
        snprintf(path, sizeof(path), "%s/%s", out, arg);
        for (int i = 0; i < 2000 && access(path, F_OK) < 0; i++) {
            sleep_ms(10);
        }
    } else if (strcmp(cmd, "once") == 0 && arg) {
        /* The rest of the script runs in the first agent only; restarted ones stop here. */
        snprintf(path, sizeof(path), "%s/once-%s", out, arg);
        if (access(path, F_OK) == 0) {
            return false;
        }
        touch(path);
    } else if (strcmp(cmd, "exit") == 0) {
        exit(arg ? atoi(arg) : 0);
    } else if (strcmp(cmd, "sh") == 0 && arg) {
        run_sh(arg);
    } else {
        say("unknown-command=%s", cmd);
    }
    return true;
}

/* Lists the fds the stub was started with ("0,1,2,3,4") into @buf, and for each from 4 on what it
 * is: "4:listening:cloexec=0 ..." into @kinds. Called before the stub opens anything itself. */
static void inherited_fds(char *buf, size_t size, char *kinds, size_t ksize)
{
    DIR *d = opendir("/proc/self/fd");
    struct dirent *e;
    size_t n = 0, k = 0;

    buf[0] = kinds[0] = '\0';
    while (d != NULL && (e = readdir(d)) != NULL) {
        int fd = atoi(e->d_name), acc = 0;
        socklen_t len = sizeof(acc);

        if (e->d_name[0] == '.' || fd == dirfd(d)) {
            continue;
        }
        n += (size_t)snprintf(buf + n, n < size ? size - n : 0, "%s%d", n ? "," : "", fd);
        if (fd >= 4) {
            bool listening = getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &acc, &len) == 0 && acc;
            k += (size_t)snprintf(kinds + k, k < ksize ? ksize - k : 0, "%s%d:%s:cloexec=%d",
                                  k ? " " : "", fd, listening ? "listening" : "other",
                                  (fcntl(fd, F_GETFD) & FD_CLOEXEC) != 0);
        }
    }
    if (d != NULL) {
        closedir(d);
    }
}

int main(int argc, char **argv)
{
    const char *out = getenv("STUB_OUT") ? getenv("STUB_OUT") : "/tmp";
    char *script = strdup(getenv("STUB_SCRIPT") ? getenv("STUB_SCRIPT") : "ready");
    char path[4096], *save = NULL;
    int type = 0, z, o;
    socklen_t len = sizeof(type);
    sigset_t mask;
    char fds[256], kinds[1024];

    inherited_fds(fds, sizeof(fds), kinds, sizeof(kinds));
    snprintf(path, sizeof(path), "%s/agent-%d.txt", out, (int)getpid());
    report = fopen(path, "we");
    if (report == NULL) {
        return 2;
    }
    for (int i = 0; i < argc; i++) {
        say("argv[%d]=%s", i, argv[i]);
    }
    for (char **e = environ; *e; e++) {
        say("env %s", *e);
    }
    getsockopt(3, SOL_SOCKET, SO_TYPE, &type, &len);
    say("fds=%s", fds);
    say("fd-kinds=%s", kinds);
    say("fd3-type=%s", type == SOCK_SEQPACKET ? "seqpacket" : "other");
    say("fd3-cloexec=%d", (fcntl(3, F_GETFD) & FD_CLOEXEC) != 0);
    say("stdin-is-devnull=%d", access("/proc/self/fd/0", F_OK) == 0 &&
                                   readlink("/proc/self/fd/0", path, sizeof(path)) == 9 &&
                                   strncmp(path, "/dev/null", 9) == 0);
    say("session-leader=%d", getsid(0) == getpid());
    say("ppid=%d", (int)getppid());
    sigprocmask(SIG_SETMASK, NULL, &mask);
    say("sigmask-empty=%d", sigisemptyset(&mask));
    say("sigpipe-default=%d", signal(SIGPIPE, SIG_DFL) == SIG_DFL);
    say("sigint-default=%d", signal(SIGINT, SIG_DFL) == SIG_DFL);
    {
        FILE *f = fopen("/proc/self/oom_score_adj", "re");
        int adj = 99;

        if (f != NULL && fscanf(f, "%d", &adj) == 1) {
            say("oom_score_adj=%d", adj);
        }
        if (f != NULL) {
            fclose(f);
        }
    }
    (void)count_procs(NULL, &z, &o);
    fcntl(3, F_SETFD, FD_CLOEXEC); /* what the real agent must do: keep fd 3 from children */
    recv_msg("boot");
    for (char *c = strtok_r(script, ";", &save); c; c = strtok_r(NULL, ";", &save)) {
        while (*c == ' ') {
            c++;
        }
        say("run %s", c);
        if (!run(c, out)) {
            break;
        }
    }
    say("script-done");
    for (;;) {
        pause();
    }
}
