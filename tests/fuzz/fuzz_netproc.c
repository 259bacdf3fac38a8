/*
 * libFuzzer target for agent/netproc.c's /proc/net table reader: the input is a table's text,
 * read as each of the four tables (tcp, tcp6, udp, udp6) into a list capped small, so the cap
 * path runs too (a cap that is not a multiple of the list's first 64 entries, so the growth is
 * cut to it). Every entry that comes out must be well-formed, and a list marked truncated holds
 * exactly the cap's worth of entries (the other cause, out of memory, cannot happen for 100).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "netproc.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    for (unsigned ti = 0; ti < AGENT_NET_TABLES; ti++) {
        struct agent_net_list l = { .max = 100 };
        FILE *f;

        if (size == 0) {
            return 0;
        }
        f = fmemopen((void *)data, size, "r");
        if (f == NULL) {
            return 0;
        }
        agent_net_read_table(&l, ti, f);
        fclose(f);
        for (unsigned i = 0; i < l.n; i++) {
            const struct agent_net_sock *e = &l.e[i];
            if (e->table != ti || memchr(e->addr, '\0', sizeof(e->addr)) == NULL ||
                (!agent_net_tables[ti].tcp && e->port == 0)) {
                fprintf(stderr, "fuzz_netproc: entry %u of table %u is malformed\n", i, ti);
                abort();
            }
        }
        if (l.n > l.max || (l.truncated && l.n != l.max)) {
            fprintf(stderr, "fuzz_netproc: %u entries under a cap of %u (truncated %d)\n", l.n,
                    l.max, l.truncated);
            abort();
        }
        free(l.e);
    }
    return 0;
}
