/*
 * Unit tests of the gateway's HTTP client (httpc.c) over real loopback sockets: a name with
 * several addresses whose first connect fails goes on to the next, and one whose every address
 * refuses ends with the refusal. The name is "multi.test" in a private /etc/hosts, bind-mounted
 * in a mount namespace of this test's own (root, or skipped); its addresses are 127.0.0.1 and
 * 127.0.0.2, nothing listens on the first and the server (a thread) on the second.
 *
 * The next attempt used to start at once on the handle libuv was still closing (uv_tcp_init of
 * a closing uv_tcp_t): libuv's own assertion aborted the gateway.
 *
 * The same server answers chunked responses with trailers: http-parser reports trailer fields
 * through the header callbacks after the head, and they used to be added to the head's lines, so
 * 300 trailer lines failed the body with "the response has over 256 header lines".
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <sched.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>

#include "httpc.h"

struct result {
    int status;
    size_t nheaders;
    bool done;
    char err[256];
    char code[32];
    char body[64]; /* its first bytes */
    size_t body_len;
};

static void on_head(void *user, const struct httpc_resp *r)
{
    ((struct result *)user)->status = r->status;
    ((struct result *)user)->nheaders = r->nheaders;
}

static void on_body(void *user, const uint8_t *data, size_t len)
{
    struct result *res = user;
    size_t room = sizeof(res->body) - 1 - res->body_len;

    memcpy(res->body + res->body_len, data, len < room ? len : room);
    res->body_len += len < room ? len : room;
}

static struct httpc *client;

static void on_done(void *user, const char *err, const char *code, bool got_head)
{
    struct result *res = user;

    (void)got_head;
    res->done = true;
    snprintf(res->err, sizeof(res->err), "%s", err != NULL ? err : "");
    snprintf(res->code, sizeof(res->code), "%s", code != NULL ? code : "");
    httpc_close(client);
    client = NULL;
}

static const struct httpc_ops ops = { .head = on_head, .body = on_body, .done = on_done };

/* A listening socket on @ip, port *@port (0: any; the port taken is put back). */
static int listen_on(const char *ip, uint16_t *port)
{
    struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons(*port) };
    socklen_t len = sizeof(sa);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), one = 1;

    assert_true(fd >= 0);
    (void)setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    assert_int_equal(inet_pton(AF_INET, ip, &sa.sin_addr), 1);
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    assert_int_equal(listen(fd, 4), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&sa, &len), 0);
    *port = ntohs(sa.sin_port);
    return fd;
}

struct server {
    int lfd;
    const char *answer; /* NULL: a 200 with "ok" */
    size_t len;
};

/* The server: one connection, its request read, @answer sent (as far as the client takes it). */
static void *serve(void *arg)
{
    static const char ok[] = "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
    struct server *srv = arg;
    const char *p = srv->answer != NULL ? srv->answer : ok;
    size_t left = srv->answer != NULL ? srv->len : sizeof(ok) - 1;
    int fd = accept(srv->lfd, NULL, NULL);
    char buf[4096];

    if (fd >= 0) {
        (void)read(fd, buf, sizeof(buf));
        while (left > 0) {
            /* MSG_NOSIGNAL: a client that gave up closes, and that is no SIGPIPE here. */
            ssize_t n = send(fd, p, left, MSG_NOSIGNAL);

            if (n <= 0) {
                break;
            }
            p += n;
            left -= (size_t)n;
        }
        close(fd);
    }
    return NULL;
}

/* GET / from @host:@port (internal addresses allowed or not); the loop runs until nothing is
 * left (every handle closed). */
static void get_from(const char *host, uint16_t port, bool internal, struct result *res)
{
    uv_loop_t loop;
    char why[256];

    memset(res, 0, sizeof(*res));
    assert_int_equal(uv_loop_init(&loop), 0);
    client = httpc_open_tcp(&loop, host, NULL, port, internal, false, &ops, res, why, sizeof(why));
    assert_non_null(client);
    assert_int_equal(
        httpc_request(client, "GET", "/", host, NULL, NULL, 0, HTTPC_BODY_NONE, 0, false), 0);
    assert_int_equal(uv_run(&loop, UV_RUN_DEFAULT), 0);
    assert_true(res->done);
    assert_int_equal(uv_loop_close(&loop), 0);
}

