/* test_init_config.c: unit tests of sbx-init's configuration parser (init/config.c). */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "init.h"

static void test_duration(void **state)
{
    static const struct {
        const char *in;
        int rc;
        int64_t seconds;
    } cases[] = {
        { "0", 0, 0 },          { "90", 0, 90 },          { "30s", 0, 30 },
        { "5m", 0, 300 },       { "1h", 0, 3600 },        { "87600h", 0, 315360000 },
        { "", -EINVAL, 0 },     { "s", -EINVAL, 0 },      { "-1", -EINVAL, 0 },
        { "1.5s", -EINVAL, 0 }, { "10ms", -EINVAL, 0 },   { "5d", -EINVAL, 0 },
        { " 5", -EINVAL, 0 },   { "87601h", -ERANGE, 0 }, { "99999999999999999999", -ERANGE, 0 },
    };

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        int64_t s = -1;

        assert_int_equal(init_parse_duration(cases[i].in, &s), cases[i].rc);
        if (cases[i].rc == 0) {
            assert_int_equal(s, cases[i].seconds);
        }
    }
}

static void test_defaults(void **state)
{
    struct init_config cfg = { .lifetime = INIT_LIFETIME_SESSION, .nenv = 3 };

    init_config_defaults(&cfg);
    assert_int_equal(cfg.lifetime, INIT_LIFETIME_NONE);
    assert_int_equal(cfg.session_grace_s, 10);
    assert_int_equal(cfg.shutdown_grace_s, 2);
    assert_int_equal(cfg.shutdown_sync_s, 60);
    assert_string_equal(cfg.listen, "vsock:1024,serial:agent");
    assert_string_equal(cfg.hostname, "sandbox");
    assert_false(cfg.debug_shell);
    assert_false(cfg.vsock_allow_local);
    assert_int_equal(cfg.rescue_after, 3);
    assert_false(cfg.has_ip);
    assert_false(cfg.has_gw);
    assert_string_equal(cfg.root, "");
    assert_false(cfg.squashfs);
    assert_false(cfg.overlay);
    assert_true(cfg.wl_memory_max == INIT_LIMIT_AUTO && cfg.wl_pids_max == INIT_LIMIT_AUTO);
    assert_true(cfg.wl_cpu_max == INIT_LIMIT_NONE);
    assert_int_equal(cfg.nenv, 4);
    assert_string_equal(cfg.env[0],
                        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    assert_string_equal(cfg.env[1], "HOME=/root");
    assert_string_equal(cfg.env[2], "LANG=C.UTF-8");
    assert_string_equal(cfg.env[3], "TERM=vt220");
}

static void test_every_key(void **state)
{
    struct init_config cfg = { 0 };

    init_config_defaults(&cfg);
    assert_int_equal(init_config_set(&cfg, "sbx.lifetime", "session"), 0);
    assert_int_equal(cfg.lifetime, INIT_LIFETIME_SESSION);
    assert_int_equal(init_config_set(&cfg, "sbx.lifetime", "5m"), 0);
    assert_int_equal(cfg.lifetime, INIT_LIFETIME_DURATION);
    assert_int_equal(cfg.lifetime_s, 300);
    assert_int_equal(init_config_set(&cfg, "sbx.session_grace", "0"), 0);
    assert_int_equal(cfg.session_grace_s, 0);
    assert_int_equal(init_config_set(&cfg, "sbx.shutdown_grace", "1m"), 0);
    assert_int_equal(cfg.shutdown_grace_s, 60);
    assert_int_equal(init_config_set(&cfg, "sbx.shutdown_sync", "1h"), 0);
    assert_int_equal(cfg.shutdown_sync_s, 3600);
    assert_int_equal(init_config_set(&cfg, "sbx.shutdown_sync", "0"), 0);
    assert_int_equal(cfg.shutdown_sync_s, 0);
    assert_int_equal(init_config_set(&cfg, "sbx.listen", "unix:/run/a,vsock:9"), 0);
    assert_string_equal(cfg.listen, "unix:/run/a,vsock:9");
    assert_int_equal(init_config_set(&cfg, "sbx.hostname", "web-1.example"), 0);
    assert_string_equal(cfg.hostname, "web-1.example");
    assert_int_equal(init_config_set(&cfg, "sbx.debug", "shell"), 0);
    assert_true(cfg.debug_shell);
    assert_int_equal(init_config_set(&cfg, "sbx.ip", "192.168.1.5/16"), 0);
    assert_true(cfg.has_ip);
    assert_int_equal(cfg.ip_prefix, 16);
    assert_int_equal(cfg.ip.s_addr, htonl(0xc0a80105));
    assert_int_equal(init_config_set(&cfg, "sbx.gw", "192.168.0.1"), 0);
    assert_true(cfg.has_gw);
    assert_int_equal(cfg.gw.s_addr, htonl(0xc0a80001));
    assert_int_equal(init_config_set(&cfg, "sbx.vsock_allow_local", "1"), 0);
    assert_true(cfg.vsock_allow_local);
    assert_int_equal(init_config_set(&cfg, "sbx.rescue_after", "0"), 0);
    assert_int_equal(cfg.rescue_after, 0);
    assert_int_equal(init_config_set(&cfg, "sbx.overlay", "tmpfs"), 0);
    assert_true(cfg.overlay);
    assert_int_equal(cfg.seccomp, SBX_FILTER_STRICT); /* the default */
    assert_int_equal(init_config_set(&cfg, "sbx.seccomp", "log"), 0);
    assert_int_equal(cfg.seccomp, SBX_FILTER_LOG);
    assert_int_equal(init_config_set(&cfg, "sbx.seccomp", "off"), 0);
    assert_int_equal(cfg.seccomp, SBX_FILTER_OFF);
    assert_int_equal(init_config_set(&cfg, "sbx.seccomp", "Strict"), -EINVAL);
    assert_int_equal(cfg.seccomp, SBX_FILTER_STRICT);
    assert_string_equal(cfg.replay, ""); /* the agent's default */
    assert_int_equal(init_config_set(&cfg, "sbx.replay", "4M,256M"), 0);
    assert_string_equal(cfg.replay, "4M,256M");
    assert_int_equal(init_config_set(&cfg, "sbx.replay", "2m,128m"), 0); /* as the agent takes it */
    assert_string_equal(cfg.replay, "2m,128m");
    assert_int_equal(init_config_set(&cfg, "sbx.replay", "64K"), 0);
    assert_string_equal(cfg.replay, "64K");
    assert_int_equal(init_config_set(&cfg, "sbx.replay", "1K"), -EINVAL);
    assert_int_equal(init_config_set(&cfg, "sbx.replay", "1M,64K"), -EINVAL);
    assert_int_equal(init_config_set(&cfg, "sbx.replay", "1M,"), -EINVAL);
    assert_int_equal(init_config_set(&cfg, "sbx.replay", "1Q"), -EINVAL);
    /* A size that wrapped when shifted by its suffix used to pass as 1 GiB. */
    assert_int_equal(init_config_set(&cfg, "sbx.replay", "17179869185G"), -EINVAL);
    assert_int_equal(init_config_set(&cfg, "sbx.replay", "1M,17179869185G"), -EINVAL);
    assert_string_equal(cfg.replay, "");
    assert_int_equal(init_config_set(&cfg, "sbx.replay", "default"), 0);
    assert_string_equal(cfg.replay, "");
    assert_int_equal(init_config_set(&cfg, "sbx.workload.memory_max", "512M"), 0);
    assert_true(cfg.wl_memory_max == 512ull << 20);
    assert_int_equal(init_config_set(&cfg, "sbx.workload.memory_max", "2G"), 0);
    assert_true(cfg.wl_memory_max == 2ull << 30);
    assert_int_equal(init_config_set(&cfg, "sbx.workload.memory_max", "16777216"), 0);
    assert_true(cfg.wl_memory_max == 16ull << 20);
    assert_int_equal(init_config_set(&cfg, "sbx.workload.memory_max", "max"), 0);
    assert_true(cfg.wl_memory_max == INIT_LIMIT_NONE);
    assert_int_equal(init_config_set(&cfg, "sbx.workload.pids_max", "500"), 0);
    assert_true(cfg.wl_pids_max == 500);
    assert_int_equal(init_config_set(&cfg, "sbx.workload.pids_max", "auto"), 0);
    assert_true(cfg.wl_pids_max == INIT_LIMIT_AUTO);
    assert_int_equal(init_config_set(&cfg, "sbx.workload.cpu_max", "150"), 0);
    assert_true(cfg.wl_cpu_max == 150);
    assert_int_equal(init_config_set(&cfg, "root", "/dev/vda"), 0);
    assert_string_equal(cfg.root, "/dev/vda");
    assert_int_equal(init_config_set(&cfg, "rootfstype", "squashfs"), 0);
    assert_true(cfg.squashfs);
    assert_int_equal(init_config_set(&cfg, "sbx.env.A_1", "x=y z"), 0);
    assert_string_equal(cfg.env[4], "A_1=x=y z");
    /* Keys of the kernel's own are none of ours. */
    assert_int_equal(init_config_set(&cfg, "console", "ttyS0"), 0);
}

static void test_bad_value_resets_default(void **state)
{
    struct init_config cfg = { .quiet = true };

    init_config_defaults(&cfg);
    assert_int_equal(init_config_set(&cfg, "sbx.lifetime", "5m"), 0);
    assert_int_equal(init_config_set(&cfg, "sbx.lifetime", "forever"), -EINVAL);
    assert_int_equal(cfg.lifetime, INIT_LIFETIME_NONE);
    assert_int_equal(init_config_set(&cfg, "sbx.hostname", "ok"), 0);
    assert_int_equal(init_config_set(&cfg, "sbx.hostname", "not ok"), -EINVAL);
    assert_string_equal(cfg.hostname, "sandbox");
    assert_int_equal(init_config_set(&cfg, "sbx.ip", "10.0.0.2/8"), 0);
    assert_int_equal(init_config_set(&cfg, "sbx.ip", "10.0.0.2/0"), -EINVAL);
    assert_false(cfg.has_ip);
    assert_int_equal(init_config_set(&cfg, "sbx.listen", "vsock:1,,vsock:2"), -EINVAL);
    assert_string_equal(cfg.listen, "vsock:1024,serial:agent");
    assert_int_equal(init_config_set(&cfg, "sbx.listen", ":x"), -EINVAL);
    assert_int_equal(init_config_set(&cfg, "sbx.listen", "vsock:"), -EINVAL);
    assert_int_equal(init_config_set(&cfg, "sbx.listen", "unix:/a b"), -EINVAL);
    assert_int_equal(init_config_set(&cfg, "sbx.listen", "a:1,b:2,c:3,d:4,e:5,f:6,g:7,h:8"), 0);
    assert_int_equal(init_config_set(&cfg, "sbx.unknown", "1"), -ENOENT);
    assert_int_equal(init_config_set(&cfg, "sbx.debug", "Shell"), -EINVAL);
    assert_int_equal(init_config_set(&cfg, "sbx.rescue_after", "3x"), -EINVAL);
    assert_int_equal(init_config_set(&cfg, "sbx.rescue_after", ""), -EINVAL);
    assert_int_equal(cfg.rescue_after, 3);
    assert_int_equal(init_config_set(&cfg, "sbx.shutdown_sync", "3601"), -EINVAL);
    assert_int_equal(cfg.shutdown_sync_s, 60);
    assert_int_equal(init_config_set(&cfg, "sbx.shutdown_sync", "5s"), 0);
    assert_int_equal(init_config_set(&cfg, "sbx.shutdown_sync", "1.5m"), -EINVAL);
    assert_int_equal(cfg.shutdown_sync_s, 60);
    /* sbx.workload.*: too small, too large, not a number, a unit where none fits, no "auto"
     * for cpu_max; each resets the default. */
    static const char *const bad_limits[][2] = {
        { "sbx.workload.memory_max", "15M" },   { "sbx.workload.memory_max", "1025T" },
        { "sbx.workload.memory_max", "2048P" }, { "sbx.workload.memory_max", "M" },
        { "sbx.workload.memory_max", "1.5G" },  { "sbx.workload.memory_max", "" },
        { "sbx.workload.memory_max", "-1G" },   { "sbx.workload.memory_max", "1048577G" },
        { "sbx.workload.pids_max", "15" },      { "sbx.workload.pids_max", "4194305" },
        { "sbx.workload.pids_max", "10K" },     { "sbx.workload.cpu_max", "0" },
        { "sbx.workload.cpu_max", "auto" },     { "sbx.workload.cpu_max", "100001" },
    };
    for (size_t i = 0; i < sizeof(bad_limits) / sizeof(bad_limits[0]); i++) {
        assert_int_equal(init_config_set(&cfg, bad_limits[i][0], "max"), 0);
        if (init_config_set(&cfg, bad_limits[i][0], bad_limits[i][1]) != -EINVAL) {
            fail_msg("%s=%s accepted", bad_limits[i][0], bad_limits[i][1]);
        }
    }
    assert_true(cfg.wl_memory_max == INIT_LIMIT_AUTO && cfg.wl_pids_max == INIT_LIMIT_AUTO);
    assert_true(cfg.wl_cpu_max == INIT_LIMIT_NONE);
}

static void test_env(void **state)
{
    struct init_config cfg = { .quiet = true };
    char name[32];

    init_config_defaults(&cfg);
    assert_int_equal(init_config_set(&cfg, "sbx.env.A", "1"), 0);
    assert_int_equal(init_config_set(&cfg, "sbx.env.B", ""), 0);
    assert_int_equal(init_config_set(&cfg, "sbx.env.A", "2"), 0); /* replaces, keeps order */
    assert_int_equal(init_config_set(&cfg, "sbx.env.HOME", "/home/x"), 0);
    assert_int_equal(cfg.nenv, 6);
    assert_string_equal(cfg.env[1], "HOME=/home/x");
    assert_string_equal(cfg.env[4], "A=2");
    assert_string_equal(cfg.env[5], "B=");
    assert_int_equal(init_config_set(&cfg, "sbx.env.AB", "3"), 0); /* a prefix is not a match */
    assert_int_equal(cfg.nenv, 7);
    assert_int_equal(init_config_set(&cfg, "sbx.env.9", "x"), -EINVAL);
    assert_int_equal(init_config_set(&cfg, "sbx.env.", "x"), -EINVAL);
    assert_int_equal(init_config_set(&cfg, "sbx.env.A.B", "x"), -EINVAL);
    for (int i = cfg.nenv; i < INIT_ENV_MAX; i++) {
        snprintf(name, sizeof(name), "sbx.env.V%d", i);
        assert_int_equal(init_config_set(&cfg, name, "v"), 0);
    }
    assert_int_equal(init_config_set(&cfg, "sbx.env.ONEMORE", "v"), -EINVAL);
    assert_int_equal(init_config_set(&cfg, "sbx.env.A", "still replaceable"), 0);
    assert_int_equal(cfg.nenv, INIT_ENV_MAX);
}

static void test_cmdline(void **state)
{
    struct init_config cfg = { .quiet = true };
    char line[] = "BOOT_IMAGE=/vmlinuz console=ttyS0 ro sbx.hostname=a "
                  "sbx.env.MSG=\"hello   world\" \"sbx.env.Q=a b\" sbx.lifetime=30s "
                  "quiet -- sbx.hostname=b\n";

    init_config_defaults(&cfg);
    init_config_load_cmdline(&cfg, line);
    assert_true(cfg.root_ro);
    assert_string_equal(cfg.hostname, "b"); /* later wins, even after "--" */
    assert_int_equal(cfg.nenv, 6);
    assert_string_equal(cfg.env[4], "MSG=hello   world");
    assert_string_equal(cfg.env[5], "Q=a b");
    assert_int_equal(cfg.lifetime, INIT_LIFETIME_DURATION);
    assert_int_equal(cfg.lifetime_s, 30);

    char empty[] = "   ";
    init_config_load_cmdline(&cfg, empty);
    char unterminated[] = "sbx.env.X=\"abc def";
    init_config_load_cmdline(&cfg, unterminated);
    assert_string_equal(cfg.env[6], "X=abc def");
}

/* The control channel's parser (init_ctl_parse, what init_ctl_read acts on). */
static void test_ctl_parse(void **state)
{
    char ready[] = "ready\n", ext[] = "extend x=1 =2 seconds=60 seconds=5", bad[] = "ready\x01";
    char unknown[] = "reboot", empty[] = "  ", eq[] = "clients n=a=b", none[] = "shutdown";
    const char *arg = "x";

    assert_int_equal(init_ctl_parse(ready, strlen(ready), &arg), INIT_CTL_READY);
    assert_null(arg);
    assert_int_equal(init_ctl_parse(ext, strlen(ext), &arg), INIT_CTL_EXTEND);
    assert_string_equal(arg, "60"); /* the first one counts */
    assert_int_equal(init_ctl_parse(eq, strlen(eq), &arg), INIT_CTL_CLIENTS);
    assert_string_equal(arg, "a=b");
    assert_int_equal(init_ctl_parse(none, strlen(none), &arg), INIT_CTL_SHUTDOWN);
    assert_null(arg);
    assert_int_equal(init_ctl_parse(bad, strlen(bad), &arg), -1);
    assert_int_equal(init_ctl_parse(unknown, strlen(unknown), &arg), -1);
    assert_int_equal(init_ctl_parse(empty, strlen(empty), &arg), -1);
}

static void test_file_then_cmdline(void **state)
{
    struct init_config cfg = { .quiet = true };
    char path[] = "/tmp/sbx-init-config-XXXXXX";
    char line[] = "sbx.hostname=fromcmdline";
    int fd = mkstemp(path);
    static const char text[] = "# a comment\n\n  sbx.hostname = fromfile  \n"
                               "sbx.session_grace=3s\nnot a pair\nsbx.env.X=1 # not a comment\n";

    assert_true(fd >= 0);
    assert_int_equal(write(fd, text, sizeof(text) - 1), (ssize_t)sizeof(text) - 1);
    close(fd);
    init_config_defaults(&cfg);
    assert_int_equal(init_config_load_file(&cfg, path), 0);
    assert_string_equal(cfg.hostname, "fromfile");
    assert_int_equal(cfg.session_grace_s, 3);
    assert_string_equal(cfg.env[4], "X=1 # not a comment");
    init_config_load_cmdline(&cfg, line);
    assert_string_equal(cfg.hostname, "fromcmdline");
    assert_int_equal(cfg.session_grace_s, 3);
    unlink(path);
    assert_int_equal(init_config_load_file(&cfg, path), -ENOENT);
}

static void test_meminfo(void **state)
{
    static const char text[] = "MemTotal:        2014556 kB\n"
                               "Dirty:             57072 kB\n"
                               "Writeback:          1024 kB\n"
                               "AnonPages:        100000 kB\n"
                               "WritebackTmp:          7 kB\n";

    assert_int_equal(init_meminfo_dirty(text), 58096);
    assert_int_equal(init_meminfo_dirty("MemTotal: 1 kB\nDirty: 5 kB\n"), -1);
    assert_int_equal(init_meminfo_dirty("MemTotal: 1 kB\nWritebackTmp: 5 kB\nDirty: 1 kB\n"), -1);
    assert_int_equal(init_meminfo_dirty("MemTotal: 1 kB\nDirty: x kB\nWriteback: 0 kB\n"), -1);
    assert_int_equal(init_meminfo_dirty("MemTotal: 1 kB\nDirty: 3\nWriteback: 4\n"), 7);
    assert_int_equal(init_meminfo_dirty(""), -1);
}

/* When shutdown stops waiting for sync and unmount: INIT_SYNC_STALL_NS (10 s) without a new low of
 * Dirty + Writeback, or the sbx.shutdown_sync limit, whichever comes first. */
static void test_sync_wait(void **state)
{
    const int64_t s = INIT_NSEC, max = 60 * s;
    struct init_sync_watch w = { 100 * s, 100 * s, 50000 };

    /* Stuck: nothing falls; given up at 10 s, as before sbx.shutdown_sync. */
    for (int64_t t = 100 * s; t < 110 * s; t += s / 2) {
        assert_true(init_sync_wait(&w, 50000, t, max));
    }
    assert_false(init_sync_wait(&w, 50000, 110 * s, max));
    /* Unknown (no /proc/meminfo): the same. */
    w = (struct init_sync_watch){ 100 * s, 100 * s, -1 };
    assert_true(init_sync_wait(&w, -1, 109 * s, max));
    assert_false(init_sync_wait(&w, -1, 110 * s, max));
    /* Slow but writing: waited for past 10 s while it falls, until the limit. */
    w = (struct init_sync_watch){ 100 * s, 100 * s, 50000 };
    for (int64_t t = 100 * s, kib = 50000; t < 160 * s; t += s / 2, kib -= 100) {
        assert_true(init_sync_wait(&w, kib, t, max));
    }
    assert_false(init_sync_wait(&w, 1, 160 * s, max));
    /* It stops falling: 10 s after the last new low. A rise and a fall back is no new low. */
    w = (struct init_sync_watch){ 100 * s, 100 * s, 50000 };
    assert_true(init_sync_wait(&w, 40000, 105 * s, max));
    assert_true(init_sync_wait(&w, 45000, 110 * s, max));
    assert_true(init_sync_wait(&w, 40000, 114 * s, max));
    assert_false(init_sync_wait(&w, 40000, 115 * s, max));
    assert_int_equal(w.low_kib, 40000);
    /* The first reading after an unknown one is where it starts, not a fall. */
    w = (struct init_sync_watch){ 100 * s, 100 * s, -1 };
    assert_true(init_sync_wait(&w, 40000, 105 * s, max));
    assert_false(init_sync_wait(&w, -1, 110 * s, max));
    /* A limit under 10 s (0: do not wait) comes first. */
    w = (struct init_sync_watch){ 100 * s, 100 * s, 50000 };
    assert_false(init_sync_wait(&w, 40000, 100 * s, 0));
    assert_false(init_sync_wait(&w, 30000, 105 * s, 5 * s));
}

/* Writes `text` (len bytes) to a new temporary file, named in `path` (28 bytes). */
static void write_temp(char *path, const char *text, size_t len)
{
    int fd = mkstemp(strcpy(path, "/tmp/sbx-init-config-XXXXXX"));

    assert_true(fd >= 0);
    assert_int_equal(write(fd, text, len), (ssize_t)len);
    close(fd);
}

/* A file longer than init reads (INIT_FILE_MAX - 1 bytes) is read up to its last whole line: the
 * line across the limit was applied cut short ("sbx.lifetime=3600" as 36 s). */
static void test_file_too_long(void **state)
{
    struct init_config cfg = { .quiet = true };
    static char text[INIT_FILE_MAX + 64];
    const char head[] = "sbx.hostname=first\n#",
               tail[] = "\nsbx.lifetime=3600\nsbx.hostname=late\n";
    size_t pad = INIT_FILE_MAX - 1 - (sizeof(head) - 1) - strlen("\nsbx.lifetime=36");
    char path[28], buf[INIT_FILE_MAX];
    int cut = -1;

    memcpy(text, head, sizeof(head) - 1);
    memset(text + sizeof(head) - 1, '-', pad);
    memcpy(text + sizeof(head) - 1 + pad, tail, sizeof(tail));
    write_temp(path, text, strlen(text));
    init_config_defaults(&cfg);
    assert_int_equal(init_config_load_file(&cfg, path), 0);
    assert_int_equal(cfg.lifetime, INIT_LIFETIME_NONE);
    assert_string_equal(cfg.hostname, "first");
    assert_int_equal(init_read_file(path, buf, sizeof(buf), &cut), (ssize_t)(sizeof(head) + pad));
    assert_int_equal(cut, 3);
    assert_string_equal(buf + strlen(buf) - 2, "-\n");
    /* Without `cut` (the command line): what fits, as before. */
    assert_int_equal(init_read_file(path, buf, sizeof(buf), NULL), INIT_FILE_MAX - 1);
    unlink(path);

    /* Exactly INIT_FILE_MAX - 1 bytes, no newline at the end: all of it, the last line too. */
    memset(text, '#', INIT_FILE_MAX - 1 - strlen("\nsbx.hostname=last"));
    strcpy(text + INIT_FILE_MAX - 1 - strlen("\nsbx.hostname=last"), "\nsbx.hostname=last");
    write_temp(path, text, INIT_FILE_MAX - 1);
    assert_int_equal(init_config_load_file(&cfg, path), 0);
    assert_string_equal(cfg.hostname, "last");
    assert_int_equal(init_read_file(path, buf, sizeof(buf), &cut), INIT_FILE_MAX - 1);
    assert_int_equal(cut, 0);
    unlink(path);

    /* One line longer than all of it: nothing applied. */
    memcpy(text, "sbx.hostname=", 13);
    memset(text + 13, 'h', INIT_FILE_MAX);
    write_temp(path, text, INIT_FILE_MAX + 13);
    assert_int_equal(init_read_file(path, buf, sizeof(buf), &cut), 0);
    assert_int_equal(cut, 1);
    assert_string_equal(buf, "");
    unlink(path);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_duration),      cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_every_key),     cmocka_unit_test(test_bad_value_resets_default),
        cmocka_unit_test(test_env),           cmocka_unit_test(test_cmdline),
        cmocka_unit_test(test_ctl_parse),     cmocka_unit_test(test_file_then_cmdline),
        cmocka_unit_test(test_file_too_long), cmocka_unit_test(test_meminfo),
        cmocka_unit_test(test_sync_wait),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
