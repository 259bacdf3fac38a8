/*
 * The sbx CLI: shared state, the command entry points, and the helpers they share (JSON in and
 * out, durations, human output). The helpers live in the sbxcli library so unit tests link them.
 */
#ifndef SBX_CLI_H
#define SBX_CLI_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <msgpack.h>

#include "sbx/client.h"
#include "sbx/err.h"
#include "sbx/schema.h"
#include "sbx/transfer.h"

/* Exit statuses of the CLI itself (exec passes the remote status through instead; its own
 * failures, usage errors included, are CLI_EXIT_SBX, as docker uses 125). */
#define CLI_EXIT_FAIL  1
#define CLI_EXIT_USAGE 2
#define CLI_EXIT_SBX   125

/* --keepalive's default: a ping after 15 s of silence from the agent, the end 30 s after it. */
#define CLI_KEEPALIVE_MS 15000

/* Bytes of stdout / stderr `sbx exec --json` keeps per stream; the rest is dropped. */
#define CLI_CAPTURE_MAX (16u << 20)

/* Global options, and the command being run, passed to every command. */
struct cli {
    const char *addr;
    const char *token;
    bool json;
    int connect_timeout_ms;
    int keepalive_ms;     /* --keepalive: sbx_client_set_keepalive (0: off) */
    const char *identity; /* -u/--user of fs, cp, pack: who the file families act as */
    const char *cmd;      /* the command's name */
    int argc;             /* its positional arguments, once its options are parsed */
    char **argv;
};

/* For commands that pipeline their first request behind hello (the table's .pipeline): wait
 * for the hello response. 0, or -1 after printing "sbx: hello: <message>". */
int cli_hello_wait(struct sbx_client *c);

/* What a command's parse hook returns for a usage error: main prints the usage. */
#define CLI_OPTS_BAD (-2)

/*
 * Finish typed call @r (what sbx_foo(sbx_client_conn(c), ..., &id, err) returned) as
 * sbx_client_call does. *@id is read only after @r was computed, so the typed call can be written
 * in the argument list. 0 with *@resp, or -1 with @err.
 */
int cli_call(struct sbx_client *c, int r, const uint32_t *id, struct sbx_msg *resp,
             struct sbx_err *err);

/* Print "sbx: <cmd>: <message> (<code>)" to stderr (cli_say), the code left out when the
 * message has it. */
void cli_print_err(const char *cmd, const struct sbx_err *err);

/*
 * The commands, as main.c's table names their parts. A command's parse hook gets each of its own
 * options (the ones its table entry lists besides --json and --help), then opt 0 once
 * cli->argc/argv hold the positional arguments; it returns 0 to go on, CLI_OPTS_BAD for a usage
 * error (main prints the usage), or an exit status after printing why. Then main connects and
 * hands the client to run, which returns the exit status. Without a parse hook a command takes
 * no positional arguments.
 */
typedef int cli_parse_fn(struct cli *cli, int opt, const char *arg);
typedef int cli_run_fn(struct cli *cli, struct sbx_client *c);
/* Prints a command's result; 0, or -1 with @err set (main prints it). */
typedef int cli_print_fn(const struct cli *cli, const msgpack_object *res, struct sbx_err *err);

cli_parse_fn cli_parse_exec, cli_parse_ping, cli_parse_call, cli_parse_env, cli_parse_proc,
    cli_parse_repl, cli_parse_cp, cli_parse_pack, cli_parse_fs, cli_parse_attach, cli_parse_forward;
cli_run_fn cli_cmd_exec, cli_cmd_ping, cli_cmd_call, cli_cmd_env, cli_cmd_kill, cli_cmd_wait,
    cli_cmd_repl, cli_cmd_cp, cli_cmd_pack, cli_cmd_fs, cli_cmd_attach, cli_cmd_forward;
cli_print_fn cli_print_map, cli_print_procs, cli_print_ports;

/* --- json.c (jansson) --------------------------------------------------------------------- */

/*
 * @o as a jansson value (a new reference; NULL when out of memory). str -> JSON string (each
 * byte that does not start valid UTF-8 becomes U+FFFD), bin -> base64 string (standard alphabet,
 * padded), nil -> null, non-finite floats -> null, integers above INT64_MAX -> the nearest double
 * (jansson's integers are int64), non-string map keys -> their JSON text as the key.
 */
json_t *cli_json_from_msgpack(const msgpack_object *o);

/* @n bytes as a JSON string, invalid UTF-8 replaced as above (NULL when out of memory). */
json_t *cli_json_str(const char *s, size_t n);

