/* The net family (net.c): TCP connections from inside the guest and its listening sockets. */
#ifndef SBX_AGENT_NET_H
#define SBX_AGENT_NET_H

#include "agent.h"

/* net.listening: entries in one answer (PROTOCOL.md §20.2); more set `truncated`. */
#define AGENT_NET_LISTENING_MAX 4096u
/* net.listening: bounds of the search for the processes holding the sockets (a scan of every
 * /proc/PID/fd, on a threadpool worker): fd links read, and time. Entries not found by then have
 * pid nil. */
#define AGENT_NET_SCAN_FDS_MAX (1u << 20)
#define AGENT_NET_SCAN_MS      2000u
/* net.connect: a socket that stopped reading because memory ran out tries again after this long
 * (one stopped at the agent-wide output buffer cap waits for agent_net_resume instead). */
#define AGENT_NET_RETRY_MS 10u
/* net.connect: a socket whose streams are both finished while its last bytes still go to the peer
 * is closed when no write completed for this long (a peer that never reads would keep it, the
 * bytes it holds and its place under max_streams / 2 for the connection's life). */
#define AGENT_NET_LINGER_MS 15000u

/*
 * net.connect (PROTOCOL.md §20.1): connect a TCP socket to an address literal and answer {in,
 * out} once connected (AGENT_LATER), or -1 with @err (BAD_PARAM, LIMIT max_streams, an errno
 * error of connect). The socket is this connection's: it is closed when both streams are finished
 * or when the connection ends. Each connection has at most SBX_MAX_STREAMS / 2 sockets, counting
 * those still connecting and those still flushing their last bytes.
 */
int agent_net_connect(struct agent_conn *c, const struct sbx_msg *m, struct sbx_err *err);

/* The sockets that stopped reading at the agent-wide output buffer cap read again (agent_buf_put
 * calls this once the buffers in use fall under SBX_AGENT_BUFS_LOW, as for the output pipes). */
void agent_net_resume(struct agent *a);

/*
 * net.listening (PROTOCOL.md §20.2): the TCP sockets in LISTEN and the bound UDP sockets of the
 * agent's network namespace, with a process holding each. Runs on the threadpool, one request of
 * a connection at a time (later ones wait their turn); answers later (AGENT_LATER) or -1 with @err.
 */
int agent_net_listening(struct agent_conn *c, const struct sbx_msg *m, struct sbx_err *err);

#endif /* SBX_AGENT_NET_H */
