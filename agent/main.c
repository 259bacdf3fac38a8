/*
 * sbx-agent: serves the sbx protocol on every --listen address, runs processes for the host, and
 * reports to sbx-init over the control channel when started by it.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "agent.h"
#include "cgroup.h"
#include "conn.h"
#include "env.h"
#include "listener.h"
#include "path.h"
#include "proc.h"
#include "seccomp.h"
#include "session.h"
#include "stream.h"

/* The environment variable the token may come in (the client's is SBX_TOKEN: a host that
 * exports that for the CLI must not give every agent it starts a token by accident). */
#define AGENT_TOKEN_ENV "SBX_AGENT_TOKEN"

static void usage(FILE *fp)
{
    fprintf(fp,
            "Usage: sbx-agent --listen ADDR [--listen ADDR]... [OPTIONS]\n"
            "\n"
            "Serve the sbx protocol (protocol/PROTOCOL.md) on each address:\n"
            "  unix:/path        a unix stream socket (mode 0600)\n"
            "  vsock:PORT        AF_VSOCK; only the host (CID 2) may connect\n"
            "  serial:NAME       the virtio-serial port named NAME (or serial:/dev/PATH)\n"
            "  tcp:HOST:PORT     TCP on a numeric address; needs a token\n"
            "\n"
            "Options:\n"
            "  -l, --listen ADDR       listen on ADDR (repeatable)\n"
            "      --listen-fd FD=ADDR serve the socket inherited as FD, listening on ADDR\n"
            "                          (repeatable; sbx-init holds them across restarts)\n"
            "      --seccomp MODE      off, baseline, strict (the default) or log: strict\n"
            "                          stacks a seccomp filter on every process started\n"
            "                          (no AF_VSOCK sockets); log only logs its denials\n"
            "      --vsock-allow-local also accept vsock peers on CID 1 (in-guest loopback)\n"
            "      --token-file FILE   clients must send the token in FILE (its first line)\n"
            "                          in hello; FILE must not be readable by others\n"
            "      --hello-timeout MS  close connections without hello after MS ms\n"
            "                          (default %u)\n"
            "      --cgroup DIR        start every process in a cgroup of its own below the\n"
            "                          cgroup2 directory DIR (capability \"limits\")\n"
            "      --replay SIZE[,TOTAL]\n"
            "                          keep the last SIZE bytes of every process output for\n"
            "                          proc.attach, at most TOTAL for all of them (K, M, G\n"
            "                          suffixes; default %uM,%lluM; SIZE at least %uK)\n"
            "  -h, --help              show this help\n"
            "  -V, --version           show the version\n"
            "\n"
            "Environment:\n"
            "  " AGENT_TOKEN_ENV "   the token, instead of --token-file; removed from the\n"
            "                    environment (and its bytes erased) at start-up\n"
            "\n"
            "The token is never taken from the command line, which every user can read\n"
            "(/proc/PID/cmdline). Started by sbx-init, the agent reads SBX_INIT_FD\n"
            "(docs/INIT.md).\n",
            SBX_HELLO_TIMEOUT_MS, AGENT_REPLAY_STREAM_DEFAULT >> 20,
            (unsigned long long)(AGENT_REPLAY_TOTAL_DEFAULT >> 20), SBX_REPLAY_MIN >> 10);
}

/* Copy token @tok (@len bytes) into @out (SBX_TOKEN_MAX + 1 bytes); -1 when its size is wrong. */
static int token_set(char *out, const char *tok, size_t len, const char *from)
{
    if (len == 0 || len > SBX_TOKEN_MAX) {
        fprintf(stderr, "sbx-agent: %s: the token must be 1..%u bytes\n", from, SBX_TOKEN_MAX);
        return -1;
    }
    memcpy(out, tok, len);
    out[len] = '\0';
    return 0;
}

/*
 * Read the token from the first line of @path into @out. The file must be a regular file that not
 * every user can read or write: a token anyone in the guest can read protects nothing.
 */
