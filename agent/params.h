/*
 * Request param readers that need nothing of the agent but the params (params.c): path, time,
 * signal, `compress` and env-map params. The handlers call them; tests/fuzz/fuzz_request.c runs
 * them on hostile params, with no agent, loop or I/O around them.
 */
#ifndef SBX_AGENT_PARAMS_H
#define SBX_AGENT_PARAMS_H

#include <stdbool.h>
#include <stddef.h>
#include <time.h>

#include <msgpack.h>

#include "sbx/err.h"
#include "sbx/limits.h"

/* A path buffer: SBX_PATH_MAX bytes and the NUL. */
#define AGENT_FS_PATH_BUF (SBX_PATH_MAX + 1)

/*
 * Read the path parameter @key of request params @params into @out (AGENT_FS_PATH_BUF bytes) as
 * an absolute path: a relative one is joined to the request's `cwd` (itself absolute) or to "/".
 * Returns 0, 1 when optional and absent, or -1 with BAD_PARAM naming the field (missing, wrong
 * type, empty, NUL inside, longer than SBX_PATH_MAX, relative `cwd`).
 */
int agent_fs_path_param(const msgpack_object *params, const char *key, int required, char *out,
                        struct sbx_err *err);

/*
 * Read the optional time param @key (int nanoseconds since the epoch, negative before it) of
 * @params into @ts; absent, @ts is UTIME_OMIT (leave that time alone). Returns 0, or -1 with
 * BAD_PARAM.
 */
int agent_fs_time_param(const msgpack_object *params, const char *key, struct timespec *ts,
                        struct sbx_err *err);

/* Read the optional signal param @key (a number 1..NSIG-1 or a name such as "TERM"/"SIGTERM")
 * into @out, @def when absent or nil. Returns 0, or -1 with BAD_PARAM. */
int agent_signal_param(const msgpack_object *params, const char *key, int def, int *out,
                       struct sbx_err *err);

enum agent_compress { AGENT_COMPRESS_NONE, AGENT_COMPRESS_GZIP, AGENT_COMPRESS_ZSTD };

/* Parse the `compress` param (none/gzip/zstd) of a tree request; BAD_PARAM naming @key. */
int agent_compress_param(const msgpack_object *params, const char *key, int required,
                         enum agent_compress *out, struct sbx_err *err);

/* Check an env map param ({bstr: bstr|nil}); BAD_PARAM naming @field. */
int agent_env_check_map(const msgpack_object *map, const char *field, struct sbx_err *err);
/* Check an environment variable name: non-empty, no '=', no NUL, bounded. */
bool agent_env_name_ok(const char *s, size_t n);

/* Read transfer.upload's optional `sha256` (64 lowercase hex digits) into @out, NUL-terminated.
 * Returns 0, 1 when absent, or -1 with BAD_PARAM. */
int agent_sha256_param(const msgpack_object *params, char out[65], struct sbx_err *err);

#endif /* SBX_AGENT_PARAMS_H */
