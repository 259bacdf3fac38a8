/* config.c: configuration (command line, file, defaults); the console log, small-file reads; the
 * control channel's message parser (agent.c acts on what it finds); when shutdown stops waiting
 * for sync (main.c does the waiting). */
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "init.h"

struct init_key {
    const char *name;
    /* Returns NULL when it took the value, or the reason it did not. */
    const char *(*set)(struct init_config *cfg, const struct init_key *k, const char *value);
    const char *def;            /* applied through `set` too: defaults obey the same rules */
    size_t field;               /* set_duration, set_choice: offsetof() the value */
    const char *on, *off, *why; /* set_choice: its two words, and the complaint */
};
#define INIT_FIELD(f) offsetof(struct init_config, f)
#define INIT_ALNUM    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"

/* The base environment of the agent and the rescue shell; sbx.env.* replaces entries. */
static const char *const init_env_base[][2] = {
    { "sbx.env.PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" },
    { "sbx.env.HOME", "/root" },
    { "sbx.env.LANG", "C.UTF-8" },
    { "sbx.env.TERM", "vt220" },
};

const char *const init_lifetime_names[3] = { "none", "session", "duration" };

int64_t init_now(clockid_t id)
{
    struct timespec ts;

    return clock_gettime(id, &ts) < 0 ? 0 : (int64_t)ts.tv_sec * INIT_NSEC + ts.tv_nsec;
}

/* Where init_log writes: fd 2 until init_log_open gives it a non-blocking description of its
 * own. Lines a console would not take are waited for briefly (log_write), then dropped and
 * counted: PID 1 blocked on a console nobody reads (a stopped serial port, ^S) would stop reaping
 * and shutting down. */
static int log_fd = STDERR_FILENO;
static unsigned long log_dropped;

void init_log_open(void)
{
    struct stat sb;
    int fd;

    /* A regular file never blocks, and a description of its own would write at its own offset,
     * over the agent's lines: fd 2 stays. */
    if (log_fd != STDERR_FILENO || fstat(STDERR_FILENO, &sb) < 0 || S_ISREG(sb.st_mode)) {
        return;
    }
    /* A new open file description of the same console (or pipe): O_NONBLOCK on it leaves fd 2,
     * which children inherit, blocking. /proc must be mounted; until then fd 2 is used. */
    fd = open("/proc/self/fd/2", O_WRONLY | O_NOCTTY | O_NONBLOCK | O_CLOEXEC);
    if (fd >= 0) {
        log_fd = fd;
    }
}

/* Write @n bytes to the log: a console that is merely slow gets LOG_WAIT_MS per line to take
 * them (a boot's burst of lines on a serial port), one that takes nothing none once a line was
 * dropped. False when not all of it went (EAGAIN past the wait, or a gone console). */
#define LOG_WAIT_MS 200
static bool log_write(const char *p, size_t n)
{
    int waited = 0;

    while (n > 0) {
        ssize_t w = write(log_fd, p, n);
        struct pollfd pf = { log_fd, POLLOUT, 0 };

        if (w > 0) {
            p += w;
            n -= (size_t)w;
        } else if (w < 0 && errno == EINTR) {
            continue;
        } else if (w < 0 && errno == EAGAIN && log_dropped == 0 && waited < LOG_WAIT_MS) {
            (void)poll(&pf, 1, 10);
            waited += 10;
        } else {
            return false;
        }
    }
    return true;
}