static int read_token_file(const char *path, char *out)
{
    char buf[SBX_TOKEN_MAX + 2];
    struct stat st;
    ssize_t n = -1;
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK), rc = -1;

    if (fd < 0 || fstat(fd, &st) < 0 || (n = read(fd, buf, sizeof(buf) - 1)) < 0) {
        fprintf(stderr, "sbx-agent: --token-file %s: %s\n", path, strerror(errno));
    } else if (!S_ISREG(st.st_mode)) {
        fprintf(stderr, "sbx-agent: --token-file %s: not a regular file\n", path);
    } else if (st.st_mode & (S_IROTH | S_IWOTH)) {
        fprintf(stderr,
                "sbx-agent: --token-file %s: every user can %s it (mode %04o): chmod o-rw\n", path,
                st.st_mode & S_IROTH ? "read" : "write", (unsigned)(st.st_mode & 07777));
    } else {
        buf[n] = '\0';
        rc = token_set(out, buf, strcspn(buf, "\r\n"), path);
    }
    if (fd >= 0) {
        close(fd);
    }
    explicit_bzero(buf, sizeof(buf));
    return rc;
}

/*
 * Take the token from AGENT_TOKEN_ENV into @out (left empty when it is not set), then scrub it:
 * unsetenv drops it from environ, so no workload inherits it, and its bytes are erased where
 * they lie, because /proc/PID/environ shows the initial environment block, not environ. Every
 * copy is erased (an environment can repeat a name). Returns 0, or -1 for an unusable token.
 */
static int token_from_env(char *out)
{
    const size_t plen = strlen(AGENT_TOKEN_ENV "=");
    bool found = false;
    int rc = 0;

    for (char **e = environ; *e != NULL; e++) {
        char *val = *e + plen;
        if (strncmp(*e, AGENT_TOKEN_ENV "=", plen) != 0) {
            continue;
        }
        if (!found) {
            rc = token_set(out, val, strlen(val), AGENT_TOKEN_ENV);
            found = true;
        }
        explicit_bzero(val, strlen(val)); /* the name stays, so unsetenv still finds it */
    }
    (void)unsetenv(AGENT_TOKEN_ENV);
    return rc;
}

static void on_sigchld(uv_signal_t *h, int sig)
{
    agent_proc_reap(h->data);
}

static void on_sigterm(uv_signal_t *h, int sig)
{
    struct agent *a = h->data;
    struct agent_link *l;

    /* The agent's state dies with it: take running workloads along rather than leaving
     * orphans nobody can wait for. */
    agent_log("signal %d: exiting", sig);
    for (l = a->procs.next; l != &a->procs; l = l->next) {
        struct agent_proc *p = agent_container_of(l, struct agent_proc, link);
        if (!agent_proc_exited(p)) {
            (void)kill(-p->pid, SIGKILL);
        }
    }
    exit(0);
}

