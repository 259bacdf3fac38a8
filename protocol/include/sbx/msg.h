/*
 * sbx messages: decode a frame's payload into a typed view, read params through checked
 * accessors, and encode requests, responses, notifications and stream data.
 *
 *   request       [0, id, method, params]
 *   response      [1, id, error|nil, result]
 *   notification  [2, method, params]
 *   stream data   [3, stream, data:bin]
 *
 * Decoding never trusts a msgpack header: a pre-scan checks nesting depth, the object count and
 * every length against the bytes actually present before msgpack-c builds objects, so no header
 * can make it allocate more than the frame itself justifies.
 */
#ifndef SBX_MSG_H
#define SBX_MSG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <msgpack.h>

#include "sbx/err.h"
#include "sbx/limits.h"

enum sbx_msg_kind {
    SBX_MSG_REQUEST = 0,
    SBX_MSG_RESPONSE = 1,
    SBX_MSG_NOTIFY = 2,
    SBX_MSG_DATA = 3,
};

/* A decoded message. Pointers refer into the frame buffer and the decoder's zone. */
struct sbx_msg {
    int kind;
    bool id_valid;      /* a request id could be read, even if decoding failed */
    uint32_t id;        /* request, response */
    const char *method; /* request, notification; not NUL-terminated */
    uint32_t method_len;
    const msgpack_object *params; /* request, notification: a map, or NULL for none */
    const msgpack_object *error;  /* response: a map, or NULL on success */
    const msgpack_object *result; /* response */
    uint32_t stream;              /* data */
    const uint8_t *data;          /* data: points into the frame buffer, never copied */
    uint32_t data_len;
    msgpack_object root;
};

/* Holds the memory msgpack-c builds objects in; reused (cleared) for each message. */
struct sbx_decoder {
    msgpack_zone zone;
};

/* Returns 0, or -1 when out of memory. */
int sbx_decoder_init(struct sbx_decoder *d);
void sbx_decoder_destroy(struct sbx_decoder *d);

/*
 * Check that @buf[0..len) is exactly one msgpack value within the depth, object-count and length
 * limits. Returns 0 or -1 with BAD_MESSAGE in @err. Exposed for tests and fuzzing.
 */
int sbx_msgpack_validate(const uint8_t *buf, size_t len, struct sbx_err *err);

/*
 * The same checks for the first of several values back to back (a stream of records): with
 * @used, stops after the first value and stores its length there; without, as
 * sbx_msgpack_validate. Returns 0 or -1 with BAD_MESSAGE in @err.
 */
int sbx_msgpack_scan(const uint8_t *buf, size_t len, size_t *used, struct sbx_err *err);

/*
 * Decode one frame payload. Returns 0 with @m filled, or -1 with @err set (BAD_MESSAGE, or
 * INTERNAL when out of memory); on -1, m->id_valid tells whether m->id names the request so an
 * error response can be addressed. @m stays valid until the next decode on @d and as long as
 * @buf is unchanged. A stream-data message that fails (an empty or over-long payload) leaves
 * m->kind SBX_MSG_DATA and m->stream set when the stream id could be read.
 */
int sbx_msg_decode(struct sbx_decoder *d, const uint8_t *buf, size_t len, struct sbx_msg *m,
                   struct sbx_err *err);

/* True when the message's method equals @name. */
bool sbx_msg_method_is(const struct sbx_msg *m, const char *name);

/* --- params accessors ------------------------------------------------------------------ */

enum { SBX_OPTIONAL = 0, SBX_REQUIRED = 1 };

/*
 * Each accessor looks @key up in the map @params (NULL counts as an empty map). A nil value
 * counts as absent. Returns 0 when found and valid, 1 when absent and optional (outputs
 * untouched), or -1 with BAD_PARAM naming the field when missing-but-required, of the wrong type,
 * out of range or too long.
 */
const msgpack_object *sbx_obj_get(const msgpack_object *map, const char *key);
int sbx_param_str(const msgpack_object *params, const char *key, int required, size_t max,
                  const char **s, size_t *len, struct sbx_err *err);
/* Like sbx_param_str, but copies into @buf NUL-terminated and refuses embedded NUL bytes. */
int sbx_param_cstr(const msgpack_object *params, const char *key, int required, char *buf,
                   size_t bufsz, struct sbx_err *err);
int sbx_param_u64(const msgpack_object *params, const char *key, int required, uint64_t min,
                  uint64_t max, uint64_t *out, struct sbx_err *err);
int sbx_param_i64(const msgpack_object *params, const char *key, int required, int64_t min,
                  int64_t max, int64_t *out, struct sbx_err *err);
int sbx_param_bool(const msgpack_object *params, const char *key, int required, bool *out,
                   struct sbx_err *err);