void init_log(const char *fmt, ...)
{
    int saved = errno;
    int64_t now = init_now(CLOCK_MONOTONIC);
    char line[640];
    int n = snprintf(line, sizeof(line), "sbx-init[%lld.%06lld]: ", (long long)(now / INIT_NSEC),
                     (long long)(now % INIT_NSEC / 1000));
    va_list ap;

    errno = saved; /* for %m */
    va_start(ap, fmt);
    n += vsnprintf(line + n, sizeof(line) - (size_t)n - 1, fmt, ap);
    va_end(ap);
    n = n > (int)sizeof(line) - 2 ? (int)sizeof(line) - 2 : n; /* truncated: end the line */
    line[n++] = '\n';
    /* One write, so init's and the agent's lines never interleave; a gone console can't be told. */
    if (log_dropped > 0) {
        char note[96];
        int k =
            snprintf(note, sizeof(note),
                     "\nsbx-init: %lu line(s) dropped: the console took no more\n", log_dropped);
        if (log_write(note, (size_t)k)) {
            log_dropped = 0;
        }
    }
    if (log_dropped > 0 || !log_write(line, (size_t)n)) {
        log_dropped++;
    }
    errno = saved;
}

ssize_t init_read_file(const char *path, char *buf, size_t size, int *cut)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    ssize_t n = 0, r = fd < 0 ? -1 : 1;
    char more;

    while (r > 0 && (size_t)n < size - 1) {
        if ((r = read(fd, buf + n, size - 1 - (size_t)n)) > 0) {
            n += r;
        } else if (r < 0 && errno == EINTR) {
            r = 1;
        }
    }
    /* Full: one byte more tells a file that fits exactly from one that does not. */
    if (r > 0 && cut != NULL && read(fd, &more, 1) == 1) {
        const char *end = memrchr(buf, '\n', (size_t)n);

        *cut = 1;
        n = end != NULL ? end + 1 - buf : 0;
        for (const char *p = buf; (p = memchr(p, '\n', (size_t)(buf + n - p))) != NULL; p++) {
            ++*cut;
        }
    } else if (cut != NULL) {
        *cut = 0;
    }
    n = r < 0 ? -errno : n;
    if (fd >= 0) {
        close(fd);
    }
    buf[n > 0 ? n : 0] = '\0';
    return n;
}

long long init_parse_uint(const char *s, long long max)
{
    char *end;
    long long v;

    if (s == NULL || !isdigit((unsigned char)*s)) {
        return -1;
    }
    errno = 0;
    v = strtoll(s, &end, 10);
    return *end != '\0' || errno != 0 || v > max ? -1 : v;
}

int init_parse_duration(const char *s, int64_t *seconds)
{
    const char *p = s;
    int64_t v = 0, mult;

    for (; isdigit((unsigned char)*p); p++) {
        if ((v = v * 10 + (*p - '0')) > INIT_DURATION_MAX_S) {
            return -ERANGE;
        }
    }
    if (p == s || (*p != '\0' && (p[1] != '\0' || strchr("smh", *p) == NULL))) {
        return -EINVAL;
    }
    mult = *p == 'h' ? 3600 : *p == 'm' ? 60 : 1;
    if (v * mult > INIT_DURATION_MAX_S) {
        return -ERANGE;
    }
    *seconds = v * mult;
    return 0;
}

static const char *set_duration(struct init_config *cfg, const struct init_key *k, const char *v)
{
    int rc = init_parse_duration(v, (int64_t *)(void *)((char *)cfg + k->field));

    return rc == 0         ? NULL
           : rc == -ERANGE ? "too large (max 10 years)"
                           : "not a duration (<N>, <N>s, <N>m or <N>h)";
}

/* sbx.shutdown_sync: a duration, at most INIT_SYNC_MAX_S (past that, a VM asked to stop would
 * seem hung to its host, writing or not). */
static const char *set_sync(struct init_config *cfg, const struct init_key *k, const char *v)
{
    const char *why = set_duration(cfg, k, v);

    return why != NULL ? why : cfg->shutdown_sync_s > INIT_SYNC_MAX_S ? "too large (max 1h)" : NULL;
}

static const char *set_choice(struct init_config *cfg, const struct init_key *k, const char *v)
{
    if (strcmp(v, k->on) != 0 && strcmp(v, k->off) != 0) {
        return k->why;
    }
    *(bool *)((char *)cfg + k->field) = strcmp(v, k->on) == 0;
    return NULL;
}

