/* Unit tests: address parsing and connecting (unix, tcp, the fc hybrid-vsock handshake). */
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cmocka.h>

#include "sbx/client.h"

static void test_parse_good(void **state)
{
    struct sbx_addr a;
    struct sbx_err err;

    assert_int_equal(sbx_addr_parse("unix:/run/sbx.sock", &a, &err), 0);
    assert_int_equal(a.kind, SBX_ADDR_UNIX);
    assert_string_equal(a.path, "/run/sbx.sock");
    assert_int_equal(sbx_addr_parse("unix:rel/x:y.sock", &a, &err), 0);
    assert_string_equal(a.path, "rel/x:y.sock");
    assert_int_equal(sbx_addr_parse("unix:@abstract", &a, &err), 0);
    assert_string_equal(a.path, "@abstract");

    assert_int_equal(sbx_addr_parse("vsock:3:1024", &a, &err), 0);
    assert_int_equal(a.kind, SBX_ADDR_VSOCK);
    assert_int_equal(a.cid, 3);
    assert_int_equal(a.port, 1024);
    assert_int_equal(sbx_addr_parse("vsock:4294967295:4294967295", &a, &err), 0);
    assert_int_equal(a.cid, UINT32_MAX);

    /* The port follows the LAST colon, so paths may contain colons. */
    assert_int_equal(sbx_addr_parse("fc:/var/lib/fc:1/v.sock:1024", &a, &err), 0);
    assert_int_equal(a.kind, SBX_ADDR_FC);
    assert_string_equal(a.path, "/var/lib/fc:1/v.sock");
    assert_int_equal(a.port, 1024);

    assert_int_equal(sbx_addr_parse("tcp:localhost:8080", &a, &err), 0);
    assert_int_equal(a.kind, SBX_ADDR_TCP);
    assert_string_equal(a.host, "localhost");
    assert_int_equal(a.port, 8080);
    assert_int_equal(sbx_addr_parse("tcp:[::1]:65535", &a, &err), 0);
    assert_string_equal(a.host, "::1");
    assert_int_equal(a.port, 65535);
    assert_int_equal(sbx_addr_parse("tcp:10.0.0.1:1", &a, &err), 0);
    assert_string_equal(a.host, "10.0.0.1");
}

static void test_parse_bad(void **state)
{
    static const char *bad[] = {
        "",
        "/run/sbx.sock",
        "UNIX:/x",
        "unix:",
        "unix:@",
        "vsock:3",
        "vsock:3:",
        "vsock::1024",
        "vsock:x:1024",
        "vsock:3:1024:5",
        "vsock:-1:1024",
        "vsock:4294967296:1",
        "vsock:3: 1024",
        "fc:/x.sock",
        "fc::1024",
        "fc:/x.sock:",
        "fc:/x.sock:port",
        "tcp:host",
        "tcp::80",
        "tcp:host:0",
        "tcp:host:65536",
        "tcp:::1:80",
        "tcp:[::1:80",
        "tcp:[]:80",
        "serial:/dev/vport0p1",
    };
    char longpath[200];
    struct sbx_addr a;
    struct sbx_err err;

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        sbx_err_clear(&err);
        if (sbx_addr_parse(bad[i], &a, &err) != -1) {
            fail_msg("accepted bad address \"%s\"", bad[i]);
        }
        assert_string_equal(err.code, "BAD_PARAM");
        assert_string_equal(err.field, "addr");
    }
    /* Messages name the address. */
    assert_int_equal(sbx_addr_parse("vsock:x:1", &a, &err), -1);
    assert_non_null(strstr(err.msg, "vsock:x:1"));
    /* sun_path holds 107 bytes plus the NUL. */
    memcpy(longpath, "unix:/", 6);
    memset(longpath + 6, 'a', 106);
    longpath[112] = '\0';
    assert_int_equal(sbx_addr_parse(longpath, &a, &err), 0);
    longpath[112] = 'a';
    longpath[113] = '\0';
    assert_int_equal(sbx_addr_parse(longpath, &a, &err), -1);
    assert_null(sbx_client_connect("nonsense", 100, &err));
    assert_string_equal(err.code, "BAD_PARAM");
}

static void tmp_path(char *buf, size_t n, const char *what)
{
    (void)snprintf(buf, n, "/tmp/sbx-test-addr-%d-%s.sock", (int)getpid(), what);
    (void)unlink(buf);
}

