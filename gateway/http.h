/*
 * The gateway's HTTP/1.1 server and WebSocket (RFC 6455) endpoint on a libuv loop. Request heads
 * and bodies are parsed by http-parser, WebSocket frames by wslay (no I/O of its own: bytes go
 * through the connection's uv stream), Sec-WebSocket-Accept by nettle (SHA-1 + base64).
 *
 * A request is handed to the server's handler once its head and body are complete; the handler
 * answers it exactly once, now or later (a create waits for a VM to boot), with gw_http_respond
 * or gw_http_upgrade. While a request is unanswered the connection reads nothing more. Keep-alive
 * is honoured for REST requests. Bad input gets 400 (431 for heads over GW_HTTP_HEAD_MAX, 413 for
 * bodies over GW_HTTP_BODY_MAX) and the connection closed; a client idle mid-request for
 * GW_HTTP_IDLE_MS is closed.
 */
#ifndef SBX_GW_HTTP_H
#define SBX_GW_HTTP_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#define GW_HTTP_HEAD_MAX    (64u << 10) /* request line + headers */
#define GW_HTTP_HEADERS_MAX 64
#define GW_HTTP_BODY_MAX    (1u << 20) /* REST bodies */
#define GW_HTTP_IDLE_MS     30000      /* a partial request stalls this long: closed */
#ifndef GW_HTTP_CONNS_MAX /* a test build may set it (tests/gateway's fast echo server) */
#define GW_HTTP_CONNS_MAX                                                                          \
    1024 /* accepted connections; at the cap an answered one that only                             \
            lingers goes, else the newcomer is closed at once */
#endif
#define GW_HTTP_FRESH_MAX                                                                          \
    128                        /* of them, ones with no whole request yet; beyond: the             \
                                  oldest of those is closed */
#define GW_HTTP_FIRST_MS 10000 /* a new connection's first request must be whole by then */
/* The server pings an idle WebSocket this often, and closes it when nothing came back for
 * GW_WS_DEAD_MS (while it is paused: when the peer took none of what waits for it for that long).
 * A build may set both (tests/gateway's fast echo server does). */
#ifndef GW_WS_PING_MS
#define GW_WS_PING_MS 20000
#endif
#ifndef GW_WS_DEAD_MS
#define GW_WS_DEAD_MS 60000
#endif

struct gw_http_server;
struct gw_http_conn;
struct gw_ws;

struct gw_http_header {
    const char *name; /* lower-cased */
    const char *value;
};

struct gw_http_req {
    const char *method; /* "GET", "POST", ... */
    const char *path;   /* the URL's path, percent-decoded; never contains NUL */
    const char *query;  /* the raw query string without '?', "" when none */
    struct gw_http_header headers[GW_HTTP_HEADERS_MAX];
    size_t nheaders;
    const char *body; /* NUL-terminated copy of the body ("" when none) */
    size_t body_len;
    bool websocket; /* a well-formed WebSocket upgrade (GET, Upgrade: websocket, version 13, key) */
};

/* The value of header @name (case-insensitive), or NULL. */
const char *gw_http_header(const struct gw_http_req *req, const char *name);

/* Called for each complete request. @req and everything in it stay valid until it is answered. */
typedef void (*gw_http_handler_fn)(struct gw_http_conn *hc, const struct gw_http_req *req,
                                   void *user);

/* Listen on @addr ("HOST:PORT", IPv4 or [IPv6]) and call @fn for each request. Returns the
 * server, or NULL with a message in @errbuf. */
struct gw_http_server *gw_http_listen(uv_loop_t *loop, const char *addr, gw_http_handler_fn fn,
                                      void *user, char *errbuf, size_t errlen);
/* The port actually bound (for ":0"). */
int gw_http_port(const struct gw_http_server *srv);
/* The value of the hex digit @ch, or -1. */
int gw_hexval(char ch);
/* Stop listening and close every connection (WebSockets get 1001 "going away"). */
void gw_http_close(struct gw_http_server *srv);

/*
 * Answer @hc's request: status line, @headers ("Name: value" strings, NULL-terminated; may be
 * NULL), Content-Length and the body. Content-Type is added as application/json when @body starts
 * with '{' or '[' and none was given. After the answer the connection reads the next request, or
 * closes when the client asked to (or on an error status >= 400 with an unread body).
 */
void gw_http_respond(struct gw_http_conn *hc, int status, const char *const *headers,
                     const char *body, size_t len);