static const char *set_lifetime(struct init_config *cfg, const struct init_key *k, const char *v)
{
    int rc;

    cfg->lifetime = strcmp(v, "session") == 0 ? INIT_LIFETIME_SESSION : INIT_LIFETIME_NONE;
    if (strcmp(v, "session") == 0 || strcmp(v, "none") == 0) {
        return NULL;
    }
    if ((rc = init_parse_duration(v, &cfg->lifetime_s)) < 0) {
        return rc == -ERANGE ? "too large (max 10 years)" : "not session, none or a duration";
    }
    cfg->lifetime = INIT_LIFETIME_DURATION;
    return cfg->lifetime_s == 0 ? "a duration must be more than 0" : NULL;
}

static const char *set_listen(struct init_config *cfg, const struct init_key *k, const char *v)
{
    const char *p = v, *end, *colon;
    int n = 0;

    if (strlen(v) >= sizeof(cfg->listen)) {
        return "too long";
    }
    /* Only the shape is checked: the agent owns the address syntax and reports details. */
    do {
        colon = memchr(p, ':', (size_t)((end = strchrnul(p, ',')) - p));
        if (colon == NULL || colon == p || colon + 1 == end) {
            return "each address must be <kind>:<where>";
        }
        for (const char *c = p; c < end; c++) {
            if (!isgraph((unsigned char)*c)) {
                return "addresses cannot contain spaces or control characters";
            }
        }
        if (++n > INIT_LISTEN_MAX) {
            return "too many addresses (max 8)";
        }
        p = end + 1;
    } while (*end != '\0');
    strcpy(cfg->listen, v);
    return NULL;
}

static const char *set_hostname(struct init_config *cfg, const struct init_key *k, const char *v)
{
    size_t n = strlen(v);

    if (n == 0 || n >= sizeof(cfg->hostname)) {
        return "must be 1 to 64 characters";
    }
    if (v[0] == '-' || v[0] == '.' || strspn(v, INIT_ALNUM "-.") != n) {
        return "only letters, digits, '-' and '.', not first";
    }
    memcpy(cfg->hostname, v, n + 1);
    return NULL;
}

static const char *set_rescue_after(struct init_config *cfg, const struct init_key *k,
                                    const char *v)
{
    cfg->rescue_after = (int)init_parse_uint(v, 1000);
    return cfg->rescue_after < 0 ? "expected a number from 0 to 1000" : NULL;
}

/* sbx.ip and sbx.gw: "none", or an IPv4 address, with /PREFIX for sbx.ip only. */
static const char *set_address(struct init_config *cfg, const struct init_key *k, const char *v)
{
    bool ip = strcmp(k->name, "sbx.ip") == 0, *has = ip ? &cfg->has_ip : &cfg->has_gw;
    char buf[INET_ADDRSTRLEN + 4], *slash;

    *has = false;
    if (strcmp(v, "none") == 0) {
        return NULL;
    }
    if (strlen(v) >= sizeof(buf)) {
        return "not an IPv4 address";
    }
    if (((slash = strchr(strcpy(buf, v), '/')) != NULL) != ip) {
        return ip ? "expected ADDR/PREFIX" : "expected an address without /PREFIX";
    }
    if (slash != NULL) {
        *slash++ = '\0';
        if ((cfg->ip_prefix = (int)init_parse_uint(slash, 32)) < 1) {
            return "prefix must be 1 to 32";
        }
    }
    if (inet_pton(AF_INET, buf, ip ? &cfg->ip : &cfg->gw) != 1) {
        return "not an IPv4 address";
    }
    *has = true;
    return NULL;
}

/* sbx.token_file: "none" or an absolute path; the agent checks the file itself when it starts. */
static const char *set_token_file(struct init_config *cfg, const struct init_key *k, const char *v)
{
    size_t n = strlen(v);

    cfg->token_file[0] = '\0';
    if (strcmp(v, "none") == 0) {
        return NULL;
    }
    if (v[0] != '/' || n >= sizeof(cfg->token_file)) {
        return "expected none or an absolute path";
    }
    for (const char *c = v; *c != '\0'; c++) {
        if (!isgraph((unsigned char)*c)) {
            return "paths cannot contain spaces or control characters";
        }
    }
    memcpy(cfg->token_file, v, n + 1);
    return NULL;
}

