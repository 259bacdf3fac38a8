/*
 * seccomp.c: the per-workload seccomp filter. sbx-init's baseline (init/filter.c) already
 * filters the agent and everything below it; this one is stacked on each spawned process only,
 * because what it takes away (AF_VSOCK) the agent itself needs. Compiled once (libseccomp
 * allocates), loaded in the CLONE_VM child as a ready BPF program.
 */
#include "seccomp.h"

/* The compiled program: written once by agent_seccomp_init before any thread or child exists,
 * only read afterwards (by children, which share this memory). */
static struct sbx_filter workload_filter;

int agent_seccomp_init(enum sbx_filter_mode mode)
{
    return sbx_filter_compile(&workload_filter, SBX_FILTER_KIND_WORKLOAD, mode);
}

int agent_seccomp_enter(void)
{
    return sbx_filter_load(&workload_filter);
}
