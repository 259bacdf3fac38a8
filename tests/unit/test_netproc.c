/* Unit tests for agent/netproc.c: the /proc/net table parser and the socket-owner scan. */
#include <limits.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "netproc.h"

static const struct agent_net_table *T_TCP = &agent_net_tables[0];
static const struct agent_net_table *T_TCP6 = &agent_net_tables[1];
static const struct agent_net_table *T_UDP = &agent_net_tables[2];
static const struct agent_net_table *T_UDP6 = &agent_net_tables[3];

/* A table line as the kernel prints it (net/ipv4/tcp_ipv4.c get_tcp4_sock and friends). */
static void line4(char *buf, size_t n, const char *addr, unsigned port, unsigned st,
                  unsigned long long inode)
{
    snprintf(buf, n,
             "   0: %s:%04X 00000000:0000 %02X 00000000:00000000 00:00000000 00000000     0     "
             "   0 %llu 1 0000000000000000 100 0 0 10 0\n",
             addr, port, st, inode);
}

static void line6(char *buf, size_t n, const char *addr, unsigned port, unsigned st,
                  unsigned long long inode)
{
    snprintf(buf, n,
             "   1: %s:%04X 00000000000000000000000000000000:0000 %02X 00000000:00000000 "
             "00:00000000 00000000     0        0 %llu 1 0000000000000000 100 0 0 10 0\n",
             addr, port, st, inode);
}

/* The hex the kernel prints for the IPv6 address @text on this machine: each 32-bit word of the
 * address as it lies in memory, printed as a host-order number. */
static void kernel_hex6(const char *text, char out[33])
{
    uint8_t raw[16];

    assert_int_equal(inet_pton(AF_INET6, text, raw), 1);
    for (int i = 0; i < 4; i++) {
        uint32_t w;
        memcpy(&w, raw + 4 * i, 4);
        snprintf(out + 8 * i, 9, "%08X", w);
    }
}

static void test_ipv4_listen(void **state)
{
    struct agent_net_sock e;
    char l[256];

    (void)state;
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    line4(l, sizeof(l), "0100007F", 0x1F90, 0x0A, 12345);
    assert_true(agent_net_parse_line(T_TCP, l, &e));
    assert_string_equal(e.addr, "127.0.0.1");
#endif
    line4(l, sizeof(l), "00000000", 22, 0x0A, 99);
    assert_true(agent_net_parse_line(T_TCP, l, &e));
    assert_string_equal(e.addr, "0.0.0.0");
    assert_int_equal(e.port, 22);
    assert_int_equal(e.inode, 99);
    assert_int_equal(e.pid, 0);
    assert_int_equal(e.table, 0);
    /* other states are not listeners: ESTABLISHED, TIME_WAIT, CLOSE */
    for (unsigned st = 1; st <= 0x0C; st++) {
        line4(l, sizeof(l), "00000000", 22, st, 99);
        assert_int_equal(agent_net_parse_line(T_TCP, l, &e), st == 0x0A);
    }
}

static void test_ipv6_word_order(void **state)
{
    static const char *addrs[] = {
        "::1", "::", "2001:db8::1", "fe80::1:2:3:4", "::ffff:127.0.0.1", "1:2:3:4:5:6:7:8"
    };
    struct agent_net_sock e;
    char hex[33], l[256];

    (void)state;
    for (size_t i = 0; i < sizeof(addrs) / sizeof(addrs[0]); i++) {
        kernel_hex6(addrs[i], hex);
        line6(l, sizeof(l), hex, 443, 0x0A, 7);
        assert_true(agent_net_parse_line(T_TCP6, l, &e));
        assert_string_equal(e.addr, addrs[i]);
        assert_int_equal(e.port, 443);
        assert_int_equal(e.table, 1);
    }
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    /* As an x86-64 or arm64 kernel prints them (independent of kernel_hex6). */
    line6(l, sizeof(l), "00000000000000000000000001000000", 80, 0x0A, 7);
    assert_true(agent_net_parse_line(T_TCP6, l, &e));
    assert_string_equal(e.addr, "::1");
    line6(l, sizeof(l), "B80D0120000000000000000001000000", 80, 0x0A, 7);
    assert_true(agent_net_parse_line(T_TCP6, l, &e));
    assert_string_equal(e.addr, "2001:db8::1");
#endif
    /* an IPv4-sized address in the IPv6 table and the other way round */
    line6(l, sizeof(l), "0100007F", 80, 0x0A, 7);
    assert_false(agent_net_parse_line(T_TCP6, l, &e));
    line4(l, sizeof(l), "00000000000000000000000001000000", 80, 0x0A, 7);
    assert_false(agent_net_parse_line(T_TCP, l, &e));
}