/* stdin/stdout/stderr must be open, or the first pipe would become fd 1 and chaos follows. */
static void ensure_stdio(void)
{
    for (int fd = 0; fd < 3; fd++) {
        if (fcntl(fd, F_GETFD) < 0) {
            int n = open("/dev/null", O_RDWR);
            if (n >= 0 && n != fd) {
                (void)dup2(n, fd);
                close(n);
            }
        }
    }
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        { "listen", required_argument, NULL, 'l' },
        { "listen-fd", required_argument, NULL, 'F' },
        { "seccomp", required_argument, NULL, 'S' },
        { "vsock-allow-local", no_argument, NULL, 'L' },
        { "token", required_argument, NULL, 't' }, /* refused: see below */
        { "token-file", required_argument, NULL, 'T' },
        { "hello-timeout", required_argument, NULL, 'H' },
        { "passwd-root", required_argument, NULL, 'P' }, /* tests: where /etc/passwd lives */
        { "cgroup", required_argument, NULL, 'C' },
        { "replay", required_argument, NULL, 'R' },
        { "help", no_argument, NULL, 'h' },
        { "version", no_argument, NULL, 'V' },
        { NULL, 0, NULL, 0 },
    };
    static struct agent agent;
    struct agent *a = &agent;
    const char *listen[16];
    bool listen_fd[ARRAY_SIZE(listen)]; /* listen[i] is a --listen-fd FD=ADDR */
    int nlisten = 0, opt, seccomp = SBX_FILTER_MODE_DEFAULT, rc;
    const char *initfd, *cgroup = NULL;
    struct sbx_err err;

    ensure_stdio();
    /* First of all, so no error exit leaves the token in /proc/PID/environ. */
    if (token_from_env(a->token) < 0) {
        return 2;
    }
    a->hello_timeout_ms = SBX_HELLO_TIMEOUT_MS;
    a->replay_stream = AGENT_REPLAY_STREAM_DEFAULT;
    a->replay_total = AGENT_REPLAY_TOTAL_DEFAULT;
    while ((opt = getopt_long(argc, argv, "l:hV", opts, NULL)) != -1) {
        switch (opt) {
        case 'l':
        case 'F':
            if (nlisten == (int)ARRAY_SIZE(listen)) {
                fprintf(stderr, "sbx-agent: too many --listen addresses\n");
                return 2;
            }
            listen_fd[nlisten] = opt == 'F';
            listen[nlisten++] = optarg;
            break;
        case 'S':
            if ((seccomp = sbx_filter_mode_parse(optarg)) < 0) {
                fprintf(stderr, "sbx-agent: --seccomp must be off, baseline, strict or log\n");
                return 2;
            }
            break;
        case 'L':
            a->vsock_allow_local = true;
            break;
        case 't':
            /* Every process in the guest can read /proc/PID/cmdline. */
            fprintf(stderr, "sbx-agent: --token is refused: the command line is readable by "
                            "every user; use --token-file FILE or " AGENT_TOKEN_ENV "\n");
            return 2;
        case 'T':
            if (a->token[0] != '\0') {
                fprintf(stderr,
                        "sbx-agent: give the token once: --token-file or " AGENT_TOKEN_ENV "\n");
                return 2;
            }
            if (read_token_file(optarg, a->token) < 0) {
                return 2;
            }
            break;
        case 'H': {
            char *end;
            unsigned long ms = strtoul(optarg, &end, 10);
            if (*optarg < '0' || *optarg > '9' || *end != '\0' || ms == 0 ||
                ms > SBX_HELLO_TIMEOUT_MS_MAX) {
                fprintf(stderr, "sbx-agent: --hello-timeout must be 1..%u (milliseconds)\n",
                        SBX_HELLO_TIMEOUT_MS_MAX);
                return 2;
            }
            a->hello_timeout_ms = (unsigned)ms;
            break;
        }
        case 'C':
            cgroup = optarg;
            break;
        case 'R': {
            char why[128];
            if (agent_replay_parse(optarg, &a->replay_stream, &a->replay_total, why, sizeof(why)) <
                0) {
                fprintf(stderr, "sbx-agent: --replay %s: %s\n", optarg, why);
                return 2;
            }
            break;
        }
        case 'P':
            (void)snprintf(a->passwd_root, sizeof(a->passwd_root), "%s", optarg);
            break;
        case 'h':
            usage(stdout);
            return 0;
        case 'V':
            printf("%s %s (protocol %u)\n", AGENT_NAME, AGENT_VERSION, SBX_PROTO_VERSION);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (optind != argc || nlisten == 0) {
        fprintf(stderr, "sbx-agent: %s\n",
                nlisten == 0 ? "nothing to do: give at least one --listen ADDR"
                             : "unexpected arguments");
        usage(stderr);
        return 2;
    }
    /* Before any thread exists: the filter is read-only from here on (seccomp.c). Without it the
     * mode asked for cannot be kept: no process is started unfiltered instead. */
    if ((rc = agent_seccomp_init((enum sbx_filter_mode)seccomp)) < 0) {
        fprintf(stderr, "sbx-agent: seccomp: cannot compile the workload filter: %s\n",
                strerror(-rc));
        return 1;
    }
    /* Whether openat2 and /proc are there, found out here, by the agent itself, and not first
     * in a thread acting as a user or in a spawn child. */
    agent_path_init();

    /* Every process costs up to three pipe fds: lift the soft fd limit to the hard one. The
     * processes it starts get the limit it found (a->nofile): the image's, not the agent's. */
    {
        struct rlimit rl, raised;
        if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
            raised = rl;
            raised.rlim_cur = rl.rlim_max;
            if (setrlimit(RLIMIT_NOFILE, &raised) == 0) {
                a->nofile = rl;
            }
        }
    }
    /* What every child would otherwise open for itself. */
    a->devnull = open("/dev/null", O_RDWR | O_CLOEXEC); /* -1: each child opens its own */
    /* Writes to a departed client or a closed stdin must be errors, not death. */
    signal(SIGPIPE, SIG_IGN);
    a->loop = uv_default_loop();
    a->start_ns = agent_now_ns();
    a->boot_agent_ns = agent_boottime_ns();
    a->initctl_fd = -1;
    agent_list_init(&a->listeners);
    agent_list_init(&a->conns);
    agent_list_init(&a->procs);
    agent_list_init(&a->repls);
    agent_list_init(&a->net_starved);
    agent_list_init(&a->lifetime_waiters);
    agent_conn_init(a);
    if (cgroup != NULL) {
        (void)agent_cgroup_open(a, cgroup); /* logged; without it, no limits */
    }
    if (agent_env_init(a) < 0) {
        fprintf(stderr, "sbx-agent: out of memory\n");
        return 1;
    }
    /* libuv's threadpool (4 workers by default, started on first use) runs file writes and
     * hashing of uploads (two per upload), download reads and recursive copy/remove: 8, so two
     * verified uploads leave room for the rest. Set after the base environment was taken, so
     * workloads (node uses libuv too) do not inherit it; an explicit setting wins. */
    (void)setenv("UV_THREADPOOL_SIZE", AGENT_THREADPOOL_SIZE, 0);

    uv_signal_init(a->loop, &a->sigchld);
    uv_signal_init(a->loop, &a->sigterm);
    uv_signal_init(a->loop, &a->sigint);
    a->sigchld.data = a->sigterm.data = a->sigint.data = a;
    uv_signal_start(&a->sigchld, on_sigchld, SIGCHLD);
    uv_signal_start(&a->sigterm, on_sigterm, SIGTERM);
    uv_signal_start(&a->sigint, on_sigterm, SIGINT);

    initfd = getenv("SBX_INIT_FD");
    if (initfd != NULL) {
        char *end;
        long fd = strtol(initfd, &end, 10);
        bool ok = *end == '\0' && fd >= 3 && fd <= 1024;
        if (ok) {
            /* Never leaked to workloads, even when it turns out unusable: init's channel takes
             * shutdown and extend from whoever holds it. */
            (void)fcntl((int)fd, F_SETFD, FD_CLOEXEC);
        }
        if (!ok || agent_initctl_open(a, (int)fd) < 0) {
            agent_log("SBX_INIT_FD=%s is not a usable control channel; running standalone", initfd);
        }
        unsetenv("SBX_INIT_FD");
    }

    for (int i = 0; i < nlisten; i++) {
        if ((listen_fd[i] ? agent_listen_fd(a, listen[i], &err)
                          : agent_listen(a, listen[i], &err)) < 0) {
            /* Keep serving the other addresses: one bad listener must not cut the VM off. */
            agent_log("%s (%s)", err.msg, err.code);
            if (nlisten == 1) {
                return 1;
            }
        }
    }
    a->boot_ready_ns = agent_boottime_ns();
    agent_initctl_send(a, "ready");
    agent_log("%s %s ready", AGENT_NAME, AGENT_VERSION);
    return uv_run(a->loop, UV_RUN_DEFAULT);
}
