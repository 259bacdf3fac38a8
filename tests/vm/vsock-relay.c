/* sbx-vsock-relay: a guest-side test relay from a virtio-serial port to an AF_VSOCK port.
 *
 * This machine kind has no host<->guest vsock (no /dev/vhost-vsock), so the VM tests reach the
 * agent's real AF_VSOCK listener through in-guest loopback (vsock_loopback.ko, CID 1): the host
 * connects to a second virtio-serial port, and this program relays every host connection to a
 * new vsock connection to CID:PORT inside the guest.
 *
 *     sbx-vsock-relay PORTNAME CID PORT      e.g.  sbx-vsock-relay relay 1 1024
 *
 * Port semantics (VM-HARNESS.md §3): read() == 0 or POLLHUP means "no host connected", not a
 * final end (POLLIN comes with POLLHUP then, so it is no sign of data); the port stays open and
 * the next host connection gets a new vsock connection. Runs until killed. Static, no
 * dependencies.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/vm_sockets.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define RELAY_BUF (64 * 1024)

/* Logs "sbx-vsock-relay: WHAT: DETAIL" on stderr. */
static void relay_log(const char *what, const char *detail)
{
    fprintf(stderr, "sbx-vsock-relay: %s: %s\n", what, detail);
}

static void nap_ms(long ms)
{
    struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };

    while (nanosleep(&ts, &ts) < 0 && errno == EINTR) {
    }
}

/* Finds /dev/vportNpM whose /sys/class/virtio-ports/vportNpM/name is @name (there is no udev).
 * Returns 0 and fills @dev, or -1. */
static int find_port(const char *name, char *dev, size_t devsz)
{
    DIR *d = opendir("/sys/class/virtio-ports");
    struct dirent *de;
    int found = -1;

    if (d == NULL) {
        return -1;
    }
    while (found < 0 && (de = readdir(d)) != NULL) {
        char path[512], buf[256];
        FILE *fp;

        if (de->d_name[0] == '.') {
            continue;
        }
        (void)snprintf(path, sizeof(path), "/sys/class/virtio-ports/%s/name", de->d_name);
        fp = fopen(path, "re");
        if (fp == NULL) {
            continue;
        }
        if (fgets(buf, sizeof(buf), fp) != NULL) {
            buf[strcspn(buf, "\n")] = '\0';
            if (strcmp(buf, name) == 0) {
                (void)snprintf(dev, devsz, "/dev/%s", de->d_name);
                found = 0;
            }
        }
        fclose(fp);
    }
    closedir(d);
    return found;
}

static int vsock_connect(unsigned cid, unsigned port)
{
    struct sockaddr_vm sa;
    int fd = socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC, 0);

    if (fd < 0) {
        return -1;
    }
    memset(&sa, 0, sizeof(sa));
    sa.svm_family = AF_VSOCK;
    sa.svm_cid = cid;
    sa.svm_port = port;
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        int e = errno;
        close(fd);
        errno = e;
        return -1;
    }
    (void)fcntl(fd, F_SETFL, O_NONBLOCK);
    return fd;
}

/* Writes all of @buf to the non-blocking @fd, polling for room. Returns 0, or -1 when the peer
 * is gone (for the port: POLLHUP without POLLOUT means the host hung up). */
static int write_all(int fd, const char *buf, size_t len)
{
    while (len > 0) {
        ssize_t n = write(fd, buf, len);
        if (n > 0) {
            buf += n;
            len -= (size_t)n;
            continue;
        }
        if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
            return -1;
        }
        struct pollfd p = { .fd = fd, .events = POLLOUT };
        if (poll(&p, 1, 1000) < 0 && errno != EINTR) {
            return -1;
        }
        if ((p.revents & (POLLHUP | POLLERR)) && !(p.revents & POLLOUT)) {
            return -1;
        }
    }
    return 0;
}

/* Relays one host connection: @port <-> a new vsock connection. Returns when either side ends;
 * when the vsock side ends first, waits for the host to hang up, discarding what it sends. */
static void relay_one(int port, unsigned cid, unsigned vport)
{
    static char buf[RELAY_BUF];
    int vs = vsock_connect(cid, vport);

    if (vs < 0) {
        relay_log("vsock connect", strerror(errno));
    }
    for (;;) {
        struct pollfd p[2] = { { .fd = port, .events = POLLIN }, { .fd = vs, .events = POLLIN } };
        ssize_t n;

        if (poll(p, vs >= 0 ? 2 : 1, -1) < 0) {
            if (errno == EINTR) {
                continue;
            }
            break;
        }
        if (p[0].revents & (POLLIN | POLLHUP | POLLERR)) {
            n = read(port, buf, sizeof(buf));
            if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) {
                break; /* the host hung up */
            }
            if (n > 0 && vs >= 0 && write_all(vs, buf, (size_t)n) < 0) {
                close(vs);
                vs = -1;
            }
        }
        if (vs >= 0 && (p[1].revents & (POLLIN | POLLHUP | POLLERR))) {
            n = read(vs, buf, sizeof(buf));
            if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) {
                close(vs); /* the agent closed: drop the host's data until it hangs up */
                vs = -1;
            } else if (n > 0 && write_all(port, buf, (size_t)n) < 0) {
                break;
            }
        }
    }
    if (vs >= 0) {
        close(vs);
    }
}

int main(int argc, char **argv)
{
    char dev[300];
    unsigned cid, vport;
    int port = -1;

    if (argc != 4) {
        fprintf(stderr, "usage: sbx-vsock-relay PORTNAME CID PORT\n");
        return 2;
    }
    cid = (unsigned)strtoul(argv[2], NULL, 10);
    vport = (unsigned)strtoul(argv[3], NULL, 10);
    while (find_port(argv[1], dev, sizeof(dev)) < 0) {
        nap_ms(100);
    }
    port = open(dev, O_RDWR | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
    if (port < 0) {
        relay_log(dev, strerror(errno));
        return 1;
    }
    relay_log("relaying", dev);
    for (;;) {
        struct pollfd p = { .fd = port, .events = POLLIN };

        if (poll(&p, 1, -1) < 0 && errno != EINTR) {
            relay_log("poll", strerror(errno));
            return 1;
        }
        /* POLLHUP: no host connected. virtio_console reports POLLIN with it (a read would
         * return 0 at once), so POLLHUP must be checked first. */
        if (p.revents & POLLHUP) {
            nap_ms(20);
        } else if (p.revents & POLLIN) {
            relay_one(port, cid, vport);
        }
    }
}
