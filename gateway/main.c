/*
 * sbx-gateway: serve the Deno Sandbox SDK's API on a host, each sandbox an sbx guest (or one
 * agent at an address). Parses the command line, keeps the token in the data dir, runs one loop
 * until SIGINT or SIGTERM.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <malloc.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "backend.h"
#include "sbx/client.h"

#ifndef SBX_VERSION
#define SBX_VERSION "0"
#endif

#define EXIT_USAGE  2
#define TOKEN_CHARS 40
#define RESOLVE_MAX 64

static const char usage_text[] =
    "usage: sbx-gateway --data-dir DIR [--listen HOST:PORT] [--image IMAGE]\n"
    "                   [--backend vm|addr:ADDR] [--mem SIZE] [--user USER] [--cwd DIR]\n"
    "                   [--sbx-vm PATH] [--http-listen HOST:PORT] [--http-domain DOMAIN]\n"
    "                   [--resolve HOST:ADDR]... [--ca-file PATH] [--ssh-listen HOST:PORT]\n"
    "                   [--agent-hello-timeout DURATION] [--deploy-stage-timeout DURATION]\n"
    "                   [--stream-stall-timeout DURATION] [--ingress-idle-timeout DURATION]\n"
    "                   [--ingress-max-conns N] [--ssh-idle-timeout DURATION]\n"
    "                   [--ssh-keepalive DURATION] [--quiet] [--trace]\n"
    "       sbx-gateway --help | --version\n"
    "\n"
    "Serve the Deno Sandbox SDK's API (JSON-RPC over WebSocket, REST) on HOST:PORT; each\n"
    "sandbox is an sbx guest booted from IMAGE by sbx-vm, or (--backend addr:ADDR) the one\n"
    "agent already listening at ADDR (e.g. unix:/run/agent.sock).\n"
    "\n"
    "  --listen HOST:PORT  address to serve (default 127.0.0.1:8080; port 0: any free port)\n"
    "  --data-dir DIR      token, sandbox state, VM run dirs and console logs (made 0700)\n"
    "  --image IMAGE       guest image built by sbx-rootfs (required for --backend vm)\n"
    "  --backend B         vm (default) or addr:ADDR\n"
    "  --mem SIZE          guest memory of sandboxes that ask for none (default 1280M)\n"
    "  --user USER         guest user the SDK acts as (default app)\n"
    "  --cwd DIR           its working directory (default /home/USER)\n"
    "  --sbx-vm PATH       the VM runner (default: sbx-vm next to sbx-gateway)\n"
    "  --http-listen HOST:PORT  the HTTP ingress of exposeHttp and deployed revisions\n"
    "                      (requests are routed by their Host header; default: none)\n"
    "  --http-domain DOMAIN  exposed domains are <label>.DOMAIN (default sbx.localhost)\n"
    "  --ingress-idle-timeout DURATION  a relayed ingress connection that moves no byte\n"
    "                      either way for this long is closed (default 10m)\n"
    "  --ingress-max-conns N  open ingress connections; at N a new one closes the one idle\n"
    "                      longest (default 1024, at most 65536)\n"
    "  --resolve HOST:ADDR  fetch from a sandbox reaches HOST at ADDR (an IP literal) instead\n"
    "                      of resolving it (repeatable; like curl --resolve)\n"
    "  --ca-file PATH      PEM CA certificates fetch's https trusts besides the system's\n"
    "  --ssh-listen HOST:PORT  the SSH endpoint of exposeSsh (default: none)\n"
    "  --ssh-idle-timeout DURATION  an SSH connection that runs no session (no command or\n"
    "                      shell) for this long is closed (default 10m)\n"
    "  --ssh-keepalive DURATION  an SSH client silent for this long is probed (TCP keepalive)\n"
    "                      and dropped after 3 unanswered probes this far apart (default 30s)\n"
    "  --agent-hello-timeout DURATION  how long a connection to a sandbox's agent (a\n"
    "                      session's, the gateway's own) may take to connect and answer hello\n"
    "                      (default 30s)\n"
    "  --deploy-stage-timeout DURATION  how long each stage of a deploy (preparing,\n"
    "                      installing, building, deploying) may take (default 40m)\n"
    "  --stream-stall-timeout DURATION  how long a client stream whose receiver (a process's\n"
    "                      stdin, a file, a fetch's server) takes none of it may stop its\n"
    "                      session from reading; then that stream is cut (default 30s)\n"
    "  --quiet             log only errors\n"
    "  --trace             log every JSON-RPC message in and out (first 300 bytes)\n"
    "\n"
    "On start it prints the token and the environment the SDKs need:\n"
    "  token: ddo_...\n"
    "  export DENO_DEPLOY_TOKEN=ddo_...\n"
    "  export DENO_SANDBOX_ENDPOINT=http://HOST:PORT DENO_DEPLOY_ENDPOINT=http://HOST:PORT\n";

struct gw_main {
    struct gw g;
    uv_signal_t sigint, sigterm;
    bool stopping;
    char sbx_vm[PATH_MAX];
    char data_dir[PATH_MAX]; /* --data-dir made absolute */
    char cwd[256];
    const char *resolve[RESOLVE_MAX];
};

