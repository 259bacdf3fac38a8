/*
 * fetch's TLS sessions (tls.h) with GnuTLS: custom push/pull functions, no I/O of our own.
 *
 * Input is lent (gw_tls_input) and pulled by GnuTLS from that loan; when it runs out the pull
 * says EAGAIN (and notes it: `starved`), which is how a caller knows that everything it gave was
 * consumed. Output is pushed to the caller's send function whole (it queues), so GnuTLS never
 * sees EAGAIN on the way out and a record is never half-written.
 *
 * Everything the server sends is hostile: GnuTLS bounds records (16 KiB + overhead) and, set
 * here, handshake messages and chain lengths; renegotiation requests are refused with a warning
 * alert and counted; TLS 1.3 key updates are rate-limited by GnuTLS itself; session tickets are
 * not asked for (one connection per request, no resumption), so none are kept.
 */
#include "tls.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "gw.h"

#include <gnutls/gnutls.h>
#include <gnutls/x509.h>

#define MAX_KEY_BITS 16384
/* gnutls calls in a row that consumed no input and gave nothing (non-fatal results, e.g. AGAIN
 * after a post-handshake message): a bound on the loops that repeat them. */
#define RETRY_MAX 64

struct gw_tls {
    gnutls_session_t s;
    gw_tls_send_fn send;
    void *user;
    char host[256];
    const uint8_t *in; /* the input lent by the caller */
    size_t in_len;
    bool eof, starved, seen_input, not_tls, done, failed, bye;
    uint8_t first[16]; /* the first bytes the server sent (a plain-HTTP answer is told apart) */
    size_t nfirst;
    int renegs;
    char err[400];
    const char *code;
};

static gnutls_certificate_credentials_t cred;
static bool have_ca_file;

int gw_tls_init(const char *ca_file, char *why, size_t whylen)
{
    struct stat st;
    int r;

    if (cred != NULL) {
        return 0;
    }
    if (ca_file != NULL) {
        /* Checked before GnuTLS reads it: a FIFO or a directory would block or confuse it. */
        if (stat(ca_file, &st) < 0) {
            snprintf(why, whylen, "--ca-file %.300s: %s", ca_file, strerror(errno));
            return -1;
        }
        if (!S_ISREG(st.st_mode)) {
            snprintf(why, whylen, "--ca-file %.300s: not a regular file", ca_file);
            return -1;
        }
        if (st.st_size > (16 << 20)) {
            snprintf(why, whylen, "--ca-file %.300s: over 16 MiB", ca_file);
            return -1;
        }
    }
    r = gnutls_certificate_allocate_credentials(&cred);
    if (r < 0) {
        snprintf(why, whylen, "TLS: %s", gnutls_strerror(r));
        cred = NULL;
        return -1;
    }
    gnutls_certificate_set_verify_limits(cred, MAX_KEY_BITS, GW_TLS_CHAIN_MAX);
    r = gnutls_certificate_set_x509_system_trust(cred);
    if (r <= 0) {
        /* Not fatal: private CAs may be all that is wanted. Public hosts then fail to verify. */
        gw_log("fetch: no system trust store loaded for https (%s); only --ca-file is trusted",
               r < 0 ? gnutls_strerror(r) : "no certificates in it");
    }
    if (ca_file != NULL) {
        r = gnutls_certificate_set_x509_trust_file(cred, ca_file, GNUTLS_X509_FMT_PEM);
        if (r <= 0) {
            snprintf(why, whylen, "--ca-file %.300s: %s", ca_file,
                     r < 0 ? gnutls_strerror(r) : "no PEM certificate in it");
            gnutls_certificate_free_credentials(cred);
            cred = NULL;
            return -1;
        }
        have_ca_file = true;
    }
    return 0;
}

/* --- transport functions -------------------------------------------------------------------- */

static ssize_t tls_push(gnutls_transport_ptr_t p, const void *data, size_t len)
{
    struct gw_tls *t = p;

    if (t->send(t->user, data, len) < 0) {
        gnutls_transport_set_errno(t->s, EPIPE);
        return -1;
    }
    return (ssize_t)len;
}

static ssize_t tls_pull(gnutls_transport_ptr_t p, void *buf, size_t len)
{
    struct gw_tls *t = p;
    size_t n;

    if (t->in_len == 0) {
        if (t->eof) {
            return 0;
        }
        t->starved = true;
        gnutls_transport_set_errno(t->s, EAGAIN);
        return -1;
    }
    n = len < t->in_len ? len : t->in_len;
    memcpy(buf, t->in, n);
    t->in += n;
    t->in_len -= n;
    return (ssize_t)n;
}