static void test_udp_bound(void **state)
{
    struct agent_net_sock e;
    char hex[33], l[256];

    (void)state;
    line4(l, sizeof(l), "00000000", 53, 0x07, 5);
    assert_true(agent_net_parse_line(T_UDP, l, &e));
    assert_int_equal(e.port, 53);
    assert_int_equal(e.table, 2);
    line4(l, sizeof(l), "00000000", 0, 0x07, 5); /* no local port: not bound */
    assert_false(agent_net_parse_line(T_UDP, l, &e));
    line4(l, sizeof(l), "00000000", 53, 0x01, 5); /* connected */
    assert_false(agent_net_parse_line(T_UDP, l, &e));
    line4(l, sizeof(l), "00000000", 53, 0x0A, 5); /* LISTEN means nothing for UDP */
    assert_false(agent_net_parse_line(T_UDP, l, &e));
    kernel_hex6("::1", hex);
    line6(l, sizeof(l), hex, 5353, 0x07, 5);
    assert_true(agent_net_parse_line(T_UDP6, l, &e));
    assert_string_equal(e.addr, "::1");
}

static void test_malformed_lines(void **state)
{
    static const char *bad[] = {
        "",
        "\n",
        "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  "
        "timeout inode\n",
        "   0: 0100007F:1F90\n",
        "   0: 0100007F:1F90 00000000:0000 0A\n",
        "   0: 0100007G:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000 0 0 1\n",
        "   0: 100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000 0 0 1\n",
        "   0: 0100007F0:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000 0 0 1\n",
        "   0: 0100007F:1F9000 00000000:0000 0A 00000000:00000000 00:00000000 00000000 0 0 1\n",
        "   0: 0100007F:1F90 0000:0000 0A 00000000:00000000 00:00000000 00000000 0 0 1\n",
        "   0: 0100007F 1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000 0 0 1\n",
        "   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000 0 0 x\n",
        "x: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000 0 0 1\n",
        "\x01\xff\xfe garbage \x80\n",
    };
    struct agent_net_sock e;

    (void)state;
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        assert_false(agent_net_parse_line(T_TCP, bad[i], &e));
        assert_false(agent_net_parse_line(T_TCP6, bad[i], &e));
        assert_false(agent_net_parse_line(T_UDP, bad[i], &e));
    }
    /* the well-formed twin of the lines above does parse */
    assert_true(agent_net_parse_line(
        T_TCP,
        "   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000 0 0 1\n", &e));
}

