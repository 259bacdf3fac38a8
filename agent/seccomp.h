/* seccomp.h: the per-workload seccomp filter (seccomp.c), stacked on every process the agent
 * starts. */
#ifndef SBX_AGENT_SECCOMP_H
#define SBX_AGENT_SECCOMP_H

#include "filter.h"

/*
 * Compiles the per-workload filter of @mode (nothing for off and baseline) once, at start-up,
 * before any thread exists; it is read-only from then on. Returns 0 or a negative errno.
 */
int agent_seccomp_init(enum sbx_filter_mode mode);

/*
 * Loads it onto the calling process: a spawned child, before its identity switch (loading
 * without no_new_privs needs the root it still is). No allocation, raw system calls only: the
 * child shares the agent's memory. Returns 0, or -1 with errno set.
 */
int agent_seccomp_enter(void);

#endif /* SBX_AGENT_SECCOMP_H */
