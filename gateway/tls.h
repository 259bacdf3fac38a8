/*
 * TLS client sessions for fetch's HTTP client (httpc.c), with GnuTLS, over any byte transport:
 * no I/O here. Ciphertext toward the server goes out through the @send function given at
 * creation (it must take every byte: the caller queues); ciphertext from the server is lent with
 * gw_tls_input and consumed by the next gw_tls_handshake / gw_tls_read calls (a partial record
 * is kept inside GnuTLS), so nothing is ever waited for: GnuTLS sees EAGAIN when the input runs
 * out (never blocking the loop).
 *
 * A session: SNI = the host (not for IP literals), the server's certificate verified against the
 * system trust store plus --ca-file with the host name (IP literals: the certificate's IP
 * addresses), ALPN "http/1.1" only, TLS 1.2 or 1.3 (GnuTLS's default priorities, i.e. "NORMAL"
 * and the system's policy, with older versions removed). Bounds: a handshake message of at most
 * GW_TLS_HANDSHAKE_MAX bytes, a chain of at most GW_TLS_CHAIN_MAX certificates, keys of at most
 * 16384 bits; renegotiation is refused (at most GW_TLS_RENEG_MAX requests, then a failure).
 *
 * Errors are texts in Deno's words (gw_tls_error), e.g. "client error (Connect): invalid peer
 * certificate: UnknownIssuer (...)".
 */
#ifndef SBX_GW_TLS_H
#define SBX_GW_TLS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define GW_TLS_HANDSHAKE_MAX (64u << 10)
#define GW_TLS_CHAIN_MAX     16
#define GW_TLS_RENEG_MAX     8

/* gw_tls_handshake / gw_tls_read results besides bytes and 0. */
#define GW_TLS_AGAIN       (-2) /* more input is needed */
#define GW_TLS_FAILED      (-1) /* gw_tls_error says what; the session is unusable */
#define GW_TLS_UNCLEAN_EOF (-3) /* the transport ended without the server's close_notify */

struct gw_tls;

/* Ciphertext toward the server: 0, or -1 when the transport can take no more (closed). */
typedef int (*gw_tls_send_fn)(void *user, const void *data, size_t len);

/* Load the trust store (the system's, plus @ca_file when not NULL: PEM, at least one
 * certificate) once, at start. 0, or -1 with a message in @why. */
int gw_tls_init(const char *ca_file, char *why, size_t whylen);

/* A client session toward @host (a name or an IP literal, IPv6 without brackets). NULL with a
 * message in @why when it cannot be made (no gw_tls_init, out of memory). */
struct gw_tls *gw_tls_new(const char *host, gw_tls_send_fn send, void *user, char *why,
                          size_t whylen);
void gw_tls_free(struct gw_tls *t);

/* Lend @len bytes from the server until the next gw_tls_input (NULL, 0: take them back; what is
 * left unconsumed then is dropped). */
void gw_tls_input(struct gw_tls *t, const uint8_t *data, size_t len);
/* The transport ended: once the input lent is consumed, GnuTLS sees the end. */
void gw_tls_eof(struct gw_tls *t);

/* Drive the handshake: 0 done (the certificate verified), GW_TLS_AGAIN, or GW_TLS_FAILED. */
int gw_tls_handshake(struct gw_tls *t);
/* Decrypted application data into @buf: bytes (> 0), 0 (the server's close_notify: the end),
 * GW_TLS_AGAIN, GW_TLS_UNCLEAN_EOF or GW_TLS_FAILED. */
ssize_t gw_tls_read(struct gw_tls *t, uint8_t *buf, size_t cap);
/* Encrypt and send @len bytes (after the handshake). 0, or -1 (the transport refused). */
int gw_tls_write(struct gw_tls *t, const void *data, size_t len);
/* Best effort close_notify (nothing when the session failed or the handshake is not done). */
void gw_tls_bye(struct gw_tls *t);

/* What failed (after GW_TLS_FAILED), and the errno name that goes with it (or NULL). */
const char *gw_tls_error(const struct gw_tls *t);
const char *gw_tls_code(const struct gw_tls *t);

#endif /* SBX_GW_TLS_H */