static int listen_unix(const char *path, bool do_listen)
{
    struct sockaddr_un sun = { .sun_family = AF_UNIX };
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);

    assert_true(fd >= 0);
    if (path[0] == '@') {
        memcpy(sun.sun_path + 1, path + 1, strlen(path) - 1);
        assert_int_equal(bind(fd, (struct sockaddr *)&sun,
                              offsetof(struct sockaddr_un, sun_path) + strlen(path)),
                         0);
    } else {
        memcpy(sun.sun_path, path, strlen(path));
        assert_int_equal(bind(fd, (struct sockaddr *)&sun, sizeof(sun)), 0);
    }
    if (do_listen) {
        assert_int_equal(listen(fd, 8), 0);
    }
    return fd;
}

static void test_connect_errors(void **state)
{
    char path[108], addr[128];
    struct sbx_err err;
    int fd;

    tmp_path(path, sizeof(path), "missing");
    (void)snprintf(addr, sizeof(addr), "unix:%s", path);
    assert_null(sbx_client_connect(addr, 1000, &err));
    assert_string_equal(err.code, "ENOENT");
    assert_int_equal(err.sys_errno, ENOENT);
    assert_non_null(strstr(err.msg, addr));

    /* A socket file nobody listens on. */
    tmp_path(path, sizeof(path), "refused");
    (void)snprintf(addr, sizeof(addr), "unix:%s", path);
    fd = listen_unix(path, false);
    assert_null(sbx_client_connect(addr, 1000, &err));
    assert_string_equal(err.code, "ECONNREFUSED");
    assert_non_null(strstr(err.msg, addr));
    (void)close(fd);
    (void)unlink(path);

    /* The fc handshake needs the unix socket first. */
    tmp_path(path, sizeof(path), "fcmissing");
    (void)snprintf(addr, sizeof(addr), "fc:%s:1024", path);
    assert_null(sbx_client_connect(addr, 1000, &err));
    assert_string_equal(err.code, "ENOENT");
}

static void test_connect_unix_ok(void **state)
{
    char path[108], addr[128], abs[64];
    struct sbx_client *c;
    struct sbx_err err;
    int lfd, afd;

    tmp_path(path, sizeof(path), "ok");
    (void)snprintf(addr, sizeof(addr), "unix:%s", path);
    lfd = listen_unix(path, true);
    c = sbx_client_connect(addr, 1000, &err);
    assert_non_null(c);
    assert_string_equal(sbx_client_addr(c), addr);
    assert_true(sbx_client_fd(c) >= 0);
    assert_int_equal(sbx_client_version(c), 0);
    assert_int_equal(sbx_client_window(c), SBX_STREAM_WINDOW);
    afd = accept(lfd, NULL, NULL);
    assert_true(afd >= 0);
    sbx_client_close(c);
    (void)close(afd);
    (void)close(lfd);
    (void)unlink(path);

    (void)snprintf(abs, sizeof(abs), "@sbx-test-addr-%d", (int)getpid());
    (void)snprintf(addr, sizeof(addr), "unix:%s", abs);
    lfd = listen_unix(abs, true);
    c = sbx_client_connect(addr, 1000, &err);
    assert_non_null(c);
    sbx_client_close(c);
    (void)close(lfd);
}

static void test_connect_tcp(void **state)
{
    struct sockaddr_in sin = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    socklen_t sl = sizeof(sin);
    struct sbx_client *c;
    struct sbx_err err;
    char addr[64];
    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), one = 0;
    socklen_t ol = sizeof(one);

    assert_true(lfd >= 0);
    assert_int_equal(bind(lfd, (struct sockaddr *)&sin, sizeof(sin)), 0);
    assert_int_equal(listen(lfd, 4), 0);
    assert_int_equal(getsockname(lfd, (struct sockaddr *)&sin, &sl), 0);
    (void)snprintf(addr, sizeof(addr), "tcp:127.0.0.1:%u", ntohs(sin.sin_port));
    c = sbx_client_connect(addr, 1000, &err);
    assert_non_null(c);
    assert_int_equal(getsockopt(sbx_client_fd(c), IPPROTO_TCP, TCP_NODELAY, &one, &ol), 0);
    assert_int_equal(one, 1);
    sbx_client_close(c);
    (void)close(lfd);

    /* The listener is gone now: refused. */
    assert_null(sbx_client_connect(addr, 1000, &err));
    assert_string_equal(err.code, "ECONNREFUSED");
    assert_null(sbx_client_connect("tcp:no-such-host.invalid:80", 1000, &err));
    assert_true(strlen(err.code) > 0);
    assert_non_null(strstr(err.msg, "no-such-host.invalid"));
}