int sbx_param_bin(const msgpack_object *params, const char *key, int required, size_t max,
                  const uint8_t **p, size_t *len, struct sbx_err *err);
int sbx_param_map(const msgpack_object *params, const char *key, int required, uint32_t max_entries,
                  const msgpack_object **out, struct sbx_err *err);
int sbx_param_array(const msgpack_object *params, const char *key, int required, uint32_t max_items,
                    const msgpack_object **out, struct sbx_err *err);

/*
 * An OS byte string (PROTOCOL.md "bstr"): accepted as str or bin, copied into @buf NUL-terminated;
 * BAD_PARAM if absent-but-required, another type, too long or containing NUL.
 */
int sbx_param_bstr(const msgpack_object *params, const char *key, int required, char *buf,
                   size_t bufsz, struct sbx_err *err);
/* The bytes of a str or bin object; false for other types and for NULL (a key sbx_obj_get did
 * not find: a peer's record may lack any field). */
bool sbx_obj_bytes(const msgpack_object *o, const char **p, size_t *n);

/* Copy a msgpack str object into @buf NUL-terminated; -1 if NULL, not a str, too long or has
 * NUL. */
int sbx_obj_cstr(const msgpack_object *o, char *buf, size_t bufsz);

/* Read an error map (from a response or stream.end) into @e. Unknown fields are ignored. */
void sbx_err_from_obj(const msgpack_object *o, struct sbx_err *e);

/* --- encoding ---------------------------------------------------------------------------- */

/*
 * An output buffer holding one or more complete frames. Begin a frame, pack exactly one msgpack
 * value with the sbx_pack_* helpers (or msgpack_pack_* on o->pk), then end it.
 */
struct sbx_out {
    msgpack_sbuffer sb;
    msgpack_packer pk;
    size_t start;
    int failed;
};

void sbx_out_init(struct sbx_out *o);
void sbx_out_destroy(struct sbx_out *o);
/* Forget the contents but keep the memory. */
void sbx_out_reset(struct sbx_out *o);
/* Steal the bytes (caller frees with free()); @o is empty afterwards. */
char *sbx_out_steal(struct sbx_out *o, size_t *len);

void sbx_out_begin(struct sbx_out *o);
/*
 * Patch the length prefix of the frame begun last. Returns 0, or -1 (and drops the frame) when
 * memory ran out or it exceeds SBX_FRAME_MAX.
 */
int sbx_out_end(struct sbx_out *o, struct sbx_err *err);

/* Message heads: the caller packs the params map / result value right after. */
void sbx_pack_request_head(msgpack_packer *pk, uint32_t id, const char *method);
void sbx_pack_response_head(msgpack_packer *pk, uint32_t id); /* [1, id, nil, <result> */
void sbx_pack_notify_head(msgpack_packer *pk, const char *method);
/* A complete error response [1, id, {error}, nil]. */
void sbx_pack_error_response(msgpack_packer *pk, uint32_t id, const struct sbx_err *e);
/* The error map alone. */
void sbx_pack_err(msgpack_packer *pk, const struct sbx_err *e);

void sbx_pack_cstr(msgpack_packer *pk, const char *s);
void sbx_pack_strn(msgpack_packer *pk, const char *s, size_t n);
void sbx_pack_bin(msgpack_packer *pk, const void *p, size_t n);
/* An OS byte string: str when the bytes are valid UTF-8, bin otherwise. */
void sbx_pack_bstr(msgpack_packer *pk, const char *s, size_t n);
/* True when @s[0..n) is valid UTF-8. */
bool sbx_utf8_valid(const char *s, size_t n);
/* Lowercase hex of @n bytes into @out (2n + 1 bytes, NUL-terminated), e.g. a sha256 digest. */
void sbx_hex(const uint8_t *p, size_t n, char *out);
/* Map entries with a string key. */
void sbx_pack_kv_str(msgpack_packer *pk, const char *k, const char *v); /* NULL packs nil */
void sbx_pack_kv_u64(msgpack_packer *pk, const char *k, uint64_t v);
void sbx_pack_kv_i64(msgpack_packer *pk, const char *k, int64_t v);
void sbx_pack_kv_bool(msgpack_packer *pk, const char *k, bool v);
void sbx_pack_kv_nil(msgpack_packer *pk, const char *k);

/*
 * Write the frame header of a stream-data message carrying @len payload bytes on @stream into
 * @out: length prefix + [3, stream, bin header]. Returns its size; the frame is these bytes
 * followed by the payload, so a sender can writev() the payload from where it already is.
 */
size_t sbx_data_header(uint8_t out[SBX_STREAM_DATA_HDR_MAX], uint32_t stream, uint32_t len);

#endif /* SBX_MSG_H */