__attribute__((format(printf, 1, 2))) static int usage_error(const char *fmt, ...)
{
    va_list ap;

    (void)fprintf(stderr, "sbx-gateway: ");
    va_start(ap, fmt);
    (void)vfprintf(stderr, fmt, ap);
    va_end(ap);
    (void)fprintf(stderr, "\n(sbx-gateway --help shows the usage)\n");
    return EXIT_USAGE;
}

/* "1280M", "2G", "512" (MiB): 0, or -1. */
static int check_mem(const char *s)
{
    char *end = NULL;
    errno = 0;
    unsigned long long n = strtoull(s, &end, 10);

    if (errno != 0 || end == s || s[0] == '-' || n == 0) {
        return -1;
    }
    if (*end == 'G' || *end == 'g') {
        n *= 1024;
        end++;
    } else if (*end == 'M' || *end == 'm') {
        end++;
    }
    return *end == '\0' && n >= 128 && n <= 65536 ? 0 : -1;
}

static int default_sbx_vm(char *out, size_t len)
{
    char exe[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);

    if (n <= 0) {
        return -1;
    }
    exe[n] = '\0';
    char *slash = strrchr(exe, '/');
    if (slash == NULL) {
        return -1;
    }
    *slash = '\0';
    return snprintf(out, len, "%s/sbx-vm", exe) >= (int)len ? -1 : 0;
}

