/* net.c: hostname, loopback, and the optional static eth0 address (plain ioctls, no netlink). */
#include <arpa/inet.h>
#include <errno.h>
#include <net/if.h>
#include <net/route.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include "init.h"

static struct sockaddr inaddr(struct in_addr a)
{
    struct sockaddr_in in = { .sin_family = AF_INET, .sin_addr = a };
    struct sockaddr sa;

    memcpy(&sa, &in, sizeof(sa)); /* same size by definition; no aliasing games */
    return sa;
}

/* One SIOCSIF* request on `ifname`: an address (SIOCSIFADDR/NETMASK) or IFF_UP (flags). */
static int ifreq(int s, const char *ifname, unsigned long req, struct in_addr a)
{
    struct ifreq ifr = { 0 };

    snprintf(ifr.ifr_name, sizeof(ifr.ifr_name), "%s", ifname);
    if (req != SIOCSIFFLAGS) {
        ifr.ifr_addr = inaddr(a);
    } else if (ioctl(s, SIOCGIFFLAGS, &ifr) < 0) {
        return -errno;
    } else {
        ifr.ifr_flags |= IFF_UP;
    }
    return ioctl(s, req, &ifr) < 0 ? -errno : 0;
}

static int eth0_setup(int s, const struct init_config *cfg)
{
    struct in_addr mask = { htonl(~0U << (32 - cfg->ip_prefix)) }, any = { 0 };
    struct rtentry rt = { .rt_dst = inaddr(any),
                          .rt_genmask = inaddr(any),
                          .rt_gateway = inaddr(cfg->gw),
                          .rt_flags = RTF_UP | RTF_GATEWAY,
                          .rt_dev = (char *)"eth0" };
    int rc;

    if ((rc = ifreq(s, "eth0", SIOCSIFADDR, cfg->ip)) < 0 ||
        (rc = ifreq(s, "eth0", SIOCSIFNETMASK, mask)) < 0 ||
        (rc = ifreq(s, "eth0", SIOCSIFFLAGS, any)) < 0 || !cfg->has_gw) {
        return rc;
    }
    return ioctl(s, SIOCADDRT, &rt) < 0 ? -errno : 0;
}

void init_net_setup(const struct init_config *cfg)
{
    char ip[INET_ADDRSTRLEN] = "?", gw[INET_ADDRSTRLEN] = "?";
    struct in_addr none = { 0 };
    int s, rc;

    rc = sethostname(cfg->hostname, strlen(cfg->hostname)) < 0 ? -errno : 0;
    init_log("net: hostname %s%s%s", cfg->hostname, rc < 0 ? ": " : "",
             rc < 0 ? strerror(-rc) : "");
    if ((s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0)) < 0) {
        init_log("net: socket: %m");
        return;
    }
    rc = ifreq(s, "lo", SIOCSIFFLAGS, none);
    init_log("net: lo up%s%s", rc < 0 ? ": " : "", rc < 0 ? strerror(-rc) : "");
    if (cfg->has_ip) {
        /* inet_ntop cannot fail with an AF_INET address and a big enough buffer. */
        (void)inet_ntop(AF_INET, &cfg->ip, ip, sizeof(ip));
        (void)inet_ntop(AF_INET, &cfg->gw, gw, sizeof(gw));
        rc = eth0_setup(s, cfg);
        init_log("net: eth0 %s/%d%s%s%s%s", ip, cfg->ip_prefix, cfg->has_gw ? " via " : "",
                 cfg->has_gw ? gw : "", rc < 0 ? ": " : "", rc < 0 ? strerror(-rc) : "");
    }
    close(s);
}
