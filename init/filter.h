/*
 * filter.h: the guest's seccomp filters, shared by sbx-init, which loads the baseline into every
 * agent it starts, and sbx-agent, which stacks the per-workload filter onto every process it
 * spawns (docs/INIT.md "Seccomp"). Both are deny lists over a default of "allow": the VM is the
 * boundary; the filters take away the kernel surface a sandbox has no use for.
 */
#ifndef SBX_GUEST_FILTER_H
#define SBX_GUEST_FILTER_H

#include <linux/filter.h>
#include <stdbool.h>
#include <string.h>

/* sbx.seccomp= (init) and --seccomp (agent). */
enum sbx_filter_mode {
    SBX_FILTER_OFF,      /* no filter at all */
    SBX_FILTER_BASELINE, /* init's baseline only */
    SBX_FILTER_STRICT,   /* baseline + the per-workload filter: the default */
    SBX_FILTER_LOG,      /* both, but every denial is logged (SECCOMP_RET_LOG) and allowed */
};
#define SBX_FILTER_MODE_DEFAULT SBX_FILTER_STRICT

/* Which filter: init's baseline (agent and everything below it), or the workload's addition. */
enum sbx_filter_kind { SBX_FILTER_KIND_BASELINE, SBX_FILTER_KIND_WORKLOAD };

/* A compiled filter: a BPF program ready for prctl(PR_SET_SECCOMP). prog.len 0: none. */
struct sbx_filter {
    struct sock_fprog prog; /* prog.filter points into memory sbx_filter_free() releases */
};

/* The name of mode @m: "off", "baseline", "strict" or "log". */
static inline const char *sbx_filter_mode_name(enum sbx_filter_mode m)
{
    static const char *const names[] = { "off", "baseline", "strict", "log" };

    return names[m];
}

/* Parses a mode name; the enum sbx_filter_mode value, or -1. */
static inline int sbx_filter_mode_parse(const char *s)
{
    for (int m = SBX_FILTER_OFF; m <= SBX_FILTER_LOG; m++) {
        if (strcmp(s, sbx_filter_mode_name((enum sbx_filter_mode)m)) == 0) {
            return m;
        }
    }
    return -1;
}

/* True when @mode has a filter of @kind (off has none; baseline no workload filter). */
static inline bool sbx_filter_applies(enum sbx_filter_kind kind, enum sbx_filter_mode mode)
{
    return mode != SBX_FILTER_OFF &&
           (kind == SBX_FILTER_KIND_BASELINE || mode != SBX_FILTER_BASELINE);
}

/*
 * Builds the filter of @kind for @mode and loads it onto the calling process, as
 * sbx_filter_compile() and sbx_filter_load() would together, for a process that may allocate and
 * exec's soon (init's child before it becomes the agent: the exec discards what libseccomp
 * allocated). Single-threaded callers only (no TSYNC). Needs CAP_SYS_ADMIN (no no_new_privs is
 * set). Returns 0 or a negative errno.
 */
int sbx_filter_install(enum sbx_filter_kind kind, enum sbx_filter_mode mode);

/*
 * Compiles the filter of @kind for @mode into @f, for the native ABI and its compat ABIs (x86-32
 * and x32 on x86-64, arm on arm64) with the same rules. A mode without that kind (off; baseline
 * for the workload filter) leaves @f empty. Allocates; call it where allocating is safe (never in
 * a CLONE_VM child). libseccomp runs in a short-lived child of the caller, which must not have
 * threads yet and must not reap other children meanwhile. Returns 0 or a negative errno.
 */
int sbx_filter_compile(struct sbx_filter *f, enum sbx_filter_kind kind, enum sbx_filter_mode mode);

/*
 * Loads @f onto the calling thread (nothing for an empty one), stacked on any filter already
 * there and inherited by every child and across execve. Raw prctl(2) only: async-signal-safe,
 * no allocation, so a vfork/CLONE_VM child may call it. Without CAP_SYS_ADMIN the kernel demands
 * no_new_privs, which is then set first (a standalone agent run by a user); as root it is not,
 * so set-id programs (sudo) keep working below the filter. Returns 0, or -1 with errno set.
 */
int sbx_filter_load(const struct sbx_filter *f);

/* Frees what sbx_filter_compile() allocated; @f is empty afterwards. */
void sbx_filter_free(struct sbx_filter *f);

#endif
