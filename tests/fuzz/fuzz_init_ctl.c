/*
 * libFuzzer target for sbx-init's control channel (init/agent.c's init_ctl_read, which parses
 * with init/config.c's init_ctl_parse): the input is a run of datagrams separated by NUL bytes
 * (a NUL inside one is refused like any control byte), after a first byte that picks the
 * lifetime mode. They are sent over a SOCK_SEQPACKET socketpair, as the agent sends them, and
 * init reads them. After each datagram init's state must be one it can be in (docs/INIT.md,
 * "Control channel"): a duration's deadline never moves earlier, clients within 0..2^20, a shutdown
 * only when asked for; every "extend" and "lifetime?" is answered, once.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "init.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* main.c's, without the rest of main.c. */
void init_request_shutdown(struct init_state *st, enum init_action action, const char *why)
{
    if (st->action == INIT_RUN) {
        st->action = action;
        snprintf(st->why, sizeof(st->why), "%s", why);
    }
}

static struct init_state st;

/* The replies waiting on the agent's end: how many, each a well-formed "lifetime" line. */
static int replies(int fd)
{
    char buf[INIT_CTL_MAX + 1];
    ssize_t n;
    int k = 0;

    while ((n = recv(fd, buf, sizeof(buf) - 1, MSG_DONTWAIT)) > 0) {
        buf[n] = '\0';
        if (strncmp(buf, "lifetime mode=", 14) != 0 || strstr(buf, " deadline_ns=") == NULL) {
            abort();
        }
        k++;
    }
    return k;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const uint8_t *p = data + 1, *end = data + size;
    int sv[2];

    if (size == 0 || socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0) {
        return 0;
    }
    memset(&st, 0, sizeof(st));
    st.cfg.quiet = true;
    init_config_defaults(&st.cfg);
    st.cfg.lifetime = (enum init_lifetime)(data[0] % 3);
    st.cfg.lifetime_s = 60;
    st.start_ns = init_now(CLOCK_BOOTTIME);
    if (st.cfg.lifetime == INIT_LIFETIME_DURATION) {
        st.deadline_ns = st.start_ns + st.cfg.lifetime_s * INIT_NSEC;
    }
    st.prefix = "";
    st.ctl = sv[0];
    while (p <= end && st.ctl >= 0) {
        const uint8_t *nul = memchr(p, '\0', (size_t)(end - p));
        size_t len = nul != NULL ? (size_t)(nul - p) : (size_t)(end - p);
        int64_t before = st.deadline_ns;
        bool asks = memmem(p, len, "extend", 6) != NULL || memmem(p, len, "lifetime?", 9) != NULL;
        int got;

        /* An empty datagram is sent too: init must tell it from the agent's end closing. */
        if (send(sv[1], p, len, MSG_DONTWAIT | MSG_NOSIGNAL) != (ssize_t)len) {
            break;
        }
        init_ctl_read(&st);
        got = replies(sv[1]);
        if (st.clients < 0 || st.clients > (1 << 20) || st.deadline_ns < before ||
            (st.cfg.lifetime != INIT_LIFETIME_DURATION && st.deadline_ns != 0) ||
            st.session_ns < 0 || got > 1 || (got == 1 && !asks) ||
            (st.action != INIT_RUN && strcmp(st.why, "asked by the agent") != 0) ||
            st.ctl != sv[0]) {
            abort();
        }
        p += len + 1;
    }
    /* The agent's end closing: init closes its own. */
    close(sv[1]);
    if (st.ctl >= 0) {
        init_ctl_read(&st);
        if (st.ctl >= 0) {
            abort();
        }
    } else {
        close(sv[0]);
    }
    return 0;
}
