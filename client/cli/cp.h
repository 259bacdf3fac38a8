/*
 * What sbx cp and sbx pack share: the progress line on stderr.
 */
#ifndef SBX_CLI_CP_H
#define SBX_CLI_CP_H

#include <stdbool.h>
#include <stdint.h>

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
/* @n more bytes moved; @p is the struct cli_progress (an sbx_progress_fn, sbx/transfer.h). */
void cli_progress_add(void *p, uint64_t n);
/* Finish the line (final figures when @ok, else erase it). */
void cli_progress_end(struct cli_progress *p, bool ok);

#endif /* SBX_CLI_CP_H */
