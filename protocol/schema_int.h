/*
 * Helpers the schema's files share (schema.c defines them; schema_proc.c and schema_net.c use
 * them). Not installed: nothing outside protocol/ includes it.
 */
#ifndef SBX_SCHEMA_INT_H
#define SBX_SCHEMA_INT_H

#include <stdbool.h>
#include <stdint.h>

#include <msgpack.h>

#include "sbx/err.h"

/* Turn the error of a record read from the peer into BAD_MESSAGE prefixed with @what, keeping its
 * field. Returns -1. */
int sbx__bad_message(struct sbx_err *err, const char *what);

/* A required uint in [min, max]: 0, or -1 with BAD_PARAM naming @key. */
int sbx__need_u64(const msgpack_object *o, const char *key, uint64_t min, uint64_t max, uint64_t *v,
                  struct sbx_err *err);
int sbx__need_u32(const msgpack_object *o, const char *key, uint32_t *v, struct sbx_err *err);

/* A key that must be present: 1 when nil, 0 when another value (in *@v), -1 when missing. */
int sbx__nil_or(const msgpack_object *o, const char *key, const msgpack_object **v,
                struct sbx_err *err);

/* A sid|nil entry: 0 packs nil. */
void sbx__pack_sid_or_nil(msgpack_packer *pk, const char *k, uint32_t sid);
/* A present sid|nil field: *@sid 0 for nil. 0, or -1 with BAD_PARAM naming @key. */
int sbx__read_sid_or_nil(const msgpack_object *o, const char *key, uint32_t *sid,
                         struct sbx_err *err);
/* A required sid (1 .. 2^32-1). */
int sbx__need_sid(const msgpack_object *o, const char *key, uint32_t *sid, struct sbx_err *err);
/* The @n stream ids of one result (0: none) are distinct: -1 with @err naming the second of two
 * equal ones (@keys their fields) otherwise. A client would take one stream's frames for another
 * stream, and wait for ever for the end of the one it never tracked. */
int sbx__distinct_sids(const uint32_t *sids, const char *const *keys, size_t n,
                       struct sbx_err *err);

#endif /* SBX_SCHEMA_INT_H */