/* One size of sbx.replay: digits with an optional K, M or G; its end in *@end. -1 if malformed. */
static long long replay_size(const char *v, const char **end)
{
    long long x = 0;
    const char *p = v;

    for (; isdigit((unsigned char)*p); p++) {
        if ((x = x * 10 + (*p - '0')) > (1LL << 40)) {
            return -1;
        }
    }
    if (p == v) {
        return -1;
    }
    if (strchr("KkMmGg", *p) != NULL && *p != '\0') {
        int shift = (*p | 0x20) == 'k' ? 10 : (*p | 0x20) == 'm' ? 20 : 30; /* as the agent */
        if (x > ((1LL << 40) >> shift)) {
            return -1; /* over 1 TiB: refused here, not wrapped into something the agent refuses */
        }
        x <<= shift;
        p++;
    }
    *end = p;
    return x;
}

/* sbx.replay: "default" or SIZE[,TOTAL] (K, M, G suffixes): the agent's replay rings, one output's
 * and all of them together (passed as --replay; the agent's own limits are checked here too, so
 * a bad value is reported at boot rather than by an agent that cannot start). */
static const char *set_replay(struct init_config *cfg, const struct init_key *k, const char *v)
{
    static const char why[] = "expected default or SIZE[,TOTAL]: SIZE 64K to 1G, TOTAL at least "
                              "SIZE and at most 1024G (bytes, K, M or G)";
    const char *e = v;
    long long size, total;

    cfg->replay[0] = '\0';
    if (strcmp(v, "default") == 0) {
        return NULL;
    }
    if (strlen(v) >= sizeof(cfg->replay) || (size = replay_size(v, &e)) < 0) {
        return why;
    }
    total = size;
    if (*e == ',' && ((total = replay_size(e + 1, &e)) < 0)) {
        return why;
    }
    if (*e != '\0' || size < (64LL << 10) || size > (1LL << 30) || total < size ||
        total > (1LL << 40)) {
        return why;
    }
    strcpy(cfg->replay, v);
    return NULL;
}

/* sbx.workload.memory_max, pids_max, cpu_max: "max" (no limit), "auto" (sized at boot by
 * cgroup.c; not for cpu_max), or a number: bytes with an optional K, M or G suffix, at least 16M;
 * processes, 16 to 4194304; percent of one CPU, 1 to 100000. */
static const char *set_limit(struct init_config *cfg, const struct init_key *k, const char *v)
{
    static const char units[] = "KMG";
    uint64_t *out = (uint64_t *)(void *)((char *)cfg + k->field);
    bool memory = k->field == INIT_FIELD(wl_memory_max), cpu = k->field == INIT_FIELD(wl_cpu_max);
    const char *why = memory ? "expected auto, max or a size of at least 16M (bytes, K, M or G)"
                      : cpu  ? "expected max or 1 to 100000 (percent of one CPU)"
                             : "expected auto, max or 16 to 4194304";
    size_t n = strlen(v);
    const char *unit = memory && n > 1 ? strchr(units, v[n - 1]) : NULL;
    int shift = unit != NULL ? 10 * (int)(unit - units + 1) : 0;
    long long x, min = memory ? 16LL << 20 : cpu ? 1 : 16;
    char num[24];

    if (strcmp(v, "max") == 0 || (!cpu && strcmp(v, "auto") == 0)) {
        *out = v[0] == 'm' ? INIT_LIMIT_NONE : INIT_LIMIT_AUTO;
        return NULL;
    }
    n -= unit != NULL;
    if (n == 0 || n >= sizeof(num)) {
        return why;
    }
    memcpy(num, v, n);
    num[n] = '\0';
    /* At most 1 PiB of memory, whatever the unit: no overflow in the shift. */
    x = init_parse_uint(num, memory ? (1LL << 50) >> shift : cpu ? 100000 : 4194304);
    if (x < 0 || (x << shift) < min) {
        return why;
    }
    *out = (uint64_t)(x << shift);
    return NULL;
}