/* Parse argv into m->g.opt. 0 to run, 1 to exit 0 (help, version), or an exit status. */
static int parse_args(struct gw_main *m, int argc, char **argv)
{
    static const struct option longopts[] = {
        { "listen", required_argument, NULL, 'l' },
        { "data-dir", required_argument, NULL, 'd' },
        { "image", required_argument, NULL, 'i' },
        { "backend", required_argument, NULL, 'b' },
        { "mem", required_argument, NULL, 'm' },
        { "user", required_argument, NULL, 'u' },
        { "cwd", required_argument, NULL, 'c' },
        { "sbx-vm", required_argument, NULL, 'v' },
        { "quiet", no_argument, NULL, 'q' },
        { "help", no_argument, NULL, 'h' },
        { "version", no_argument, NULL, 'V' },
        { "trace", no_argument, NULL, 't' },
        { "http-listen", required_argument, NULL, 'H' },
        { "http-domain", required_argument, NULL, 'D' },
        { "resolve", required_argument, NULL, 'R' },
        { "ca-file", required_argument, NULL, 'C' },
        { "ssh-listen", required_argument, NULL, 'S' },
        { "agent-hello-timeout", required_argument, NULL, 'A' },
        { "deploy-stage-timeout", required_argument, NULL, 'T' },
        { "stream-stall-timeout", required_argument, NULL, 'W' },
        { "ingress-idle-timeout", required_argument, NULL, 'I' },
        { "ingress-max-conns", required_argument, NULL, 'K' },
        { "ssh-idle-timeout", required_argument, NULL, 'U' },
        { "ssh-keepalive", required_argument, NULL, 'E' },
        { NULL, 0, NULL, 0 },
    };
    struct gw_opts *o = &m->g.opt;
    int ch;

    o->listen = "127.0.0.1:8080";
    o->backend = "vm";
    o->mem = "1280M";
    o->user = "app";
    o->http_domain = "sbx.localhost";
    o->hello_ms = GW_HELLO_MS;
    o->stage_ms = GW_STAGE_MS;
    o->stall_ms = GW_STALL_MS;
    o->ig_idle_ms = GW_IG_IDLE_MS;
    o->ig_conns = GW_IG_CONNS;
    o->ssh_idle_ms = GW_SSH_IDLE_MS;
    o->ssh_ka_ms = GW_SSH_KA_MS;
    opterr = 0;
    while ((ch = getopt_long(argc, argv, ":", longopts, NULL)) != -1) {
        switch (ch) {
        case 'l':
            o->listen = optarg;
            break;
        case 'd':
            o->data_dir = optarg;
            break;
        case 'i':
            o->image = optarg;
            break;
        case 'b':
            o->backend = optarg;
            break;
        case 'm':
            o->mem = optarg;
            break;
        case 'u':
            o->user = optarg;
            break;
        case 'c':
            o->cwd = optarg;
            break;
        case 'v':
            o->sbx_vm = optarg;
            break;
        case 'q':
            o->quiet = true;
            break;
        case 't':
            o->trace = true;
            break;
        case 'H':
            o->http_listen = optarg;
            break;
        case 'D':
            o->http_domain = optarg;
            break;
        case 'R':
            if (o->nresolve >= RESOLVE_MAX) {
                return usage_error("--resolve: at most %d", RESOLVE_MAX);
            }
            m->resolve[o->nresolve++] = optarg;
            o->resolve = m->resolve;
            break;
        case 'S':
            o->ssh_listen = optarg;
            break;
        case 'C':
            o->ca_file = optarg;
            break;
        case 'A':
        case 'T':
        case 'W':
        case 'I':
        case 'U':
        case 'E':
            if (gw_duration_parse(optarg, ch == 'A'   ? &o->hello_ms
                                          : ch == 'T' ? &o->stage_ms
                                          : ch == 'W' ? &o->stall_ms
                                          : ch == 'I' ? &o->ig_idle_ms
                                          : ch == 'U' ? &o->ssh_idle_ms
                                                      : &o->ssh_ka_ms) < 0) {
                return usage_error("%s %s: expected a duration like 30s, 40m or 2h (at most 24h)",
                                   ch == 'A'   ? "--agent-hello-timeout"
                                   : ch == 'T' ? "--deploy-stage-timeout"
                                   : ch == 'W' ? "--stream-stall-timeout"
                                   : ch == 'I' ? "--ingress-idle-timeout"
                                   : ch == 'U' ? "--ssh-idle-timeout"
                                               : "--ssh-keepalive",
                                   optarg);
            }
            break;
        case 'K': {
            char *end = NULL;
            unsigned long n;

            errno = 0;
            n = strtoul(optarg, &end, 10);
            if (optarg[0] < '0' || optarg[0] > '9' || *end != '\0' || errno != 0 || n < 1 ||
                n > GW_IG_CONNS_MAX) {
                return usage_error("--ingress-max-conns %s: expected a number from 1 to %d", optarg,
                                   GW_IG_CONNS_MAX);
            }
            o->ig_conns = (unsigned)n;
            break;
        }
        case 'h':
            (void)fputs(usage_text, stdout);
            return 1;
        case 'V':
            (void)printf("sbx-gateway %s\n", SBX_VERSION);
            return 1;
        case ':':
            return usage_error("%s needs a value", argv[optind - 1]);
        default:
            return usage_error("unknown option %s", argv[optind - 1]);
        }
    }
    if (optind < argc) {
        return usage_error("unexpected argument %s", argv[optind]);
    }
    if (o->data_dir == NULL || o->data_dir[0] == '\0') {
        return usage_error("%s", "--data-dir DIR is required");
    }
    if (check_mem(o->mem) < 0) {
        return usage_error("--mem %s: expected a size like 1280M or 2G (128M to 64G)", o->mem);
    }
    if (o->user[0] == '\0' || strchr(o->user, '/') != NULL || strlen(o->user) > 64) {
        return usage_error("--user %s: not a user name", o->user);
    }
    if (o->cwd == NULL) {
        (void)snprintf(m->cwd, sizeof m->cwd, "/home/%s", o->user);
        o->cwd = m->cwd;
    }
    if (o->cwd[0] != '/') {
        return usage_error("--cwd %s: must be an absolute path", o->cwd);
    }
    if (strncmp(o->backend, "addr:", 5) == 0) {
        struct sbx_addr a;
        struct sbx_err err = { 0 };
        if (sbx_addr_parse(o->backend + 5, &a, &err) < 0) {
            return usage_error("--backend: %s", err.msg);
        }
        return 0;
    }
    if (strcmp(o->backend, "vm") != 0) {
        return usage_error("--backend %s: expected vm or addr:ADDR", o->backend);
    }
    struct stat st;
    if (o->image == NULL) {
        return usage_error("%s", "--image IMAGE is required with the vm backend");
    }
    if (stat(o->image, &st) < 0 || !S_ISREG(st.st_mode)) {
        return usage_error("--image %s: no such image file", o->image);
    }
    if (o->sbx_vm == NULL) {
        if (default_sbx_vm(m->sbx_vm, sizeof m->sbx_vm) < 0) {
            return usage_error("%s", "cannot find sbx-vm next to sbx-gateway; give --sbx-vm");
        }
        o->sbx_vm = m->sbx_vm;
    }
    if (access(o->sbx_vm, X_OK) < 0) {
        return usage_error("--sbx-vm %s: not an executable file", o->sbx_vm);
    }
    return 0;
}

