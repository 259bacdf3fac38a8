/*
 * What sbx cp and sbx pack share: a progress line on stderr, reading an out stream into a file,
 * waiting for transfer.done, and the tree transfers (tar made and unpacked by libarchive).
 */
#ifndef SBX_CLI_CP_H
#define SBX_CLI_CP_H

#include <stdbool.h>
#include <stdint.h>
#include <time.h>

#include "cli.h"

/* Bytes read from a local file per stream write. */
#define CLI_CP_BUF (1u << 20)

static inline uint64_t cli_now_ns(void)
{
    struct timespec ts;

    (void)clock_gettime(CLOCK_MONOTONIC, &ts); /* cannot fail */
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* A progress line on stderr, drawn only when stderr is a terminal and the transfer has taken
 * more than 0.3 s, at most 10 times a second. */
struct cli_progress {
    const char *label;
    uint64_t total; /* 0: unknown */
    uint64_t done;
    uint64_t start_ns, last_ns;
    bool enabled, drawn;
};
void cli_progress_start(struct cli_progress *p, const char *label, uint64_t total, bool quiet);
void cli_progress_add(struct cli_progress *p, uint64_t n);
/* Finish the line (final figures when @ok, else erase it). */
void cli_progress_end(struct cli_progress *p, bool ok);

/* Wait for transfer.done of @sid; 0 with *@d read from it, or -1 with @err (its error, or a
 * transport error). Other messages are skipped. */
int cli_wait_done(struct sbx_client *c, uint32_t sid, struct sbx_transfer_done *d,
                  struct sbx_err *err);
/* Write out stream @sid to @fd until its stream.end, granting credit as written. 0, or -1 with
 * @err (the stream's error, a local write error after cancelling the stream, a transport error). */
int cli_recv_stream(struct sbx_client *c, uint32_t sid, int fd, struct cli_progress *prog,
                    struct sbx_err *err);

/* Send @method {path: @path, compress: @compress} and wait for its {stream}. 0 with *@sid, or -1
 * with @err. */
int cli_tree_request(struct sbx_client *c, const char *method, const char *path,
                     const char *compress, uint32_t *sid, struct sbx_err *err);

/* sbx cp -r: returns the exit status. @compress is "none", "gzip" or "zstd". */
int cli_cp_upload_tree(struct sbx_client *c, const char *local, const char *remote,
                       const char *compress, bool quiet);
int cli_cp_download_tree(struct sbx_client *c, const char *remote, const char *local,
                         const char *compress, bool quiet);

#endif /* SBX_CLI_CP_H */