/* Whether input is there to be pulled now (GnuTLS asks before some reads; no waiting here). */
static int tls_pull_timeout(gnutls_transport_ptr_t p, unsigned int ms)
{
    const struct gw_tls *t = p;

    (void)ms;
    return t->in_len > 0 || t->eof ? 1 : 0;
}

/* --- sessions ------------------------------------------------------------------------------- */

static bool ip_literal(const char *host)
{
    unsigned char b[16];

    return inet_pton(AF_INET, host, b) == 1 || inet_pton(AF_INET6, host, b) == 1;
}

struct gw_tls *gw_tls_new(const char *host, gw_tls_send_fn send, void *user, char *why,
                          size_t whylen)
{
    static const char alpn[] = "http/1.1";
    gnutls_datum_t proto = { (unsigned char *)alpn, sizeof(alpn) - 1 };
    struct gw_tls *t;
    const char *bad = NULL;
    int r;

    if (cred == NULL) {
        snprintf(why, whylen, "TLS is not initialised");
        return NULL;
    }
    if (strlen(host) >= sizeof(t->host)) {
        snprintf(why, whylen, "the host name is too long for TLS");
        return NULL;
    }
    t = calloc(1, sizeof(*t));
    if (t == NULL) {
        snprintf(why, whylen, "out of memory");
        return NULL;
    }
    t->send = send;
    t->user = user;
    snprintf(t->host, sizeof(t->host), "%s", host);
    r = gnutls_init(&t->s, GNUTLS_CLIENT | GNUTLS_NONBLOCK | GNUTLS_NO_TICKETS);
    if (r < 0) {
        snprintf(why, whylen, "TLS: %s", gnutls_strerror(r));
        free(t);
        return NULL;
    }
    /* The default priorities ("NORMAL" as the system's policy has it), TLS 1.2 and 1.3 only. */
    r = gnutls_set_default_priority_append(t->s, "-VERS-ALL:+VERS-TLS1.3:+VERS-TLS1.2", &bad, 0);
    if (r >= 0) {
        r = gnutls_credentials_set(t->s, GNUTLS_CRD_CERTIFICATE, cred);
    }
    if (r >= 0 && !ip_literal(host)) {
        r = gnutls_server_name_set(t->s, GNUTLS_NAME_DNS, host, strlen(host));
    }
    if (r >= 0) {
        r = gnutls_alpn_set_protocols(t->s, &proto, 1, 0);
    }
    if (r < 0) {
        snprintf(why, whylen, "TLS: %s", gnutls_strerror(r));
        gnutls_deinit(t->s);
        free(t);
        return NULL;
    }
    /* The name the certificate must carry (an IP literal: one of its IP addresses). */
    gnutls_session_set_verify_cert(t->s, t->host, 0);
    gnutls_handshake_set_max_packet_length(t->s, GW_TLS_HANDSHAKE_MAX);
    gnutls_handshake_set_timeout(t->s, 0);
    gnutls_transport_set_ptr(t->s, t);
    gnutls_transport_set_push_function(t->s, tls_push);
    gnutls_transport_set_pull_function(t->s, tls_pull);
    gnutls_transport_set_pull_timeout_function(t->s, tls_pull_timeout);
    return t;
}

void gw_tls_free(struct gw_tls *t)
{
    if (t == NULL) {
        return;
    }
    gnutls_deinit(t->s);
    free(t);
}

void gw_tls_input(struct gw_tls *t, const uint8_t *data, size_t len)
{
    t->in = data;
    t->in_len = data != NULL ? len : 0;
    if (!t->seen_input && t->in_len > 0) {
        /* TLS records start with a content type of 20..24; anything else is not TLS (a plain
         * HTTP server answering our ClientHello with "HTTP/1.1 400 ..." the usual case). */
        t->seen_input = true;
        t->not_tls = data[0] < 20 || data[0] > 24;
    }
    while (t->nfirst < sizeof(t->first) && len > 0 && data != NULL) {
        t->first[t->nfirst++] = *data++;
        len--;
    }
}

void gw_tls_eof(struct gw_tls *t)
{
    t->eof = true;
}

const char *gw_tls_error(const struct gw_tls *t)
{
    return t->err;
}

const char *gw_tls_code(const struct gw_tls *t)
{
    return t->code;
}