/* sbx.seccomp: off, baseline, strict or log (filter.h). */
static const char *set_seccomp(struct init_config *cfg, const struct init_key *k, const char *v)
{
    int mode = sbx_filter_mode_parse(v);

    cfg->seccomp = mode < 0 ? SBX_FILTER_MODE_DEFAULT : (enum sbx_filter_mode)mode;
    return mode < 0 ? "expected off, baseline, strict or log" : NULL;
}

static const char *set_root(struct init_config *cfg, const struct init_key *k, const char *v)
{
    /* LABEL= and UUID= would need blkid-like probing: init keeps to device paths. */
    if ((v[0] != '\0' && strncmp(v, "/dev/", 5) != 0) || strlen(v) >= sizeof(cfg->root)) {
        return "only /dev/ device paths are supported";
    }
    strcpy(cfg->root, v);
    return NULL;
}

/* One table row per key reads best: */
/* clang-format off */
#define KEY(n, s, d) { .name = n, .set = s, .def = d }
#define DURATION(n, d, f) { .name = n, .set = set_duration, .def = d, .field = INIT_FIELD(f) }
#define LIMIT(n, d, f) { .name = n, .set = set_limit, .def = d, .field = INIT_FIELD(f) }
#define FIELD(n, s, d, f) { .name = n, .set = s, .def = d, .field = INIT_FIELD(f) }
#define CHOICE(n, d, f, off_, on_) { .name = n, .set = set_choice, .def = d, \
    .field = INIT_FIELD(f), .off = off_, .on = on_, .why = "expected " off_ " or " on_ }
/* clang-format on */
static const struct init_key init_keys[] = {
    KEY("sbx.lifetime", set_lifetime, "none"),
    DURATION("sbx.session_grace", "10s", session_grace_s),
    DURATION("sbx.shutdown_grace", "2s", shutdown_grace_s),
    FIELD("sbx.shutdown_sync", set_sync, "60s", shutdown_sync_s),
    KEY("sbx.listen", set_listen, "vsock:1024,serial:agent"),
    KEY("sbx.hostname", set_hostname, "sandbox"),
    CHOICE("sbx.debug", "none", debug_shell, "none", "shell"),
    KEY("sbx.ip", set_address, "none"),
    KEY("sbx.gw", set_address, "none"),
    CHOICE("sbx.vsock_allow_local", "0", vsock_allow_local, "0", "1"),
    KEY("sbx.rescue_after", set_rescue_after, "3"),
    KEY("sbx.seccomp", set_seccomp, "strict"),
    KEY("sbx.token_file", set_token_file, "none"),
    KEY("sbx.replay", set_replay, "default"),
    LIMIT("sbx.workload.memory_max", "auto", wl_memory_max),
    LIMIT("sbx.workload.pids_max", "auto", wl_pids_max),
    LIMIT("sbx.workload.cpu_max", "max", wl_cpu_max),
    CHOICE("sbx.overlay", "none", overlay, "none", "tmpfs"),
    KEY("root", set_root, ""),
    CHOICE("rootfstype", "ext4", squashfs, "ext4", "squashfs"),
};
#define INIT_NKEYS (sizeof(init_keys) / sizeof(init_keys[0]))

