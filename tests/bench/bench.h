/*
 * Benchmark helpers shared by bench_proto, bench_agent, bench_floor and bench_repl: a monotonic
 * clock, order statistics over repeated samples, a barrier that keeps the compiler from
 * discarding measured work, spawning a process on given fds, writing a whole buffer, unix socket
 * addresses, and the one table format every benchmark prints (tests/bench/run.sh adds the
 * header).
 */
#ifndef SBX_BENCH_H
#define SBX_BENCH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* Nanoseconds on CLOCK_MONOTONIC. */
uint64_t bench_now_ns(void);

/* Sleep @ms milliseconds (restarts after signals). */
void bench_sleep_ms(long ms);

/* Make the compiler assume @p is read and everything it points to may have changed. */
static inline void bench_keep(const void *p)
{
    __asm__ volatile("" : : "g"(p) : "memory");
}

/* Order statistics of @n samples; sorts @v in place. @p is a fraction in [0, 1]. */
double bench_percentile(double *v, size_t n, double p);

/* Median, min and max of @n samples (sorts @v). */
struct bench_stat {
    double med, min, max;
    size_t n;
};
struct bench_stat bench_stat_of(double *v, size_t n);

/*
 * Print one row of the results table on stdout (markdown): what was measured, the median figure,
 * its spread over the repetitions, the baseline measured in the same run, the ratio, the target
 * and whether it is met ("yes", "NO", or "-" when there is no target). Strings may be "".
 */
void bench_row(const char *what, const char *figure, const char *spread, const char *baseline,
               const char *ratio, const char *target, const char *met);

/* Format helpers for rows: "%.2f GB/s" (1e9 bytes), a spread "min–max" in the same unit. */
void bench_fmt_gbps(char *buf, size_t n, double bytes_per_s);
void bench_fmt_spread(char *buf, size_t n, const struct bench_stat *s, double scale,
                      const char *unit);

/* posix_spawnp @argv with fds @in/@out/@err on 0/1/2 (-1: inherit). Returns the pid, or -1
 * after saying why on stderr. */
pid_t bench_spawn(const char *const *argv, int in, int out, int err);

/* User + system CPU seconds of @pid from /proc/PID/stat; -1 on error. */
double bench_proc_cpu_s(pid_t pid);

/* Write all @n bytes of @p to @fd (restarting after signals); 0, or -1 with errno set. */
int bench_write_all(int fd, const void *p, size_t n);

struct sockaddr_un;
/* @path as a unix socket address; 0, or -1 when it is too long. */
int bench_unix_addr(struct sockaddr_un *sa, const char *path);

/* Print a progress/diagnostic line on stderr, prefixed with the program name. */
void bench_note(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif /* SBX_BENCH_H */