static bool token_valid(const char *t, size_t len)
{
    if (len != 4 + TOKEN_CHARS || strncmp(t, "ddo_", 4) != 0) {
        return false;
    }
    for (size_t i = 4; i < len; i++) {
        if (!((t[i] >= '0' && t[i] <= '9') || (t[i] >= 'a' && t[i] <= 'z'))) {
            return false;
        }
    }
    return true;
}

/* The data dir (0700) and DATA/token (0600): read, or minted on the first start. */
static int load_token(struct gw *g)
{
    char path[PATH_MAX];
    char *text = NULL;
    size_t len = 0;

    if (mkdir(g->opt.data_dir, 0700) < 0 && errno != EEXIST) {
        gw_log("--data-dir %s: %s", g->opt.data_dir, strerror(errno));
        return -1;
    }
    if (snprintf(path, sizeof path, "%s/token", g->opt.data_dir) >= (int)sizeof path) {
        gw_log("--data-dir %s: path too long", g->opt.data_dir);
        return -1;
    }
    if (gw_file_read(path, 256, &text, &len) == 0) {
        while (len > 0 && (text[len - 1] == '\n' || text[len - 1] == '\r')) {
            text[--len] = '\0';
        }
        if (!token_valid(text, len)) {
            gw_log("%s: not a token (ddo_ and 40 of [0-9a-z]); remove it to mint a new one", path);
            free(text);
            return -1;
        }
        (void)snprintf(g->token, sizeof g->token, "%s", text);
        free(text);
        return 0;
    }
    if (errno != ENOENT) {
        gw_log("%s: %s", path, strerror(errno));
        return -1;
    }
    char tail[TOKEN_CHARS + 1];
    if (gw_random_chars(tail, TOKEN_CHARS, "0123456789abcdefghijklmnopqrstuvwxyz") < 0) {
        gw_log("getrandom: %s", strerror(errno));
        return -1;
    }
    (void)snprintf(g->token, sizeof g->token, "ddo_%s", tail);
    char line[sizeof g->token + 1];
    int n = snprintf(line, sizeof line, "%s\n", g->token);
    if (gw_file_write_atomic(path, line, (size_t)n, 0600) < 0) {
        gw_log("%s: %s", path, strerror(errno));
        return -1;
    }
    return 0;
}

