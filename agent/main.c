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
#include <unistd.h>

#include "agent.h"
#include "env.h"
#include "listener.h"
#include "proc.h"
#include "session.h"

static void usage(FILE *fp)
{
    fprintf(fp, "Usage: sbx-agent --listen ADDR [--listen ADDR]... [OPTIONS]\n"
                "\n"
                "Serve the sbx protocol (protocol/PROTOCOL.md) on each address:\n"
                "  unix:/path        a unix stream socket (mode 0600)\n"
                "  vsock:PORT        AF_VSOCK; only the host (CID 2) may connect\n"
                "  serial:NAME       the virtio-serial port named NAME (or serial:/dev/PATH)\n"
                "  tcp:HOST:PORT     TCP on a numeric address; needs --token\n"
                "\n"
                "Options:\n"
                "  -l, --listen ADDR       listen on ADDR (repeatable)\n"
                "      --vsock-allow-local also accept vsock peers on CID 1 (in-guest loopback)\n"
                "      --token TOKEN       clients must send this token in hello\n"
                "      --token-file FILE   read the token from FILE (first line)\n"
                "  -h, --help              show this help\n"
                "  -V, --version           show the version\n"
                "\n"
                "Started by sbx-init, the agent reads SBX_INIT_FD (docs/INIT.md).\n");
}

static int read_token_file(const char *path, char *out, size_t outsz)
{
    FILE *fp = fopen(path, "re");
    char line[SBX_TOKEN_MAX + 2];

    if (fp == NULL) {
        fprintf(stderr, "sbx-agent: --token-file %s: %s\n", path, strerror(errno));
        return -1;
    }
    if (fgets(line, sizeof(line), fp) == NULL) {
        fclose(fp);
        fprintf(stderr, "sbx-agent: --token-file %s: empty\n", path);
        return -1;
    }
    fclose(fp);
    line[strcspn(line, "\r\n")] = '\0';
    if (line[0] == '\0' || strlen(line) >= outsz) {
        fprintf(stderr, "sbx-agent: --token-file %s: token must be 1..%zu bytes\n", path,
                outsz - 1);
        return -1;
    }
    memcpy(out, line, strlen(line) + 1);
    return 0;
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
        { "vsock-allow-local", no_argument, NULL, 'L' },
        { "token", required_argument, NULL, 't' },
        { "token-file", required_argument, NULL, 'T' },
        { "passwd-root", required_argument, NULL, 'P' }, /* tests: where /etc/passwd lives */
        { "help", no_argument, NULL, 'h' },
        { "version", no_argument, NULL, 'V' },
        { NULL, 0, NULL, 0 },
    };
    static struct agent agent;
    struct agent *a = &agent;
    const char *listen[16];
    int nlisten = 0, opt;
    const char *initfd;
    struct sbx_err err;

    ensure_stdio();
    while ((opt = getopt_long(argc, argv, "l:hV", opts, NULL)) != -1) {
        switch (opt) {
        case 'l':
            if (nlisten == (int)ARRAY_SIZE(listen)) {
                fprintf(stderr, "sbx-agent: too many --listen addresses\n");
                return 2;
            }
            listen[nlisten++] = optarg;
            break;
        case 'L':
            a->vsock_allow_local = true;
            break;
        case 't':
            if (strlen(optarg) == 0 || strlen(optarg) > SBX_TOKEN_MAX) {
                fprintf(stderr, "sbx-agent: --token must be 1..%u bytes\n", SBX_TOKEN_MAX);
                return 2;
            }
            memcpy(a->token, optarg, strlen(optarg) + 1);
            break;
        case 'T':
            if (read_token_file(optarg, a->token, sizeof(a->token)) < 0) {
                return 2;
            }
            break;
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

    /* Every process costs up to three pipe fds: lift the soft fd limit to the hard one. */
    {
        struct rlimit rl;
        if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
            rl.rlim_cur = rl.rlim_max;
            (void)setrlimit(RLIMIT_NOFILE, &rl);
        }
    }
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
    agent_list_init(&a->lifetime_waiters);
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
        if (*end != '\0' || fd < 3 || fd > 1024 || agent_initctl_open(a, (int)fd) < 0) {
            agent_log("SBX_INIT_FD=%s is not a usable control channel; running standalone", initfd);
        } else {
            (void)fcntl((int)fd, F_SETFD, FD_CLOEXEC); /* never leak it to workloads */
        }
        unsetenv("SBX_INIT_FD");
    }

    for (int i = 0; i < nlisten; i++) {
        if (agent_listen(a, listen[i], &err) < 0) {
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