/* A fake VMM: accepts one connection, reads the CONNECT line, answers with @reply. */
struct fake_vmm {
    int lfd;
    const char *reply; /* NULL: close without answering; "" : stay silent until closed */
    char line[80];
    char extra[16]; /* bytes the client sent after the handshake */
};

static void *vmm_thread(void *arg)
{
    struct fake_vmm *v = arg;
    int fd = accept(v->lfd, NULL, NULL);
    size_t n = 0;

    if (fd < 0) {
        return NULL;
    }
    while (n < sizeof(v->line) - 1) {
        char ch;
        if (read(fd, &ch, 1) != 1) {
            break;
        }
        v->line[n++] = ch;
        if (ch == '\n') {
            break;
        }
    }
    if (v->reply == NULL) {
        (void)close(fd);
        return NULL;
    }
    if (v->reply[0] != '\0') {
        (void)!write(fd, v->reply, strlen(v->reply));
        if (v->reply[strlen(v->reply) - 1] != '\n') {
            (void)close(fd); /* a reply cut short by EOF */
            return NULL;
        }
    }
    /* Whatever comes next belongs to the protocol (or nothing, until the client closes). */
    (void)!read(fd, v->extra, sizeof(v->extra) - 1);
    (void)close(fd);
    return NULL;
}

static bool fc_try(const char *reply, int timeout_ms, struct sbx_err *err, struct fake_vmm *v)
{
    char path[108], addr[128];
    struct sbx_client *c;
    pthread_t t;

    tmp_path(path, sizeof(path), "fc");
    (void)snprintf(addr, sizeof(addr), "fc:%s:5252", path);
    memset(v, 0, sizeof(*v));
    v->lfd = listen_unix(path, true);
    v->reply = reply;
    assert_int_equal(pthread_create(&t, NULL, vmm_thread, v), 0);
    c = sbx_client_connect(addr, timeout_ms, err);
    if (c != NULL) {
        /* Prove the handshake left the stream at the first protocol byte. */
        assert_int_equal(write(sbx_client_fd(c), "X", 1), 1);
    }
    sbx_client_close(c);
    assert_int_equal(pthread_join(t, NULL), 0);
    (void)close(v->lfd);
    (void)unlink(path);
    return c != NULL;
}

static void test_fc_handshake(void **state)
{
    struct fake_vmm v;
    struct sbx_err err;

    assert_true(fc_try("OK 1073741824\n", 2000, &err, &v));
    assert_string_equal(v.line, "CONNECT 5252\n");
    assert_string_equal(v.extra, "X");

    assert_true(fc_try("OK 5\r\n", 2000, &err, &v));

    assert_false(fc_try("NO such port\n", 2000, &err, &v));
    assert_string_equal(err.code, "EPROTO");
    assert_non_null(strstr(err.msg, "NO such port"));
    assert_non_null(strstr(err.msg, "fc:"));

    assert_false(fc_try("OK", -1, &err, &v)); /* no newline, then EOF */
    assert_string_equal(err.code, "ECONNREFUSED");

    /* Refusals are retried until the deadline, then reported as refusals. */
    assert_false(fc_try(NULL, 300, &err, &v));
    assert_string_equal(err.code, "ECONNREFUSED");
    assert_non_null(strstr(err.msg, "5252"));
    assert_non_null(strstr(err.msg, "retried"));
    /* Without a deadline there is no retry. */
    assert_false(fc_try(NULL, -1, &err, &v));
    assert_string_equal(err.code, "ECONNREFUSED");
    assert_null(strstr(err.msg, "retried"));

    assert_false(fc_try("", 200, &err, &v));
    assert_string_equal(err.code, "ETIMEDOUT");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_good),     cmocka_unit_test(test_parse_bad),
        cmocka_unit_test(test_connect_errors), cmocka_unit_test(test_connect_unix_ok),
        cmocka_unit_test(test_connect_tcp),    cmocka_unit_test(test_fc_handshake),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