/* Close the listeners: the API's, the ingress, SSH; deploy jobs end. Idempotent. */
static void stop_services(struct gw *g)
{
    if (g->http != NULL) {
        gw_http_close(g->http);
        g->http = NULL;
    }
    gw_ingress_stop(g);
    gw_ssh_stop(g);
    gw_deploy_stop(g);
}

static void signal_closed_cb(uv_handle_t *h)
{
    (void)h; /* embedded in struct gw_main */
}

static void signal_cb(uv_signal_t *h, int signo)
{
    struct gw_main *m = h->data;

    if (m->stopping) {
        return;
    }
    m->stopping = true;
    gw_log("%s: stopping (sandboxes with a timeout keep running)",
           signo == SIGINT ? "SIGINT" : "SIGTERM");
    stop_services(&m->g);
    gw_sandboxes_shutdown(&m->g);
    uv_close((uv_handle_t *)&m->sigint, signal_closed_cb);
    uv_close((uv_handle_t *)&m->sigterm, signal_closed_cb);
}

static int next_stream_start(uint64_t *out)
{
    uint64_t r;

    if (getrandom(&r, sizeof r, 0) != (ssize_t)sizeof r) {
        return -1;
    }
    *out = (1ull << 40) + (r & ((1ull << 40) - 1));
    return 0;
}

/* Listen, print the three lines, serve until a signal. The exit status. */
static int run(struct gw_main *m)
{
    struct gw *g = &m->g;
    char err[512] = "";
    int rc;

    /* Absolute: run dirs and agent addresses derived from it are stored in the state files,
     * and a later gateway may start from another directory. */
    if (mkdir(g->opt.data_dir, 0700) < 0 && errno != EEXIST) {
        gw_log("--data-dir %s: %s", g->opt.data_dir, strerror(errno));
        return 1;
    }
    if (realpath(g->opt.data_dir, m->data_dir) == NULL) {
        gw_log("--data-dir %s: %s", g->opt.data_dir, strerror(errno));
        return 1;
    }
    g->opt.data_dir = m->data_dir;
    if (load_token(g) < 0 || next_stream_start(&g->next_stream) < 0 || gw_sandboxes_load(g) < 0) {
        return 1;
    }
    g->http = gw_http_listen(g->loop, g->opt.listen, gw_rest_handle, g, err, sizeof err);
    if (g->http == NULL) {
        gw_log("--listen %s: %s", g->opt.listen, err);
        return 1;
    }
    if (gw_ingress_start(g, err, sizeof err) < 0 || gw_deploy_start(g, err, sizeof err) < 0 ||
        gw_ssh_start(g, err, sizeof err) < 0 || gw_fetch_start(g, err, sizeof err) < 0) {
        gw_log("%s", err);
        stop_services(g);
        return 1;
    }
    /* The host part of --listen, with the port actually bound. */
    char host[256];
    const char *colon = strrchr(g->opt.listen, ':');
    size_t hlen = colon != NULL ? (size_t)(colon - g->opt.listen) : strlen(g->opt.listen);
    if (hlen >= sizeof host) {
        hlen = sizeof host - 1;
    }
    memcpy(host, g->opt.listen, hlen);
    host[hlen] = '\0';
    int port = gw_http_port(g->http);
    /* Before the banner: whoever reads it may signal us at once and expects a clean stop. */
    if ((rc = uv_signal_init(g->loop, &m->sigint)) != 0 ||
        (rc = uv_signal_init(g->loop, &m->sigterm)) != 0 ||
        (rc = uv_signal_start(&m->sigint, signal_cb, SIGINT)) != 0 ||
        (rc = uv_signal_start(&m->sigterm, signal_cb, SIGTERM)) != 0) {
        gw_log("signals: %s", uv_strerror(rc));
        return 1;
    }
    m->sigint.data = m;
    m->sigterm.data = m;
    (void)printf("token: %s\n", g->token);
    (void)printf("export DENO_DEPLOY_TOKEN=%s\n", g->token);
    (void)printf("export DENO_SANDBOX_ENDPOINT=http://%s:%d DENO_DEPLOY_ENDPOINT=http://%s:%d\n",
                 host, port, host, port);
    if (fflush(stdout) != 0) {
        gw_log("stdout: %s", strerror(errno));
    }
    if (!g->opt.quiet) {
        gw_log("listening on %s:%d (backend %s)", host, port, g->opt.backend);
    }
    rc = uv_run(g->loop, UV_RUN_DEFAULT);
    (void)rc; /* returns once the listener, the sandboxes' handles and the signals are closed */
    return 0;
}

