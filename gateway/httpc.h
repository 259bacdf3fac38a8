/*
 * A small HTTP/1.1 client for fetch (fetch.c): one request and its response over one connection
 * (the request says Connection: close), on a byte transport that is either a host TCP connection
 * (uv_tcp: the sandbox's egress, names resolved with uv_getaddrinfo) or a guest socket (gsock.h:
 * a server inside the sandbox, reached with the agent's net.connect). Responses are parsed by
 * http-parser (HTTP_RESPONSE): content-length, chunked and close-delimited bodies; 1xx interim
 * responses are skipped; 101 is a failure (no upgrade was asked for). Either transport may carry
 * TLS (https: tls.h, GnuTLS): the server's certificate is verified for the host before anything
 * of the request is sent, and `connected` comes once the handshake is done.
 *
 * Use: httpc_open_tcp or httpc_open_gsock (connecting), httpc_request (the head: may be sent
 * before `connected`), httpc_body... + httpc_body_end when the request has a body, then `head`,
 * `body`... and `done` come. httpc_close frees the client at any time, from any callback
 * included; no callback after it. `done` is the last callback (the caller then closes).
 *
 * Caps: a response head of at most HTTPC_HEAD_MAX bytes (http-parser's own limit too) and
 * HTTPC_HEADERS_MAX header lines, a reason phrase of at most HTTPC_REASON_MAX bytes; beyond: a
 * failure. A chunked body's trailers are dropped (at most HTTPC_HEAD_MAX bytes of them, by
 * http-parser). A request head is at most HTTPC_REQ_HEAD_MAX bytes (httpc_request). Bytes toward
 * the server are queued (httpc_body returns 1 above HTTPC_QUEUE_HIGH: stop until `writable`).
 * Response bytes come in `body` slices of at most HTTPC_READ_SIZE; while the client is paused
 * (httpc_pause) nothing more is read from the transport. With TLS: records of at most 16 KiB
 * (GnuTLS), handshake messages of at most GW_TLS_HANDSHAKE_MAX; a second HTTPC_READ_SIZE buffer
 * for the decrypted bytes of one read.
 */
#ifndef SBX_GW_HTTPC_H
#define SBX_GW_HTTPC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "gw.h"

#define HTTPC_HEAD_MAX      (80u << 10)
#define HTTPC_HEADERS_MAX   256
#define HTTPC_REQ_HEAD_MAX  (2u << 20) /* a request head we send, whole */
#define HTTPC_REQ_FIELD_MAX (1u << 20) /* one piece of it: the target, a header value */
#define HTTPC_REASON_MAX    1024
#define HTTPC_READ_SIZE     (64u << 10)
#define HTTPC_QUEUE_HIGH    (256u << 10)
#define HTTPC_CONNECT_MS    30000 /* a TCP connect (each address) gives up after this long */
/* A name lookup gives up after this long (its libuv thread stays busy until the resolver itself
 * gives up: sbx-gateway runs 32 of them, not libuv's 4). */
#define HTTPC_RESOLVE_MS 10000
#define HTTPC_ADDRS_MAX  8 /* addresses of a name tried in turn */

struct httpc;

struct httpc_header {
    char *name;  /* lower-cased, NUL-terminated */
    char *value; /* as received (bytes; never NUL, CR or LF inside) */
};

struct httpc_resp {
    int status;
    const char *reason; /* the reason phrase as received ("" when none) */
    const struct httpc_header *headers;
    size_t nheaders;
};

struct httpc_ops {
    void (*connected)(void *user); /* may be NULL */
    void (*writable)(void *user);  /* the queue toward the server fell low again (may be NULL) */
    void (*head)(void *user, const struct httpc_resp *r); /* the final response's head */
    void (*body)(void *user, const uint8_t *data, size_t len);
    /* The response is complete (@err NULL) or something failed (@err says what, @code is the
     * errno's name when there is one, else NULL); @got_head: `head` was called before. */
    void (*done)(void *user, const char *err, const char *code, bool got_head);
};

/*
 * Connect to @host port @port over TCP. @addr: an IP literal to use instead of resolving @host
 * (--resolve), or NULL. @allow_internal false: addresses of the host itself (loopback,
 * unspecified, link-local, multicast, and any address one of its interfaces has) are refused,
 * whether resolved or given. @tls: https, the certificate verified for @host (gw_tls_init done
 * at start). NULL with a message in @why when nothing could be started.
 */
struct httpc *httpc_open_tcp(uv_loop_t *loop, const char *host, const char *addr, uint16_t port,
                             bool allow_internal, bool tls, const struct httpc_ops *ops, void *user,
                             char *why, size_t whylen);
/* Connect to @host ("127.0.0.1", "::1" or "localhost") port @port inside @sb (gsock.h); @tls:
 * https, the certificate verified for @host. */
struct httpc *httpc_open_gsock(struct gw_sandbox *sb, const char *host, uint16_t port, bool tls,
                               const struct httpc_ops *ops, void *user, char *why, size_t whylen);

enum httpc_body_kind {
    HTTPC_BODY_NONE = 0, /* no body, no framing header */
    HTTPC_BODY_LENGTH,   /* content-length: @len, then exactly @len bytes */
    HTTPC_BODY_CHUNKED,  /* transfer-encoding: chunked */
};

/*
 * Queue the request head: "@method @target HTTP/1.1", Host: @host_hdr, the @n headers (names and
 * values the caller checked: token names, no CR, LF or NUL), the body framing, Connection: close.
 * @head_request: the response has no body whatever it says (HEAD). 0, or -1 (bad input, a head
 * of HTTPC_REQ_HEAD_MAX bytes or more, a piece over HTTPC_REQ_FIELD_MAX, closed).
 */
int httpc_request(struct httpc *h, const char *method, const char *target, const char *host_hdr,
                  const char *const *names, const char *const *values, size_t n,
                  enum httpc_body_kind kind, uint64_t len, bool head_request);
/* Request body bytes (chunked: one chunk). 0, 1 when the queue is above HTTPC_QUEUE_HIGH (wait
 * for `writable`), -1 when they cannot be sent (the connection ended, more than content-length). */
int httpc_body(struct httpc *h, const void *data, size_t len);
/* The request body is complete (chunked: the last chunk). 0, or -1 (short of content-length). */
int httpc_body_end(struct httpc *h);
/* Stop (true) or resume (false) reading the response. */
void httpc_pause(struct httpc *h, bool pause);
/* Abort and free: no callback after this. */
void httpc_close(struct httpc *h);

#endif /* SBX_GW_HTTPC_H */
