/*
 * libFuzzer target for the Host header that POST /api/v3/sandbox/<id>/expose/ssh copies into its
 * answer (gateway/ssh.c compiled in): host_from_header, and gw_rest_expose_ssh's answer on a
 * gateway whose SSH endpoint listens on a wildcard address (the hostname it gives the client is
 * then the host the API was reached at) or on a named one. The grants it mints are kept in
 * memory only: ssh.json is not written (gw_file_write_atomic stands in).
 *
 * Input: byte 0: bit 0 the endpoint listens on a wildcard address; bits 1-3 pick the buffer size
 * host_from_header gets (1 .. 256 bytes); bit 4: the request carries no Host header. The rest
 * (up to a NUL: http.c hands no header value holding one) is the Host header's value.
 *
 * Checks: what host_from_header takes is the whole host part of the header (the name before a
 * ':' port, or the address between '[' and ']'), at most 253 bytes, NUL-terminated within the
 * buffer, only letters, digits, '.', '-' and ':' (':' only in a bracketed address); a header it
 * refuses leaves the buffer as it was. The answer is 200 with a hostname of those characters
 * (the header's host, else 127.0.0.1 on a wildcard endpoint, else the endpoint's own host), a
 * user name of SSH_USER_LEN characters of SSH_USER_ALPHABET, and the endpoint's port.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* clang-format off */
#include "backend.h"
#include "http.h"
/* clang-format on */

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

__attribute__((noreturn)) static void fz_fail(const char *what)
{
    fprintf(stderr, "fuzz: %s\n", what);
    abort();
}

static int fz_status;
static json_t *fz_answer;

static void fz_http_respond_json(struct gw_http_conn *hc, int status, const char *const *headers,
                                 json_t *body)
{
    (void)hc;
    (void)headers;
    fz_status = status;
    json_decref(fz_answer);
    fz_answer = body;
}

static int fz_file_write_atomic(const char *path, const void *data, size_t len, mode_t mode)
{
    (void)path;
    (void)data;
    (void)len;
    (void)mode;
    return 0;
}

#define gw_http_respond_json fz_http_respond_json
#define gw_file_write_atomic fz_file_write_atomic

#include "../../gateway/ssh.c"

#define FZ_HOST_CHARS "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-:"

static struct gw fz_gw;
static struct gw_sandbox fz_sb;
static struct gw_ssh fz_srv;

/* A host taken from @h: the header's whole host part, of the allowed characters. */
static void fz_check_host(const char *h, const char *host, size_t cap)
{
    size_t n = strnlen(host, cap);
    bool bracket = h[0] == '[';
    const char *part = h + bracket;

    if (n == cap || n == 0 || n > 253 || strspn(host, FZ_HOST_CHARS) != n) {
        fz_fail("a host taken from the header is empty, too long or holds a refused character");
    }
    if (strncmp(part, host, n) != 0 ||
        (bracket ? part[n] != ']' : (part[n] != '\0' && part[n] != ':'))) {
        fz_fail("a host taken from the header is not its whole host part");
    }
    if (!bracket && memchr(host, ':', n) != NULL) {
        fz_fail("a host outside brackets holds a ':'");
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const size_t caps[] = { 1, 2, 4, 16, 64, 253, 254, 256 };
    char value[4096], out[256], before[256];
    struct gw_http_req req;
    const char *hostname, *user;
    size_t n, cap;

    if (size < 1) {
        return 0;
    }
    if (fz_gw.sandboxes == NULL) {
        fz_gw.sandboxes = &fz_sb;
        fz_gw.nsandboxes = 1;
        fz_gw.opt.quiet = true;
        fz_sb.g = &fz_gw;
        fz_sb.state = GW_SB_READY;
        snprintf(fz_sb.id, sizeof(fz_sb.id), "sbx_ord_00000000000000000000");
        fz_srv.g = &fz_gw;
        fz_srv.port = 2222;
        fz_gw.ssh = &fz_srv;
    }
    fz_srv.wildcard = (data[0] & 1) != 0;
    snprintf(fz_srv.host, sizeof(fz_srv.host), "%s", fz_srv.wildcard ? "0.0.0.0" : "10.1.2.3");
    cap = caps[(data[0] >> 1) & 7];
    n = strnlen((const char *)data + 1, size - 1);
    n = n < sizeof(value) - 1 ? n : sizeof(value) - 1;
    memcpy(value, data + 1, n);
    value[n] = '\0';

    /* host_from_header on its own, with a buffer of @cap bytes. */
    memset(out, 0x5a, sizeof(out));
    memcpy(before, out, sizeof(out));
    if (host_from_header(value, out, cap)) {
        fz_check_host(value, out, cap);
        if (memcmp(out + cap, before + cap, sizeof(out) - cap) != 0) {
            fz_fail("host_from_header wrote past its buffer");
        }
    } else if (memcmp(out, before, sizeof(out)) != 0) {
        fz_fail("host_from_header refused a header but changed the buffer");
    }

    /* The expose/ssh answer. */
    memset(&req, 0, sizeof(req));
    req.method = "POST";
    req.path = "/api/v3/sandbox/sbx_ord_00000000000000000000/expose/ssh";
    req.query = "";
    req.body = "";
    if ((data[0] & 0x10) == 0) {
        req.headers[0].name = "host";
        req.headers[0].value = value;
        req.nheaders = 1;
    }
    gw_rest_expose_ssh(&fz_gw, (struct gw_http_conn *)&fz_status, &req, &fz_sb);
    hostname = json_string_value(json_object_get(fz_answer, "hostname"));
    user = json_string_value(json_object_get(fz_answer, "username"));
    if (fz_status != 200 || hostname == NULL || user == NULL ||
        json_integer_value(json_object_get(fz_answer, "port")) != fz_srv.port) {
        fz_fail("expose/ssh did not answer 200 with a hostname, a user name and the port");
    }
    if (hostname[0] == '\0' || strlen(hostname) > 253 ||
        strspn(hostname, FZ_HOST_CHARS) != strlen(hostname)) {
        fz_fail("the hostname answered is empty, too long or holds a refused character");
    }
    if (!fz_srv.wildcard) {
        if (strcmp(hostname, fz_srv.host) != 0) {
            fz_fail("a named endpoint answered another host than its own");
        }
    } else if (req.nheaders > 0 && host_from_header(value, out, sizeof(out))) {
        if (strcmp(hostname, out) != 0) {
            fz_fail("a wildcard endpoint did not answer the header's host");
        }
        fz_check_host(value, hostname, strlen(hostname) + 1);
    } else if (strcmp(hostname, "127.0.0.1") != 0) {
        fz_fail("a wildcard endpoint without a usable Host did not answer 127.0.0.1");
    }
    if (strlen(user) != SSH_USER_LEN || strspn(user, SSH_USER_ALPHABET) != SSH_USER_LEN) {
        fz_fail("the user name answered is not one of SSH_USER_LEN of SSH_USER_ALPHABET");
    }
    json_decref(fz_answer);
    fz_answer = NULL;
    while (fz_srv.grants != NULL) {
        struct grant *gr = fz_srv.grants;
        fz_srv.grants = gr->next;
        free(gr);
    }
    fz_srv.ngrants = 0;
    return 0;
}