/* The same with a JSON body (stolen). */
void gw_http_respond_json(struct gw_http_conn *hc, int status, const char *const *headers,
                          json_t *body);

/*
 * Called when the client of an unanswered request went away (a create whose client gave up), or
 * the client of a streamed answer went away or could not be written to. The request must not be
 * answered (nor the stream written or ended) after it; @hc is freed when the callback returns.
 * Called from a libuv callback of the server's, never from inside a call of this API.
 */
void gw_http_on_abandon(struct gw_http_conn *hc, void (*cb)(struct gw_http_conn *hc, void *user),
                        void *user);

/*
 * Streamed answers (Server-Sent Events, progress): a body of unknown length. gw_http_stream_start
 * answers @hc's request with the status line and @headers (as gw_http_respond; no Content-Length,
 * no default Content-Type) and, for an HTTP/1.1 client, Transfer-Encoding: chunked; an HTTP/1.0
 * client gets the bytes as they are and the connection closed at the end. Then any number of
 * gw_http_stream_write (each a chunk; @len 0 writes nothing), then gw_http_stream_end exactly once,
 * which ends the body and reads the next request (or closes). Nothing is read meanwhile beyond a
 * small buffer (a pipelined request waits for the end).
 *
 * start and write return 0, or -1 when the client is gone or the bytes cannot be queued (out of
 * memory): the handler then stops writing and still calls gw_http_stream_end to let @hc go, unless
 * the abandon callback was called. A client that goes away while it streams is reported through
 * gw_http_on_abandon (set it before or after start); after that callback, end must not be called.
 *
 * Back-pressure: gw_http_stream_queued is the bytes queued and not yet written to the socket; a
 * producer writes while it is under its bound and waits for the drain callback (called whenever
 * every queued byte has been written) to write more.
 */
int gw_http_stream_start(struct gw_http_conn *hc, int status, const char *const *headers);
int gw_http_stream_write(struct gw_http_conn *hc, const void *data, size_t len);
size_t gw_http_stream_queued(const struct gw_http_conn *hc);
void gw_http_on_drain(struct gw_http_conn *hc, void (*cb)(struct gw_http_conn *hc, void *user),
                      void *user);
void gw_http_stream_end(struct gw_http_conn *hc);

/* --- WebSocket ----------------------------------------------------------------------------- */

struct gw_ws_ops {
    /* One complete message, text or binary (fragments joined; at most GW_WS_MSG_MAX, gw.h). */
    void (*on_message)(struct gw_ws *ws, const char *data, size_t len, void *user);
    /* The write queue fell to GW_WS_LOW or below after having been above GW_WS_HIGH. */
    void (*on_drain)(struct gw_ws *ws, void *user);
    /* The WebSocket is gone (close handshake, error, client vanished, gw_ws_close). Called once;
     * @ws is freed after it returns. @code: the close code received or sent (1006: none). */
    void (*on_close)(struct gw_ws *ws, uint16_t code, const char *reason, void *user);
};

/*
 * Answer @hc's request (which must have req->websocket) with 101 Switching Protocols,
 * Sec-WebSocket-Accept, and @headers (e.g. "x-deno-sandbox-id: sbx_ord_..."). Extensions are
 * declined. Returns the WebSocket; @hc is no longer usable.
 */
struct gw_ws *gw_http_upgrade(struct gw_http_conn *hc, const char *const *headers,
                              const struct gw_ws_ops *ops, void *user);

/* Queue one text message (copied). Returns 0, or -1 when the WebSocket is closing. */
int gw_ws_send_text(struct gw_ws *ws, const char *data, size_t len);
/* Bytes queued and not yet written to the socket. */
size_t gw_ws_queued(const struct gw_ws *ws);
/* Stop (true) or resume (false) reading from the client. The dead-peer check (GW_WS_DEAD_MS)
 * does not count the time paused: the peer's frames, its pongs included, wait unread meanwhile;
 * only a peer that takes none of the bytes written to it for that long is dropped then. */
void gw_ws_pause(struct gw_ws *ws, bool paused);
/* Send a close frame with @code and @reason, flush what is queued, then close (on_close
 * follows). Idempotent. */
void gw_ws_close(struct gw_ws *ws, uint16_t code, const char *reason);
/* Change the user pointer given to the ops. */
void gw_ws_set_user(struct gw_ws *ws, void *user);

#endif /* SBX_GW_HTTP_H */
