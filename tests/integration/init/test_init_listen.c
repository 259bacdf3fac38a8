/* test_init_listen.c: unit tests of the listen addresses sbx-init and the agent share
 * (init/listen.c): parsing, and the checks the agent makes on a socket it is handed. */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "listen.h"

static void test_parse(void **state)
{
    static const struct {
        const char *in;
        const char *why; /* NULL: valid */
        enum sbx_listen_kind kind;
        int domain;
    } cases[] = {
        { "unix:/run/a.sock", NULL, SBX_LISTEN_UNIX, AF_UNIX },
        { "tcp:127.0.0.1:7000", NULL, SBX_LISTEN_TCP, AF_INET },
        { "tcp:[::1]:7000", NULL, SBX_LISTEN_TCP, AF_INET6 },
        { "tcp:::1:65535", NULL, SBX_LISTEN_TCP, AF_INET6 },
        { "vsock:1024", NULL, SBX_LISTEN_VSOCK, AF_VSOCK },
        { "vsock:4294967294", NULL, SBX_LISTEN_VSOCK, AF_VSOCK },
        { "serial:agent", NULL, SBX_LISTEN_SERIAL, 0 },
        { "unix:", "expected unix:PATH", 0, 0 },
        { "tcp:127.0.0.1", "expected tcp:HOST:PORT", 0, 0 },
        { "tcp:7000", "expected tcp:HOST:PORT", 0, 0 },
        { "tcp:127.0.0.1:0", "bad port", 0, 0 },
        { "tcp:127.0.0.1:65536", "bad port", 0, 0 },
        { "tcp:127.0.0.1:+80", "bad port", 0, 0 },
        { "tcp:localhost:80", "HOST must be a numeric IPv4 or IPv6 address", 0, 0 },
        { "vsock:", "expected vsock:PORT", 0, 0 },
        { "vsock:-1", "expected vsock:PORT", 0, 0 },
        { "vsock:4294967295", "expected vsock:PORT", 0, 0 }, /* VMADDR_PORT_ANY */
        { "vsock:12x", "expected vsock:PORT", 0, 0 },
        { "serial:", "expected serial:NAME or serial:/dev/PATH", 0, 0 },
        { "udp:1.2.3.4:5", "unknown address (unix:PATH, vsock:PORT, serial:NAME, tcp:HOST:PORT)", 0,
          0 },
    };

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct sbx_listen_addr la;
        const char *why = sbx_listen_parse(cases[i].in, &la);

        if (cases[i].why == NULL) {
            assert_null(why);
            assert_int_equal(la.kind, cases[i].kind);
            assert_int_equal(la.domain, cases[i].domain);
        } else {
            assert_non_null(why);
            assert_string_equal(why, cases[i].why);
        }
    }
}

static void test_unix_path_limit(void **state)
{
    struct sbx_listen_addr la;
    char addr[sizeof(la.u.un.sun_path) + 8] = "unix:/";

    memset(addr + 6, 'a', sizeof(la.u.un.sun_path) - 2); /* path: sun_path - 1 bytes */
    assert_null(sbx_listen_parse(addr, &la));
    addr[strlen(addr)] = 'a';
    assert_string_equal(sbx_listen_parse(addr, &la), "socket path too long");
}

/* The agent's check of a handed socket: only one listening on the address named passes. */
static void test_open_and_check(void **state)
{
    char dir[] = "/tmp/sbx-listen-XXXXXX", addr[64], other[64];
    struct sbx_listen_addr la, la_other, la_vsock;
    struct stat st;
    int fd, pair[2], file;

    assert_non_null(mkdtemp(dir));
    snprintf(addr, sizeof(addr), "unix:%s/a.sock", dir);
    snprintf(other, sizeof(other), "unix:%s/b.sock", dir);
    assert_null(sbx_listen_parse(addr, &la));
    assert_null(sbx_listen_parse(other, &la_other));
    assert_null(sbx_listen_parse("vsock:1024", &la_vsock));

    fd = sbx_listen_open(&la);
    assert_true(fd >= 0);
    assert_true(fcntl(fd, F_GETFD) & FD_CLOEXEC);
    assert_true(fcntl(fd, F_GETFL) & O_NONBLOCK);
    assert_int_equal(stat(la.u.un.sun_path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    assert_int_equal(sbx_listen_check(fd, &la), 0);
    assert_int_equal(sbx_listen_check(fd, &la_other), -EADDRNOTAVAIL);
    assert_int_equal(sbx_listen_check(fd, &la_vsock), -EINVAL);
    close(fd);
    /* A stale socket at the path is replaced. */
    fd = sbx_listen_open(&la);
    assert_true(fd >= 0);

    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, pair), 0);
    assert_int_equal(sbx_listen_check(pair[0], &la), -EINVAL); /* not listening */
    file = open("/dev/null", O_RDONLY | O_CLOEXEC);
    assert_int_equal(sbx_listen_check(file, &la), -ENOTSOCK);
    assert_int_equal(sbx_listen_check(999, &la), -EBADF);

    close(file);
    close(pair[0]);
    close(pair[1]);
    close(fd);
    unlink(la.u.un.sun_path);
    rmdir(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse),
        cmocka_unit_test(test_unix_path_limit),
        cmocka_unit_test(test_open_and_check),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