static int set_env(struct init_config *cfg, const char *key, const char *value)
{
    const char *name = key + strlen("sbx.env."), *why;
    size_t n = strlen(name);
    int slot = 0;

    /* A higher-precedence source replaces the value, in place. */
    while (slot < cfg->nenv &&
           (strncmp(cfg->env[slot], name, n) != 0 || cfg->env[slot][n] != '=')) {
        slot++;
    }
    if (n == 0 || isdigit((unsigned char)name[0]) || strspn(name, INIT_ALNUM "_") != n) {
        why = "invalid variable name";
    } else if (strcmp(name, "SBX_AGENT_TOKEN") == 0) {
        /* The command line and init.conf are readable by every user: a token there is no
         * secret. Not echoed to the console either. */
        why = "the token goes in a file other users cannot read: use sbx.token_file";
        value = "...";
    } else if (n + strlen(value) + 2 > INIT_ENV_LEN) {
        why = "too long (max 1023 bytes)";
    } else if (slot == INIT_ENV_MAX) {
        why = "too many sbx.env entries (max 32)";
    } else {
        snprintf(cfg->env[slot], INIT_ENV_LEN, "%s=%s", name, value);
        cfg->nenv += slot == cfg->nenv;
        return 0;
    }
    INIT_LOG_IF(!cfg->quiet, "config: %s=\"%.80s\": %s; ignored", key, value, why);
    return -EINVAL;
}

void init_config_defaults(struct init_config *cfg)
{
    *cfg = (struct init_config){ .quiet = cfg->quiet };
    for (size_t i = 0; i < INIT_NKEYS; i++) {
        (void)init_keys[i].set(cfg, &init_keys[i], init_keys[i].def); /* valid by construction */
    }
    for (size_t i = 0; i < sizeof(init_env_base) / sizeof(init_env_base[0]); i++) {
        (void)set_env(cfg, init_env_base[i][0], init_env_base[i][1]); /* valid, too */
    }
}

int init_config_set(struct init_config *cfg, const char *key, const char *value)
{
    const char *why;

    if (strncmp(key, "sbx.env.", 8) == 0) {
        return set_env(cfg, key, value);
    }
    for (size_t i = 0; i < INIT_NKEYS; i++) {
        if (strcmp(init_keys[i].name, key) != 0) {
            continue;
        }
        if ((why = init_keys[i].set(cfg, &init_keys[i], value)) == NULL) {
            return 0;
        }
        INIT_LOG_IF(!cfg->quiet, "config: %s=\"%.80s\": %s; using %s", key, value, why,
                    init_keys[i].def[0] ? init_keys[i].def : "(none)");
        (void)init_keys[i].set(cfg, &init_keys[i], init_keys[i].def); /* valid by construction */
        return -EINVAL;
    }
    if (strncmp(key, "sbx.", 4) != 0) {
        return 0; /* console=, panic= and the like are the kernel's */
    }
    INIT_LOG_IF(!cfg->quiet, "config: %s: unknown key; ignored", key);
    return -ENOENT;
}

static char *trim(char *s)
{
    char *end = s + strlen(s);

    while (isspace((unsigned char)*s)) {
        s++;
    }
    while (end > s && isspace((unsigned char)end[-1])) {
        *--end = '\0';
    }
    return s;
}

void init_config_load_text(struct init_config *cfg, char *text, const char *path)
{
    char *next = text, *line, *eq;

    while ((line = strsep(&next, "\n")) != NULL) {
        line = trim(line);
        if (*line == '\0' || *line == '#') {
            continue;
        }
        if ((eq = strchr(line, '=')) != NULL) {
            *eq = '\0';
            (void)init_config_set(cfg, trim(line), trim(eq + 1)); /* reports by itself */
        } else {
            INIT_LOG_IF(!cfg->quiet, "config: %s: \"%.40s\": not key=value; ignored", path, line);
        }
    }
}

int init_config_load_file(struct init_config *cfg, const char *path)
{
    char buf[INIT_FILE_MAX];
    int cut;
    ssize_t n = init_read_file(path, buf, sizeof(buf), &cut);

    if (n < 0) {
        return (int)n;
    }
    INIT_LOG_IF(cut > 0 && !cfg->quiet,
                "config: %s: longer than %d bytes; line %d (cut short) and all after it ignored",
                path, INIT_FILE_MAX - 1, cut);
    init_config_load_text(cfg, buf, path);
    return 0;
}

