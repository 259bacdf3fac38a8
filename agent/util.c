/* Small helpers shared by the agent: lists, the buffer pool, clocks, logging. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "agent.h"
#include "net.h"
#include "proc.h"

void agent_list_init(struct agent_link *head)
{
    head->prev = head->next = head;
}

void agent_list_add_tail(struct agent_link *head, struct agent_link *node)
{
    node->prev = head->prev;
    node->next = head;
    head->prev->next = node;
    head->prev = node;
}

void agent_list_del(struct agent_link *node)
{
    node->prev->next = node->next;
    node->next->prev = node->prev;
    node->prev = node->next = node;
}

bool agent_list_empty(const struct agent_link *head)
{
    return head->next == head;
}

/* Raw pool: fixed-size AGENT_POOLBUF buffers, a few kept for reuse. Fresh memory costs a page
 * fault per page on first touch (and malloc of this size is an mmap + munmap each time), which
 * on a paravirtualised guest costs more than the copy itself. */
static void *pool_get(struct agent *a)
{
    return a->npool > 0 ? a->pool[--a->npool] : malloc(AGENT_POOLBUF);
}

static void pool_put(struct agent *a, void *buf)
{
    if (a->npool < AGENT_POOL_KEEP) {
        a->pool[a->npool++] = buf;
    } else {
        free(buf);
    }
}

void *agent_buf_get(struct agent *a)
{
    void *buf = pool_get(a);

    if (buf != NULL) {
        a->bufs_used++;
    }
    return buf;
}

void agent_buf_put(struct agent *a, void *buf)
{
    a->bufs_used--;
    pool_put(a, buf);
    if (a->bufs_starved && a->bufs_used < SBX_AGENT_BUFS_LOW) {
        a->bufs_starved = false;
        agent_proc_pipes_resume(a);
        agent_net_resume(a);
    }
}

int agent_tail_add(struct agent_tail *t, const uint8_t *data, uint32_t n)
{
    if (n == 0) {
        return 0;
    }
    if (n > UINT32_MAX - t->len) {
        return -1;
    }
    if (t->len + n > t->cap) {
        uint64_t cap = t->cap != 0 ? t->cap : 4096;
        uint8_t *b;

        while (cap < (uint64_t)t->len + n) {
            cap *= 2;
        }
        cap = cap > UINT32_MAX ? UINT32_MAX : cap;
        b = realloc(t->buf, (size_t)cap);
        if (b == NULL) {
            return -1;
        }
        t->buf = b;
        t->cap = (uint32_t)cap;
    }
    memcpy(t->buf + t->len, data, n);
    t->len += n;
    return 0;
}

uint8_t *agent_tail_take(struct agent_tail *t, uint32_t *len)
{
    uint8_t *b = t->buf;

    *len = t->len;
    t->buf = NULL;
    t->len = t->cap = 0;
    return b;
}

void agent_tail_free(struct agent_tail *t)
{
    free(t->buf);
    t->buf = NULL;
    t->len = t->cap = 0;
}

struct agent_slab *agent_slab_new(struct agent *a)
{
    uint8_t *data = pool_get(a);
    struct agent_slab *s = data != NULL ? agent_slab_wrap(data, AGENT_POOLBUF) : NULL;

    if (s == NULL && data != NULL) {
        pool_put(a, data);
    }
    return s;
}

struct agent_slab *agent_slab_wrap(uint8_t *data, uint32_t cap)
{
    struct agent_slab *s = malloc(sizeof(*s));

    if (s == NULL) {
        return NULL;
    }
    s->data = data;
    s->cap = cap;
    s->refs = 1;
    return s;
}

void agent_slab_release(struct agent *a, struct agent_slab *s)
{
    if (--s->refs > 0) {
        return;
    }
    if (s->cap == AGENT_POOLBUF) {
        pool_put(a, s->data);
    } else {
        free(s->data);
    }
    free(s);
}

void *agent_pool_take(struct agent *a, uint32_t *cap)
{
    *cap = AGENT_POOLBUF;
    return pool_get(a);
}

static uint64_t clock_ns(clockid_t id)
{
    struct timespec ts;

    (void)clock_gettime(id, &ts); /* cannot fail for these clocks */
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

uint64_t agent_now_ns(void)
{
    return clock_ns(CLOCK_MONOTONIC);
}

uint64_t agent_realtime_ns(void)
{
    return clock_ns(CLOCK_REALTIME);
}

uint64_t agent_boottime_ns(void)
{
    return clock_ns(CLOCK_BOOTTIME);
}

void agent_log(const char *fmt, ...)
{
    char line[512];
    va_list ap;

    va_start(ap, fmt);
    (void)vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    (void)fprintf(stderr, "sbx-agent: %s\n", line);
}