static void get(uint16_t port, struct result *res)
{
    get_from("multi.test", port, true, res);
}

/* GET / answered with @answer (NULL: "ok"). */
static void get_answered(const char *answer, size_t len, struct result *res)
{
    uint16_t port = 0;
    struct server srv = { .lfd = listen_on("127.0.0.2", &port), .answer = answer, .len = len };
    pthread_t t;

    assert_int_equal(pthread_create(&t, NULL, serve, &srv), 0);
    get(port, res);
    assert_int_equal(pthread_join(t, NULL), 0);
    close(srv.lfd);
}

static void test_next_address_after_a_refusal(void **state)
{
    struct result res;

    (void)state;
    get_answered(NULL, 0, &res);
    assert_string_equal(res.err, "");
    assert_int_equal(res.status, 200);
}

static void test_every_address_refused(void **state)
{
    uint16_t port = 0;
    int lfd = listen_on("127.0.0.2", &port);
    struct result res;

    (void)state;
    close(lfd); /* nothing listens on either address now */
    get(port, &res);
    assert_string_equal(res.code, "ECONNREFUSED");
    assert_non_null(strstr(res.err, "tcp connect error"));
}

/* GET / answered with a chunked "hello" and @ntrailers trailer lines of @width bytes. */
static void get_with_trailers(size_t ntrailers, size_t width, struct result *res)
{
    static const char head[] = "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
                               "5\r\nhello\r\n0\r\n";
    size_t cap = sizeof(head) + ntrailers * (width + 2) + 3, off = sizeof(head) - 1;
    char *a = malloc(cap);

    assert_non_null(a);
    assert_true(width >= 16);
    memcpy(a, head, off);
    for (size_t i = 0; i < ntrailers; i++) {
        int n = snprintf(a + off, cap - off, "x-t%06zu: ", i);

        assert_true(n > 0 && (size_t)n < width);
        memset(a + off + n, 'v', width - (size_t)n);
        off += width;
        memcpy(a + off, "\r\n", 2);
        off += 2;
    }
    memcpy(a + off, "\r\n", 2);
    get_answered(a, off + 2, res);
    free(a);
    assert_int_equal(res->status, 200);
    assert_int_equal(res->nheaders, 1);
    assert_int_equal(res->body_len, 5);
    assert_memory_equal(res->body, "hello", 5);
}

static void test_trailers_are_not_head_lines(void **state)
{
    struct result res;

    (void)state;
    get_with_trailers(300, 40, &res);
    assert_string_equal(res.err, "");
}

static void test_endless_trailers_fail(void **state)
{
    struct result res;

    (void)state;
    /* 256 KiB of trailers in lines under 256: the bound is http-parser's 80 KiB of header
     * bytes, counted afresh after the last chunk. */
    get_with_trailers(1024, 254, &res);
    assert_non_null(strstr(res.err, "invalid HTTP response: "));
    assert_non_null(strstr(res.err, "header bytes"));
}

/* serve, twice: the connection refused once it turned out to be local (closed unanswered, no
 * request on it), then the one allowed. */
static void *serve_two(void *arg)
{
    (void)serve(arg);
    return serve(arg);
}

/*
 * The gateway's own host is never egress, whatever holds the address: in a network namespace of
 * this test's own, 10.213.7.1 is on a veth that is down (the kernel still delivers to it
 * locally; libuv's interface list, which the check used, leaves such interfaces out) and
 * 10.99.0.0/16 is a local route on lo that no interface has. A server on 0.0.0.0 would answer
 * either; the fetch must be refused without a request reaching it. Last: the namespace stays.
 */
