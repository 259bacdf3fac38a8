/*
 * libsbx internals shared by its files: the deadline helpers and the transport's connect. Not
 * installed; nothing outside client/lib includes it. The protocol state lives in the sans-I/O
 * core (sbx/conn.h); the blocking layer on top of it is client.c, connecting is addr.c.
 */
#ifndef SBX_CLIENT_INTERNAL_H
#define SBX_CLIENT_INTERNAL_H

#include <stdint.h>

#include "sbx/client.h"

/* --- client.c ----------------------------------------------------------------------------- */

/* Monotonic clock in milliseconds. */
int64_t sbx__now_ms(void);

/* Milliseconds left until @deadline (-1: none); 0 when passed; capped to fit poll(). */
int sbx__remaining(int64_t deadline);

/* Deadline for @timeout_ms from now; -1 when @timeout_ms < 0. */
int64_t sbx__deadline(int timeout_ms);

/* --- addr.c ------------------------------------------------------------------------------- */

/* Connect a non-blocking, close-on-exec socket to @a (see sbx_client_connect). */
int sbx__connect(const struct sbx_addr *a, const char *addr, int timeout_ms, struct sbx_err *err);

#endif /* SBX_CLIENT_INTERNAL_H */
