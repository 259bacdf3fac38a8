/*
 * The gateway fuzz targets link jansson as Debian builds it: not instrumented, so ASan cannot see
 * jansson read a value that was already freed (a params object that went with its call, say).
 * Each call below is wrapped (gateway.cmake links with -Wl,--wrap=NAME): the value's header is
 * read here first, in instrumented code, so such a use is reported where it happens. The
 * wrappers change nothing else.
 */
#include <jansson.h>

static void fz_json_touch(const json_t *v)
{
    if (v != NULL) {
        (void)*(volatile const json_type *)&v->type;
        (void)*(volatile const size_t *)&v->refcount;
    }
}

/* NAME's wrapper: touch the value in its first argument, then call the real NAME. */
#define FZ_WRAP1(ret, name, t1)                                                                    \
    ret __real_##name(t1 a);                                                                       \
    ret __wrap_##name(t1 a);                                                                       \
    ret __wrap_##name(t1 a)                                                                        \
    {                                                                                              \
        fz_json_touch((const json_t *)a);                                                          \
        return __real_##name(a);                                                                   \
    }
#define FZ_WRAP2(ret, name, t1, t2)                                                                \
    ret __real_##name(t1 a, t2 b);                                                                 \
    ret __wrap_##name(t1 a, t2 b);                                                                 \
    ret __wrap_##name(t1 a, t2 b)                                                                  \
    {                                                                                              \
        fz_json_touch((const json_t *)a);                                                          \
        return __real_##name(a, b);                                                                \
    }
#define FZ_WRAP3(ret, name, t1, t2, t3)                                                            \
    ret __real_##name(t1 a, t2 b, t3 c);                                                           \
    ret __wrap_##name(t1 a, t2 b, t3 c);                                                           \
    ret __wrap_##name(t1 a, t2 b, t3 c)                                                            \
    {                                                                                              \
        fz_json_touch((const json_t *)a);                                                          \
        return __real_##name(a, b, c);                                                             \
    }

FZ_WRAP2(json_t *, json_object_get, const json_t *, const char *)
FZ_WRAP3(json_t *, json_object_getn, const json_t *, const char *, size_t)
FZ_WRAP1(size_t, json_object_size, const json_t *)
FZ_WRAP3(int, json_object_set_new, json_t *, const char *, json_t *)
FZ_WRAP2(int, json_object_del, json_t *, const char *)
FZ_WRAP1(void *, json_object_iter, json_t *)
FZ_WRAP1(size_t, json_array_size, const json_t *)
FZ_WRAP2(json_t *, json_array_get, const json_t *, size_t)
FZ_WRAP2(int, json_array_append_new, json_t *, json_t *)
FZ_WRAP1(const char *, json_string_value, const json_t *)
FZ_WRAP1(size_t, json_string_length, const json_t *)
FZ_WRAP1(json_int_t, json_integer_value, const json_t *)
FZ_WRAP1(double, json_real_value, const json_t *)
FZ_WRAP1(double, json_number_value, const json_t *)
FZ_WRAP2(char *, json_dumps, const json_t *, size_t)