static void failf(struct gw_tls *t, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void failf(struct gw_tls *t, const char *code, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    (void)vsnprintf(t->err, sizeof(t->err), fmt, ap);
    va_end(ap);
    t->code = code;
    t->failed = true;
}

/* rustls's names for why a certificate is refused (what Deno prints), with our explanation. */
static void verify_failed(struct gw_tls *t)
{
    unsigned st = gnutls_session_get_verify_cert_status(t->s);
    const char *trust = have_ca_file ? "the system's store and --ca-file" : "the system's store";

    if (st & (GNUTLS_CERT_SIGNER_NOT_FOUND | GNUTLS_CERT_SIGNER_NOT_CA)) {
        failf(t, NULL,
              "client error (Connect): invalid peer certificate: UnknownIssuer (the "
              "certificate is not issued by an authority the gateway trusts: %s)",
              trust);
    } else if (st & GNUTLS_CERT_EXPIRED) {
        failf(t, NULL,
              "client error (Connect): invalid peer certificate: Expired (the certificate, or "
              "one in its chain, has expired)");
    } else if (st & GNUTLS_CERT_NOT_ACTIVATED) {
        failf(t, NULL,
              "client error (Connect): invalid peer certificate: NotValidYet (the certificate, "
              "or one in its chain, is not valid yet)");
    } else if (st & GNUTLS_CERT_REVOKED) {
        failf(t, NULL, "client error (Connect): invalid peer certificate: Revoked");
    } else if (st & GNUTLS_CERT_UNEXPECTED_OWNER) {
        failf(t, NULL,
              "client error (Connect): invalid peer certificate: NotValidForName (the "
              "certificate is not valid for '%s')",
              t->host);
    } else if (st & GNUTLS_CERT_INSECURE_ALGORITHM) {
        failf(t, NULL,
              "client error (Connect): invalid peer certificate: UnsupportedSignatureAlgorithm "
              "(signed with an insecure algorithm)");
    } else if (st & GNUTLS_CERT_SIGNATURE_FAILURE) {
        failf(t, NULL, "client error (Connect): invalid peer certificate: BadSignature");
    } else {
        gnutls_datum_t d = { NULL, 0 };

        if (gnutls_certificate_verification_status_print(st, GNUTLS_CRT_X509, &d, 0) == 0 &&
            d.data != NULL) {
            failf(t, NULL, "client error (Connect): invalid peer certificate: Other (%.300s)",
                  (const char *)d.data);
        } else {
            failf(t, NULL, "client error (Connect): invalid peer certificate (status 0x%x)", st);
        }
        gnutls_free(d.data);
    }
}

/* The first bytes of a non-TLS answer, printable, for the message. */
static void first_text(const struct gw_tls *t, char *out, size_t outlen)
{
    size_t j = 0;

    for (size_t i = 0; i < t->nfirst && j + 5 < outlen; i++) {
        unsigned char c = t->first[i];

        if (c >= 0x20 && c < 0x7F && c != '"' && c != '\\') {
            out[j++] = (char)c;
        } else {
            j += (size_t)snprintf(out + j, outlen - j, "\\x%02x", c);
        }
    }
    out[j] = '\0';
}

static void not_tls(struct gw_tls *t)
{
    char first[80];

    first_text(t, first, sizeof(first));
    if (strncmp((const char *)t->first, "HTTP/", t->nfirst < 5 ? t->nfirst : 5) == 0) {
        failf(t, "EPROTO",
              "client error (Connect): received corrupt message: the server does not speak TLS "
              "on this port: it answered in plain HTTP (\"%s\"); use http: for it",
              first);
    } else {
        failf(t, "EPROTO",
              "client error (Connect): received corrupt message: the server does not speak TLS "
              "on this port (it sent \"%s\")",
              first);
    }
}

static const char *alert_name(const struct gw_tls *t)
{
    const char *n = gnutls_alert_get_name(gnutls_alert_get(t->s));

    return n != NULL ? n : "unknown alert";
}

int gw_tls_handshake(struct gw_tls *t)
{
    if (t->failed) {
        return GW_TLS_FAILED;
    }
    if (t->done) {
        return 0;
    }
    if (t->not_tls) {
        not_tls(t);
        return GW_TLS_FAILED;
    }
    for (int idle = 0; idle < RETRY_MAX; idle++) {
        size_t before = t->in_len;
        int r;

        t->starved = false;
        r = gnutls_handshake(t->s);
        if (t->in_len < before) {
            idle = 0; /* input was consumed: progress */
        }
        if (r == 0) {
            t->done = true;
            return 0;
        }
        if (r == GNUTLS_E_AGAIN || r == GNUTLS_E_INTERRUPTED ||
            (r == GNUTLS_E_WARNING_ALERT_RECEIVED)) {
            if (t->starved) {
                return GW_TLS_AGAIN;
            }
            continue;
        }
        if (r == GNUTLS_E_CERTIFICATE_VERIFICATION_ERROR) {
            verify_failed(t);
        } else if (r == GNUTLS_E_FATAL_ALERT_RECEIVED) {
            failf(t, NULL, "client error (Connect): received fatal alert: %s", alert_name(t));
        } else if (r == GNUTLS_E_PREMATURE_TERMINATION || (t->eof && t->in_len == 0)) {
            failf(t, "ECONNRESET",
                  "client error (Connect): tls handshake eof (the server closed the connection "
                  "during the TLS handshake)");
        } else if (r == GNUTLS_E_HANDSHAKE_TOO_LARGE) {
            failf(t, NULL,
                  "client error (Connect): TLS handshake failed: a handshake message from the "
                  "server is over %u bytes (a certificate chain this large is refused)",
                  GW_TLS_HANDSHAKE_MAX);
        } else if (r == GNUTLS_E_PUSH_ERROR) {
            failf(t, "EPIPE",
                  "client error (Connect): TLS handshake failed: the connection closed");
        } else if (r == GNUTLS_E_NO_APPLICATION_PROTOCOL) {
            failf(t, NULL,
                  "client error (Connect): TLS handshake failed: the server does not speak "
                  "http/1.1 (ALPN)");
        } else {
            failf(t, NULL, "client error (Connect): TLS handshake failed: %s", gnutls_strerror(r));
        }
        return GW_TLS_FAILED;
    }
    failf(t, NULL, "client error (Connect): TLS handshake failed: no progress");
    return GW_TLS_FAILED;
}

ssize_t gw_tls_read(struct gw_tls *t, uint8_t *buf, size_t cap)
{
    if (t->failed) {
        return GW_TLS_FAILED;
    }
    for (int idle = 0; idle < RETRY_MAX; idle++) {
        size_t before = t->in_len;
        ssize_t r;

        t->starved = false;
        r = gnutls_record_recv(t->s, buf, cap);
        if (t->in_len < before) {
            idle = 0; /* input was consumed: progress */
        }
        if (r >= 0) {
            return r; /* 0: close_notify */
        }
        if (r == GNUTLS_E_AGAIN || r == GNUTLS_E_INTERRUPTED) {
            /* GnuTLS also says AGAIN after a record that carried no data (a post-handshake
             * message): only a pull that found nothing means the input is used up. */
            if (t->starved) {
                return GW_TLS_AGAIN;
            }
            continue;
        }
        if (r == GNUTLS_E_WARNING_ALERT_RECEIVED) {
            continue; /* TLS 1.2 warnings (user_canceled, ...): carry on */
        }
        if (r == GNUTLS_E_REHANDSHAKE) {
            /* Renegotiation is not supported (rustls neither): say so, carry on. */
            if (++t->renegs > GW_TLS_RENEG_MAX) {
                failf(t, "EPROTO", "TLS error: the server keeps asking for renegotiation");
                return GW_TLS_FAILED;
            }
            (void)gnutls_alert_send(t->s, GNUTLS_AL_WARNING, GNUTLS_A_NO_RENEGOTIATION);
            continue;
        }
        if (r == GNUTLS_E_PREMATURE_TERMINATION) {
            return GW_TLS_UNCLEAN_EOF;
        }
        if (r == GNUTLS_E_FATAL_ALERT_RECEIVED) {
            failf(t, NULL, "TLS error: received fatal alert: %s", alert_name(t));
        } else if (r == GNUTLS_E_PUSH_ERROR) {
            failf(t, "EPIPE", "TLS error: the connection closed");
        } else {
            failf(t, "EPROTO", "TLS error: %s", gnutls_strerror((int)r));
        }
        return GW_TLS_FAILED;
    }
    failf(t, "EPROTO", "TLS error: no progress");
    return GW_TLS_FAILED;
}

int gw_tls_write(struct gw_tls *t, const void *data, size_t len)
{
    const uint8_t *p = data;
    int again = 0;

    if (t->failed || !t->done) {
        return -1;
    }
    while (len > 0) {
        ssize_t r = gnutls_record_send(t->s, p, len);

        if ((r == GNUTLS_E_INTERRUPTED || r == GNUTLS_E_AGAIN) && ++again < RETRY_MAX) {
            continue; /* not from our push (it takes everything); a retry completes the record */
        }
        if (r <= 0) {
            /* The transport refused (the server stopped reading): not a failure of the session,
             * whose reading side may still bring the answer (a 413, ...). */
            return -1;
        }
        p += r;
        len -= (size_t)r;
    }
    return 0;
}

void gw_tls_bye(struct gw_tls *t)
{
    if (t->failed || !t->done || t->bye) {
        return;
    }
    t->bye = true;
    (void)gnutls_bye(t->s, GNUTLS_SHUT_WR);
}