/*
 * Write @j as compact JSON, keys in insertion order, each real with the fewest digits (15..17,
 * one count for the whole value) that read back exactly. Returns 0, or -1 when @j is NULL or
 * the stream reports an error.
 */
int cli_json_dump(FILE *f, json_t *j);

/* cli_json_dump(cli_json_from_msgpack(@o)). */
int cli_json_write(FILE *f, const msgpack_object *o);

/* cli_json_write(stdout, @o) and a newline. */
void cli_json_println(const msgpack_object *o);

/* cli_json_dump(cli_json_str(@s, @n)). */
void cli_json_write_str(FILE *f, const char *s, size_t n);

/*
 * Parse exactly one JSON value from @s[0..len) (surrounding whitespace allowed; jansson's
 * grammar, duplicate keys refused) and pack it with @pk: objects -> maps, arrays -> arrays,
 * strings -> str, integers -> int (int64 range), other numbers -> float64, true/false/null.
 * Nesting is capped at 32. Returns 0, or -1 with BAD_PARAM in @err ("bad JSON at byte N: ...")
 * and nothing packed.
 */
int cli_json_to_msgpack(const char *s, size_t len, msgpack_packer *pk, struct sbx_err *err);

/* --- util.c ------------------------------------------------------------------------------- */

/*
 * Parse a duration into milliseconds: "500ms", "10s", "2m", "1h", "1.5s", "1m30s"; a bare
 * number means seconds. Returns 0, or -1 on bad syntax or overflow.
 */
int cli_parse_duration(const char *s, uint64_t *ms);

/*
 * Parse a signal as PROTOCOL.md Appendix A writes it: a name with or without "SIG" in any case
 * ("TERM", "sigkill"), "SIG32".."SIG64", or a number 1..64. Returns the number or -1.
 */
int cli_parse_signal(const char *s);

/* Parse a decimal uint64 (no sign, no spaces). Returns 0 or -1. */
int cli_parse_u64(const char *s, uint64_t *out);

/* Print a msgpack value for humans: str and bin raw, nil "-", arrays space-separated, maps as
 * JSON. */
void cli_print_human(FILE *f, const msgpack_object *o);

/*
 * Text from the agent (error messages, file names, argv, environment) as a terminal may show it:
 * UTF-8 characters as they are, but control characters (C0 except tab, DEL, C1), the bidi
 * overrides and isolates, and bytes that are not UTF-8 as "\xHH" or "\uHHHH", so that nothing
 * the workload names can move the cursor, retitle or clear the window, or forge a line of
 * ours. cli_escape writes into @out (NUL-terminated, cut at @cap) and returns its length;
 * cli_put_text writes to @f. --json output gives the exact bytes instead.
 */
size_t cli_escape(char *out, size_t cap, const char *p, size_t n);
void cli_put_text(FILE *f, const char *p, size_t n);

/* Append @s to the NULL-terminated array *@v of *@n entries. 0, or -1 when out of memory. */
int cli_push(const char ***v, size_t *n, const char *s);

/* The monotonic clock in nanoseconds, for measuring durations and deadlines. */
uint64_t cli_now_ns(void);

/* Render a duration in nanoseconds for humans ("1.25s", "340ms", "2h03m"). */
void cli_format_ns(char *buf, size_t bufsz, uint64_t ns);

/* --- tty.c -------------------------------------------------------------------------------- */

/* The size a PTY gets when no local terminal tells us better. */
#define CLI_TTY_ROWS 24
#define CLI_TTY_COLS 80

/* The local window size from stdin, stdout or stderr (the first that is a terminal), else
 * CLI_TTY_ROWS x CLI_TTY_COLS. */
void cli_tty_size(unsigned *rows, unsigned *cols);

/*
 * Save terminal @fd's settings and put it in raw mode (cfmakeraw on a copy). The first call
 * also registers cli_tty_restore with atexit. Returns 0, or -1 with errno (nothing changed).
 */
int cli_tty_raw(int fd);

/* Raw mode again after cli_tty_restore (e.g. on SIGCONT after a stop); 0 when there is no saved
 * terminal, -1 with errno on failure. */
int cli_tty_reraw(void);

/* Put the saved settings back if raw mode is in effect. Idempotent and async-signal-safe. */
void cli_tty_restore(void);

/* cli_tty_restore, then drop the saved settings (cli_tty_reraw does nothing afterwards). */
void cli_tty_forget(void);

/* Print a one-line message to stderr, ending in "\n" ("\r\n" while the terminal is raw); the
 * arguments may be the agent's text: everything but that last newline goes through cli_escape. */
__attribute__((format(printf, 1, 2))) void cli_say(const char *fmt, ...);

#endif /* SBX_CLI_H */