static void test_read_table_long_lines_and_cap(void **state)
{
    struct agent_net_list l = { .max = 3 };
    char good[256], *text, *p;
    size_t cap = 1 << 16;
    FILE *f;

    (void)state;
    text = calloc(1, cap);
    assert_non_null(text);
    p = text;
    p += sprintf(p, "  sl  local_address rem_address   st ...header\n");
    line4(good, sizeof(good), "00000000", 1, 0x0A, 101);
    p += sprintf(p, "%s", good);
    /* a 3000-byte line whose tail looks like a table line: skipped whole */
    memset(p, 'A', 2500);
    p += 2500;
    line4(good, sizeof(good), "00000000", 2, 0x0A, 102);
    p += sprintf(p, "%s", good);
    line4(good, sizeof(good), "00000000", 3, 0x01, 103); /* not listening */
    p += sprintf(p, "%s", good);
    for (unsigned port = 4; port <= 8; port++) {
        line4(good, sizeof(good), "00000000", port, 0x0A, 100 + port);
        p += sprintf(p, "%s", good);
    }
    f = fmemopen(text, (size_t)(p - text), "r");
    assert_non_null(f);
    agent_net_read_table(&l, 0, f);
    fclose(f);
    assert_int_equal(l.n, 3);
    assert_true(l.truncated);
    assert_int_equal(l.e[0].port, 1);
    assert_int_equal(l.e[1].port, 4);
    assert_int_equal(l.e[2].port, 5);
    free(l.e);

    /* exactly at the cap: not truncated */
    memset(&l, 0, sizeof(l));
    l.max = 6;
    f = fmemopen(text, (size_t)(p - text), "r");
    agent_net_read_table(&l, 0, f);
    fclose(f);
    assert_int_equal(l.n, 6);
    assert_false(l.truncated);
    free(l.e);
    free(text);
}

/* A fake /proc: @pid/fd/@fd -> @target. */
static void fake_fd(const char *root, const char *pid, const char *fd, const char *target)
{
    char p[PATH_MAX];

    snprintf(p, sizeof(p), "%s/%s", root, pid);
    (void)mkdir(p, 0755);
    snprintf(p, sizeof(p), "%s/%s/fd", root, pid);
    (void)mkdir(p, 0755);
    snprintf(p, sizeof(p), "%s/%s/fd/%s", root, pid, fd);
    assert_int_equal(symlink(target, p), 0);
}

static void test_find_pids(void **state)
{
    char root[] = "/tmp/sbx-netproc-XXXXXX";
    char cmd[PATH_MAX + 16];
    struct agent_net_list l = { .max = 8 };
    struct agent_net_sock e = { 0 };

    (void)state;
    assert_non_null(mkdtemp(root));
    fake_fd(root, "123", "0", "/dev/null");
    fake_fd(root, "123", "3", "socket:[5555]");
    fake_fd(root, "124", "7", "socket:[6666]");
    fake_fd(root, "124", "8", "socket:[]");
    fake_fd(root, "124", "9", "socket:[77x]");
    fake_fd(root, "124", "10", "pipe:[7777]");
    fake_fd(root, "abc", "1", "socket:[7777]"); /* not a pid */
    fake_fd(root, "0", "1", "socket:[7777]");   /* not a pid either */
    snprintf(cmd, sizeof(cmd), "%s/125", root); /* a process without fd/ (gone) */
    (void)mkdir(cmd, 0755);

    l.e = calloc(8, sizeof(*l.e));
    l.cap = 8;
    for (unsigned long long ino = 7777; ino >= 5555; ino -= 1111) {
        e.inode = ino; /* 7777, 6666, 5555: the answer's order is kept */
        l.e[l.n++] = e;
    }
    agent_net_find_pids(&l, root, 1000, 2000);
    assert_int_equal(l.e[0].pid, 0);
    assert_int_equal(l.e[1].pid, 124);
    assert_int_equal(l.e[2].pid, 123);

    /* no budget: nothing found */
    l.e[1].pid = l.e[2].pid = 0;
    agent_net_find_pids(&l, root, 0, 2000);
    assert_int_equal(l.e[1].pid, 0);
    assert_int_equal(l.e[2].pid, 0);
    /* no such tree: nothing found, no crash */
    agent_net_find_pids(&l, "/nonexistent-proc", 1000, 2000);
    free(l.e);

    snprintf(cmd, sizeof(cmd), "rm -rf %s", root);
    assert_int_equal(system(cmd), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ipv4_listen),
        cmocka_unit_test(test_ipv6_word_order),
        cmocka_unit_test(test_udp_bound),
        cmocka_unit_test(test_malformed_lines),
        cmocka_unit_test(test_read_table_long_lines_and_cap),
        cmocka_unit_test(test_find_pids),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
