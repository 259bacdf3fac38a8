/*
 * The local terminal for `sbx shell` / `sbx exec -t`: its window size, raw mode, and putting it
 * back on every way out (normal return, error, exit(), the signal handlers, atexit).
 */
#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <termios.h>
#include <unistd.h>

#include "cli.h"

/* The terminal's settings before raw mode; only valid while tty_fd >= 0. */
static struct termios tty_saved;
/* The fd raw mode was set on, or -1. Read by signal handlers. */
static volatile sig_atomic_t tty_fd = -1;
/* Raw mode is currently in effect (cleared by cli_tty_restore, set again by cli_tty_reraw). */
static volatile sig_atomic_t tty_raw;
static bool tty_atexit;

void cli_tty_size(unsigned *rows, unsigned *cols)
{
    static const int fds[] = { STDIN_FILENO, STDOUT_FILENO, STDERR_FILENO };

    for (size_t i = 0; i < sizeof(fds) / sizeof(fds[0]); i++) {
        struct winsize ws;
        if (ioctl(fds[i], TIOCGWINSZ, &ws) == 0 && ws.ws_row > 0 && ws.ws_col > 0) {
            *rows = ws.ws_row;
            *cols = ws.ws_col;
            return;
        }
    }
    *rows = CLI_TTY_ROWS;
    *cols = CLI_TTY_COLS;
}

/* tcsetattr(TCSADRAIN) waits for output to drain, so a signal can interrupt it. */
static int set_attr(int fd, const struct termios *t)
{
    int r;

    do {
        r = tcsetattr(fd, TCSADRAIN, t);
    } while (r < 0 && errno == EINTR);
    return r;
}

static void tty_restore_atexit(void)
{
    cli_tty_restore();
}

int cli_tty_raw(int fd)
{
    if (tcgetattr(fd, &tty_saved) < 0) {
        return -1;
    }
    tty_fd = fd;
    if (!tty_atexit) {
        tty_atexit = atexit(tty_restore_atexit) == 0;
    }
    if (cli_tty_reraw() < 0) {
        tty_fd = -1;
        return -1;
    }
    return 0;
}

int cli_tty_reraw(void)
{
    struct termios raw;

    if (tty_fd < 0) {
        return 0;
    }
    raw = tty_saved;
    cfmakeraw(&raw);
    if (set_attr(tty_fd, &raw) < 0) {
        return -1;
    }
    tty_raw = 1;
    return 0;
}

/* Async-signal-safe: tcsetattr is on the POSIX list, the rest are plain loads and stores. */
void cli_tty_restore(void)
{
    if (tty_fd >= 0 && tty_raw) {
        tty_raw = 0;
        (void)set_attr(tty_fd, &tty_saved);
    }
}

void cli_tty_forget(void)
{
    cli_tty_restore();
    tty_fd = -1;
}

void cli_say(const char *fmt, ...)
{
    char buf[1024], out[4096 + 3];
    size_t len, n;
    bool nl;
    va_list ap;

    va_start(ap, fmt);
    (void)vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    len = strlen(buf);
    nl = len > 0 && buf[len - 1] == '\n';
    n = cli_escape(out, sizeof(out) - 2, buf, nl ? len - 1 : len);
    if (nl) {
        if (tty_fd >= 0 && tty_raw) {
            out[n++] = '\r';
        }
        out[n++] = '\n';
    }
    (void)fwrite(out, 1, n, stderr);
}