static void test_own_host_whatever_holds_the_address(void **state)
{
    static const char *const hosts[] = { "10.213.7.1", "10.99.1.2" };
    uint16_t port = 0;
    struct server srv = { .lfd = -1 };
    pthread_t t;
    struct result res;

    (void)state;
    if (unshare(CLONE_NEWNET) < 0 ||
        system("ip link set lo up && ip link add sbxv0 type veth peer name sbxv1 && "
               "ip addr add 10.213.7.1/24 dev sbxv0 && ip route add local 10.99.0.0/16 dev lo") !=
            0) {
        skip(); /* no ip(8), or no veth */
    }
    srv.lfd = listen_on("0.0.0.0", &port);
    assert_int_equal(pthread_create(&t, NULL, serve_two, &srv), 0);
    for (size_t i = 0; i < sizeof(hosts) / sizeof(hosts[0]); i++) {
        get_from(hosts[i], port, false, &res);
        assert_string_equal(res.code, "EACCES");
        assert_non_null(strstr(res.err, "gateway's own host"));
        assert_non_null(strstr(res.err, hosts[i]));
    }
    /* Allowed (--resolve), the same address is reached: the server is there. */
    get_from("10.99.1.2", port, true, &res);
    assert_string_equal(res.err, "");
    assert_int_equal(res.status, 200);
    assert_int_equal(pthread_join(t, NULL), 0);
    close(srv.lfd);
}

/*
 * A resolver that never answers: a nameserver on 127.0.0.1:53 that reads and says nothing (in
 * the host's network namespace, where libuv's threads stay: a namespace is a thread's), and
 * /etc/resolv.conf (bound over in the test's mount namespace) gives it 12 s. The fetch fails at
 * HTTPC_RESOLVE_MS (10 s) with ETIMEDOUT instead of waiting as long as the resolver does; the loop
 * still ends once the lookup's thread is back.
 */
static void test_lookup_without_answer(void **state)
{
    static const char conf[] = "nameserver 127.0.0.1\noptions timeout:12 attempts:1\n";
    char path[] = "/tmp/sbx-httpc-resolv-XXXXXX";
    struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons(53) };
    struct result res;
    int fd, dns;

    (void)state;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    dns = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (dns < 0 || bind(dns, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        skip(); /* port 53 taken here */
    }
    assert_true((fd = mkstemp(path)) >= 0);
    assert_int_equal(write(fd, conf, sizeof(conf) - 1), (ssize_t)sizeof(conf) - 1);
    close(fd);
    assert_int_equal(mount(path, "/etc/resolv.conf", NULL, MS_BIND, NULL), 0);
    (void)unlink(path);
    get_from("hang.test", 80, true, &res);
    assert_string_equal(res.code, "ETIMEDOUT");
    assert_non_null(strstr(res.err, "no answer for hang.test within 10 s"));
    close(dns);
}

/* A mount namespace of our own where /etc/hosts gives multi.test two addresses. */
static int private_hosts(void **state)
{
    static const char hosts[] = "127.0.0.1 multi.test\n127.0.0.2 multi.test\n";
    char path[] = "/tmp/sbx-httpc-hosts-XXXXXX";
    int fd;

    (void)state;
    if (unshare(CLONE_NEWNS) < 0) {
        return -1;
    }
    if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0 || (fd = mkstemp(path)) < 0) {
        return -1;
    }
    if (write(fd, hosts, sizeof(hosts) - 1) != (ssize_t)sizeof(hosts) - 1 ||
        mount(path, "/etc/hosts", NULL, MS_BIND, NULL) < 0) {
        close(fd);
        (void)unlink(path);
        return -1;
    }
    close(fd);
    (void)unlink(path); /* the bind mount keeps it */
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_next_address_after_a_refusal),
        cmocka_unit_test(test_every_address_refused),
        cmocka_unit_test(test_trailers_are_not_head_lines),
        cmocka_unit_test(test_endless_trailers_fail),
        cmocka_unit_test(test_lookup_without_answer),
        cmocka_unit_test(test_own_host_whatever_holds_the_address), /* last: a new netns */
    };

    (void)signal(SIGPIPE, SIG_IGN); /* the server writes to connections the client closed */
    if (geteuid() != 0) {
        fprintf(stderr, "test_httpc: needs root (a mount namespace with its own /etc/hosts)\n");
        return 77; /* skipped */
    }
    return cmocka_run_group_tests(tests, private_hosts, NULL);
}