void init_config_load_cmdline(struct init_config *cfg, char *p)
{
    while (*p != '\0') {
        char *tok, *out, *eq, end;
        bool quoted = false;

        while (isspace((unsigned char)*p)) {
            p++;
        }
        for (tok = out = p; *p != '\0' && (quoted || !isspace((unsigned char)*p)); p++) {
            if (*p == '"') {
                quoted = !quoted;
            } else {
                *out++ = *p;
            }
        }
        end = *p; /* out may equal p: read it before terminating the token */
        *out = '\0';
        p += end != '\0';
        if ((eq = strchr(tok, '=')) != NULL) {
            *eq = '\0';
            (void)init_config_set(cfg, tok, eq + 1); /* reports by itself */
        } else if (strcmp(tok, "ro") == 0 || strcmp(tok, "rw") == 0) {
            cfg->root_ro = tok[1] == 'o';
        }
    }
}

long long init_meminfo_dirty(const char *text)
{
    static const char *const keys[] = { "\nDirty:", "\nWriteback:" }; /* never the first line */
    long long sum = 0;

    for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++) {
        const char *p = strstr(text, keys[i]);
        char *end;
        long long v;

        if (p == NULL) {
            return -1;
        }
        p += strlen(keys[i]);
        errno = 0;
        v = strtoll(p, &end, 10);
        if (end == p || errno != 0 || v < 0 || v > (1LL << 50)) {
            return -1;
        }
        sum += v;
    }
    return sum;
}

bool init_sync_wait(struct init_sync_watch *w, long long kib, int64_t now, int64_t max_ns)
{
    /* Only a new low counts: a sum that rises and falls back has written nothing new. */
    if (kib >= 0 && w->low_kib >= 0 && kib < w->low_kib) {
        w->progress_ns = now;
    }
    if (kib >= 0 && (w->low_kib < 0 || kib < w->low_kib)) {
        w->low_kib = kib;
    }
    return now - w->start_ns < max_ns && now - w->progress_ns < INIT_SYNC_STALL_NS;
}

/* The agent's verbs and the one argument each takes ("" for none), by enum init_ctl_verb. */
static const struct {
    const char *verb, *key;
} init_ctl_verbs[INIT_CTL_NVERBS] = {
    [INIT_CTL_READY] = { "ready", "" },          [INIT_CTL_CLIENTS] = { "clients", "n" },
    [INIT_CTL_EXTEND] = { "extend", "seconds" }, [INIT_CTL_SHUTDOWN] = { "shutdown", "action" },
    [INIT_CTL_LIFETIME] = { "lifetime?", "" },
};

int init_ctl_parse(char *buf, size_t len, const char **arg)
{
    char *save = NULL, *verb, *tok, *eq;
    int v = 0;

    *arg = NULL;
    len -= len > 0 && buf[len - 1] == '\n';
    buf[len] = '\0';
    for (size_t i = 0; i < len; i++) {
        if (buf[i] < 0x20 || buf[i] > 0x7e) {
            init_log("ctl: message with a control or non-ASCII byte; ignored");
            return -1;
        }
    }
    if ((verb = strtok_r(buf, " ", &save)) == NULL) {
        init_log("ctl: empty message; ignored");
        return -1;
    }
    while (v < INIT_CTL_NVERBS && strcmp(init_ctl_verbs[v].verb, verb) != 0) {
        v++;
    }
    if (v == INIT_CTL_NVERBS) {
        init_log("ctl: unknown verb \"%.40s\"; ignored", verb);
        return -1;
    }
    while ((tok = strtok_r(NULL, " ", &save)) != NULL) {
        if ((eq = strchr(tok, '=')) == NULL || eq == tok) {
            init_log("ctl: %.20s: bad argument \"%.40s\"; ignored", verb, tok);
            continue;
        }
        *eq = '\0';
        if (*arg == NULL && strcmp(tok, init_ctl_verbs[v].key) == 0) {
            *arg = eq + 1; /* the first one counts */
        }
    }
    return v;
}
