/* system.c: what the agent runs on: console, mounts, modules, root switch, hostname, network. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/magic.h>
#include <net/if.h>
#include <net/route.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "init.h"

static const struct {
    const char *source, *target, *type;
    unsigned long flags;
    const char *data;
} init_mounts[] = {
    { "proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL },
    { "sysfs", "/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL },
    { "devtmpfs", "/dev", "devtmpfs", MS_NOSUID, "mode=0755" },
    /* newinstance: a pty namespace of our own; ptmxmode=0666 so any user can open ptys. */
    { "devpts", "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC,
      "newinstance,ptmxmode=0666,mode=0620,gid=5" },
    { "shm", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777" },
    { "run", "/run", "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755" },
    { "tmp", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777" },
    { "cgroup2", "/sys/fs/cgroup", "cgroup2", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL },
};

static const char *const init_links[][2] = {
    { "/dev/fd", "/proc/self/fd" },       { "/dev/stdin", "/proc/self/fd/0" },
    { "/dev/stdout", "/proc/self/fd/1" }, { "/dev/stderr", "/proc/self/fd/2" },
    { "/dev/ptmx", "pts/ptmx" },
};

/* What a root switch carries into the new root (submounts move along). */
static const char *const init_moved[] = { "/dev", "/proc", "/sys", "/run", "/tmp" };

/* Whether `path` is the root of a mount (statx knows, bind mounts too; Linux >= 5.8). */
static bool is_mountpoint(const char *path)
{
    struct statx sx;

    return statx(AT_FDCWD, path, AT_NO_AUTOMOUNT, STATX_BASIC_STATS, &sx) == 0 &&
           (sx.stx_attributes & STATX_ATTR_MOUNT_ROOT) != 0;
}

static void remember(struct init_state *st, const char *path)
{
    if (st->nmounts == INIT_MOUNTS_MAX) {
        init_log("mount: %s will not be unmounted at shutdown (table full)", path);
        return;
    }
    snprintf(st->mounts[st->nmounts++], INIT_PATH_LEN, "%s", path);
}

void init_console_setup(struct init_state *st)
{
    char path[INIT_PATH_LEN];
    int fd;

    if (fcntl(0, F_GETFD) >= 0 && fcntl(1, F_GETFD) >= 0 && fcntl(2, F_GETFD) >= 0) {
        return;
    }
    snprintf(path, sizeof(path), "%s/dev", st->prefix);
    (void)mkdir(path, 0755); /* usually EEXIST; mount() reports anything that matters */
    if (!is_mountpoint(path) && mount("devtmpfs", path, "devtmpfs", MS_NOSUID, "mode=0755") == 0) {
        remember(st, path);
    }
    snprintf(path, sizeof(path), "%s/dev/console", st->prefix);
    if ((fd = open(path, O_RDWR | O_NOCTTY | O_CLOEXEC)) < 0) {
        fd = open("/dev/null", O_RDWR | O_CLOEXEC); /* at least keep 0-2 from being reused */
    }
    /* open() took the lowest free fd, maybe one of 0-2: that one must survive exec. */
    for (int i = 0; fd >= 0 && i < 3; i++) {
        if (i == fd ? fcntl(fd, F_SETFD, 0) < 0 : fcntl(i, F_GETFD) < 0 && dup2(fd, i) < 0) {
            break; /* there is no console to complain to */
        }
    }
    if (fd > 2) {
        close(fd);
    }
}

void init_mount_early(struct init_state *st)
{
    char path[INIT_PATH_LEN];

    for (size_t i = 0; i < sizeof(init_mounts) / sizeof(init_mounts[0]); i++) {
        snprintf(path, sizeof(path), "%s%s", st->prefix, init_mounts[i].target);
        if (is_mountpoint(path)) {
            init_log("mount: %s already mounted", path);
        } else if (mkdir(path, 0755) < 0 && errno != EEXIST) {
            init_log("mount: mkdir %s: %m", path);
        } else if (mount(init_mounts[i].source, path, init_mounts[i].type, init_mounts[i].flags,
                         init_mounts[i].data) < 0) {
            init_log("mount: %s on %s: %m", init_mounts[i].type, path);
        } else {
            init_log("mount: %s on %s", init_mounts[i].type, path);
            remember(st, path);
        }
    }
    for (size_t i = 0; i < sizeof(init_links) / sizeof(init_links[0]); i++) {
        snprintf(path, sizeof(path), "%s%s", st->prefix, init_links[i][0]);
        /* An existing /dev/ptmx node is kept: it finds the devpts next to it (Linux >= 4.7),
         * and unlinking it would remove it from every mount of the one, shared devtmpfs. */
        INIT_LOG_IF(symlink(init_links[i][1], path) < 0 && errno != EEXIST, "link: %s: %m", path);
    }
}

/* Kernel settings that close the classic local tricks a workload could play on the agent, a
 * root process that works in directories the workload owns (docs/SECURITY.md). */
static const char *const init_sysctls[][2] = {
    /* Following a symlink, or hard-linking a file, the user does not own in a sticky
     * world-writable directory: refused. */
    { "fs/protected_symlinks", "1" },
    { "fs/protected_hardlinks", "1" },
    /* O_CREAT on an existing FIFO or regular file owned by someone else in a sticky
     * world-writable or group-writable directory: refused (2: group-writable too). */
    { "fs/protected_fifos", "2" },
    { "fs/protected_regular", "2" },
    /* ptrace only of descendants (Yama 1): a workload cannot attach to another user session's
     * processes of the same uid, nor to the agent's children it did not start. */
    { "kernel/yama/ptrace_scope", "1" },
    /* Kernel addresses and the kernel log are for root only. */
    { "kernel/kptr_restrict", "1" },
    { "kernel/dmesg_restrict", "1" },
};

bool init_is_machine_init(const struct init_state *st)
{
    struct stat sb;

    return st->prefix[0] == '\0' && stat("/proc/self/ns/pid", &sb) == 0 &&
           sb.st_ino == INIT_PID_NS_FIRST;
}

void init_harden(const struct init_state *st)
{
    char path[INIT_PATH_LEN];
    int set = 0;

    if (!init_is_machine_init(st)) {
        return; /* a test's PID namespace: these are the test machine's settings, not ours */
    }
    for (size_t i = 0; i < sizeof(init_sysctls) / sizeof(init_sysctls[0]); i++) {
        int fd;

        snprintf(path, sizeof(path), "/proc/sys/%s", init_sysctls[i][0]);
        fd = open(path, O_WRONLY | O_CLOEXEC);
        if (fd < 0 || write(fd, init_sysctls[i][1], 1) != 1) {
            /* ENOENT: the kernel lacks it (no Yama); logged, boot goes on. */
            init_log("harden: %s=%s: %m", path + 10, init_sysctls[i][1]);
        } else {
            set++;
        }
        if (fd >= 0) {
            close(fd);
        }
    }
    init_log("harden: %d of %zu kernel settings applied", set,
             sizeof(init_sysctls) / sizeof(init_sysctls[0]));
}

void init_modules_load(const char *path)
{
    char list[INIT_FILE_MAX], mod[INIT_PATH_LEN], *next = list, *line;
    int loaded = 0, failed = 0, fd, cut;
    ssize_t n = init_read_file(path, list, sizeof(list), &cut);

    if (n < 0) {
        INIT_LOG_IF(n != -ENOENT, "modules: %s: %s", path, strerror((int)-n));
        return; /* no list: what the kernel needs is built in */
    }
    INIT_LOG_IF(cut > 0,
                "modules: %s: longer than %d bytes; line %d (cut short) and all after it "
                "ignored",
                path, INIT_FILE_MAX - 1, cut);
    while ((line = strsep(&next, "\n")) != NULL) {
        if (line[0] == '\0' || line[0] == '#') {
            continue;
        }
        /* Ordered by dependency; relative to / (as modprobe --show-depends paths) or not. */
        snprintf(mod, sizeof(mod), "%s%s", line[0] == '/' ? "" : "/", line);
        if ((fd = open(mod, O_RDONLY | O_CLOEXEC)) < 0 ||
            (syscall(SYS_finit_module, fd, "", 0) < 0 && errno != EEXIST)) {
            init_log("modules: %s: %m", mod);
            failed++;
        } else {
            loaded++;
        }
        if (fd >= 0) {
            close(fd);
        }
    }
    init_log("modules: %d loaded, %d failed (%s)", loaded, failed, path);
}

/* Mounts the new root on /newroot: the device, or (sbx.overlay=tmpfs) the device read-only
 * as the lower layer of an overlay whose upper layer is a tmpfs. Returns 0 or -errno. */
static int mount_newroot(const struct init_config *cfg, const char *type)
{
    unsigned long ro = cfg->root_ro || cfg->squashfs || cfg->overlay ? MS_RDONLY : 0;
    struct stat sb;

    /* Drivers loaded a moment ago probe asynchronously: give the node time to appear. */
    for (int64_t until = init_now(CLOCK_BOOTTIME) + INIT_ROOT_WAIT_NS; stat(cfg->root, &sb) < 0;) {
        if (init_now(CLOCK_BOOTTIME) > until) {
            return -ENOENT;
        }
        usleep(10000);
    }
    if (!S_ISBLK(sb.st_mode)) {
        return -ENOTBLK;
    }
    if (mkdir("/newroot", 0755) < 0 && errno != EEXIST) {
        return -errno;
    }
    if (!cfg->overlay) {
        return mount(cfg->root, "/newroot", type, ro, NULL) < 0 ? -errno : 0;
    }
    if ((mkdir("/sbx-lower", 0755) < 0 && errno != EEXIST) ||
        mount(cfg->root, "/sbx-lower", type, ro, NULL) < 0 ||
        (mkdir("/sbx-upper", 0755) < 0 && errno != EEXIST) ||
        mount("upper", "/sbx-upper", "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755") < 0 ||
        mkdir("/sbx-upper/data", 0755) < 0 || mkdir("/sbx-upper/work", 0755) < 0 ||
        mount("overlay", "/newroot", "overlay", 0,
              "lowerdir=/sbx-lower,upperdir=/sbx-upper/data,workdir=/sbx-upper/work") < 0) {
        return -errno;
    }
    return 0;
}

bool init_root_switch(struct init_state *st)
{
    const char *how = st->cfg.overlay ? " + tmpfs overlay" : "";
    const char *type = st->cfg.squashfs ? "squashfs" : "ext4";
    char path[INIT_PATH_LEN];
    struct statfs sf;
    int rc;

    if (st->cfg.root[0] == '\0') {
        return false;
    }
    if (statfs("/", &sf) < 0 || (sf.f_type != RAMFS_MAGIC && sf.f_type != TMPFS_MAGIC)) {
        init_log("root: root=%s ignored: / is not an initramfs", st->cfg.root);
        return false;
    }
    if ((rc = mount_newroot(&st->cfg, type)) < 0) {
        init_log("root: %s (%s%s): %s; staying in the initramfs", st->cfg.root, type, how,
                 strerror(-rc));
        return false;
    }
    for (size_t i = 0; i < sizeof(init_moved) / sizeof(init_moved[0]); i++) {
        snprintf(path, sizeof(path), "/newroot%s", init_moved[i]);
        /* What cannot move is dropped; init_mount_early() mounts it afresh afterwards. */
        if (is_mountpoint(init_moved[i]) && mount(init_moved[i], path, NULL, MS_MOVE, NULL) < 0) {
            init_log("root: move %s: %m", init_moved[i]);
            (void)umount2(init_moved[i], MNT_DETACH); /* best effort: it is out of sight */
        }
    }
    /* switch_root(8)'s recipe: an initramfs cannot be pivot_root'ed away, so the new root is
     * moved over it and we chroot into it. The initramfs files stay (they are small). */
    if (chdir("/newroot") < 0 || mount(".", "/", NULL, MS_MOVE, NULL) < 0 || chroot(".") < 0 ||
        chdir("/") < 0) {
        init_log("root: switch to %s failed: %m", st->cfg.root);
        return false;
    }
    init_log("root: switched to %s (%s%s)", st->cfg.root, type, how);
    remember(st, "/"); /* the moved mounts keep their recorded paths */
    return true;
}

void init_umount_all(struct init_state *st)
{
    bool root = false;

    for (int i = st->nmounts - 1; i >= 0; i--) {
        const char *p = st->mounts[i];

        if (strcmp(p, "/") == 0) {
            root = true; /* last: everything else is mounted on it */
        } else if (umount2(p, 0) == 0) {
            init_log("shutdown: umount %s", p);
        } else if (umount2(p, MNT_DETACH) == 0) {
            init_log("shutdown: umount %s: busy; detached", p);
        } else {
            init_log("shutdown: umount %s: %m", p);
        }
    }
    /* The root cannot be unmounted under us: make it clean instead. */
    if (root && mount(NULL, "/", NULL, MS_REMOUNT | MS_RDONLY, NULL) < 0) {
        init_log("shutdown: remount / read-only: %m");
    } else if (root) {
        init_log("shutdown: remounted / read-only");
    }
}

/* Network: plain ioctls, no netlink. */
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