static void log_open_handle(uv_handle_t *h, void *arg)
{
    (void)arg;
    gw_log("at exit: a %s handle is still open%s (data %p)",
           uv_handle_type_name(uv_handle_get_type(h)), uv_is_closing(h) ? " (closing)" : "",
           uv_handle_get_data(h));
}

int main(int argc, char **argv)
{
    struct gw_main m = { 0 };
    uv_loop_t loop;

    int rc = parse_args(&m, argc, argv);
    if (rc != 0) {
        return rc == 1 ? 0 : rc;
    }
    /* Every session, ingress connection, fetch and SSH client holds descriptors (the caps add
     * up to several thousand): take the hard limit as the soft one. */
    struct rlimit nofile;
    if (getrlimit(RLIMIT_NOFILE, &nofile) == 0 && nofile.rlim_cur < nofile.rlim_max) {
        nofile.rlim_cur = nofile.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &nofile) < 0) {
            gw_log("RLIMIT_NOFILE: %s (keeping the soft limit)", strerror(errno));
        }
    }
    if (signal(SIGPIPE, SIG_IGN) == SIG_ERR) {
        gw_log("SIGPIPE: %s", strerror(errno));
        return 1;
    }
    /* Stream messages of a few hundred KiB are made and freed continuously: keep them on the
     * heap instead of an mmap + page faults + munmap per message (glibc's threshold adapts only
     * up to what it has seen freed, so set it). */
    (void)mallopt(M_MMAP_THRESHOLD, 8 << 20);
    /* fetch's name lookups run on libuv's threads, 4 unless told: a resolver that does not
     * answer holds one each until it gives up, and four of them stopped every sandbox's
     * lookups. libuv reads this when it first needs a thread. */
    (void)setenv("UV_THREADPOOL_SIZE", "32", 0);
    if ((rc = uv_loop_init(&loop)) != 0) {
        gw_log("uv_loop_init: %s", uv_strerror(rc));
        return 1;
    }
    m.g.loop = &loop;
    int status = run(&m);
    stop_services(&m.g);
    gw_sandboxes_free(&m.g);
    rc = uv_loop_close(&loop);
    if (rc != 0) {
        /* A handle someone forgot to close: name it (a bug to fix, not a user error). */
        uv_walk(&loop, log_open_handle, NULL);
        gw_log("uv_loop_close: %s", uv_strerror(rc));
        if (status == 0) {
            status = 1;
        }
    }
    return status;
}
