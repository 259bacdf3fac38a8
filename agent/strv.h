/*
 * String vectors (strv.c): NULL-terminated arrays of malloc'd strings, as argv and envp are. One
 * way to read them from a request's array param, naming a bad entry by its index (PROTOCOL.md
 * §7.5), and one way to free them.
 */
#ifndef SBX_AGENT_STRV_H
#define SBX_AGENT_STRV_H

#include <stddef.h>
#include <stdint.h>

#include <msgpack.h>

#include "sbx/err.h"

/* agent_strv_from_array / agent_strv_param flags. An empty string is a bad entry: */
#define AGENT_STRV_NONEMPTY 1u

/* Free @v and every string in it (NULL is fine). */
void agent_strv_free(char **v);

/*
 * Copy the msgpack array @arr, the request param named @field, into a NULL-terminated vector of
 * strings (free with agent_strv_free). Each entry must be a str or bin without NUL of at most
 * @maxlen bytes, and with AGENT_STRV_NONEMPTY not empty; a bad one is BAD_PARAM naming it,
 * `field[i]` (PROTOCOL.md §7.5), with the message "field[i] must
 * be a [non-empty ]string of at most N bytes without NUL". Returns the vector, or NULL with @err
 * set.
 */
char **agent_strv_from_array(const msgpack_object *arr, const char *field, size_t maxlen,
                             unsigned flags, struct sbx_err *err);

/*
 * The optional array param @key of request params @params (at most @max entries, else
 * BAD_PARAM naming @key) as agent_strv_from_array reads it, into *@out and its length into *@n
 * (@n may be NULL). When @key is absent or nil, *@out is NULL and *@n 0. Returns 0, or -1 with
 * @err set.
 */
int agent_strv_param(const msgpack_object *params, const char *key, uint32_t max, size_t maxlen,
                     unsigned flags, char ***out, size_t *n, struct sbx_err *err);

/* The argv of a shell command line, {"/bin/sh", "-c", @cmd (@len bytes)}; NULL when out of
 * memory. */
char **agent_strv_sh(const char *cmd, size_t len);

#endif /* SBX_AGENT_STRV_H */
