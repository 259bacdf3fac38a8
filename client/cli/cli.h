/*
 * The sbx CLI: shared state, the command entry points, and the helpers they share (JSON in and
 * out, durations, human output). The helpers live in the sbxcli library so unit tests link them.
 */
#ifndef SBX_CLI_H
#define SBX_CLI_H

#include <getopt.h>
#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <msgpack.h>

#include "sbx/client.h"
#include "sbx/err.h"
#include "sbx/schema.h"

/* Exit statuses of the CLI itself (exec passes the remote status through instead). */
#define CLI_EXIT_FAIL  1
#define CLI_EXIT_USAGE 2

/* Bytes of stdout / stderr `sbx exec --json` keeps per stream; the rest is dropped. */
#define CLI_CAPTURE_MAX (16u << 20)

/* Global options and the connection, passed to every command. */
struct cli {
    const char *addr;
    const char *token;
    bool json;
    int connect_timeout_ms;
};

/*
 * Connect to cli->addr and say hello. Returns the client, or NULL after printing
 * "sbx: <message>" to stderr.
 */
struct sbx_client *cli_connect(const struct cli *cli);

/* What cli_parse_simple returns when it printed the help, or found a bad option. */
#define CLI_OPTS_HELP (-1)
#define CLI_OPTS_BAD  (-2)

/*
 * Parse the options every simple command takes (-h/--help, --json) from argv[1..]. Prints
 * @usage on --help (to stdout) or on a bad option (to stderr). Returns the index of the first
 * positional argument, or CLI_OPTS_HELP / CLI_OPTS_BAD.
 */
int cli_parse_simple(struct cli *cli, int argc, char **argv, const char *usage);

/*
 * For commands that take only --json/--help and no arguments: parse, then connect and hello.
 * Returns the client, or NULL with *status the exit status (0 after --help).
 */
struct sbx_client *cli_connect_simple(struct cli *cli, int argc, char **argv, const char *usage,
                                      int *status);

/* The long options most commands end their table with: --json, then --help and the end mark. */
#define CLI_OPT_JSON                                                                               \
    {                                                                                              \
        "json", no_argument, NULL, 'j'                                                             \
    }
#define CLI_OPTS_END                                                                               \
    { "help", no_argument, NULL, 'h' },                                                            \
    {                                                                                              \
        NULL, 0, NULL, 0                                                                           \
    }

/*
 * getopt_long for a command: sets cli->json on 'j' and goes on, prints @usage to stdout on 'h'
 * (returns CLI_OPTS_HELP) or to stderr on a bad option (returns CLI_OPTS_BAD). Otherwise returns
 * the option, or 0 after the last one (optind is then the first positional argument).
 */
int cli_getopt(struct cli *cli, int argc, char **argv, const char *shortopts,
               const struct option *longopts, const char *usage);

/* Send the request begun with sbx_client_begin (@id) and wait for its response. 0 or -1. */
int cli_rpc(struct sbx_client *c, uint32_t id, struct sbx_msg *resp, struct sbx_err *err);

/*
 * Prints a command's result; 0, or -1 with @err set (printed by cli_run_simple).
 */
typedef int (*cli_result_fn)(const struct cli *cli, const msgpack_object *res, struct sbx_err *err);

/*
 * A command with no arguments (--json/--help only) that sends @method without params (NULL:
 * prints the hello result, when there is one) and hands the result to @print. Errors are
 * printed as "sbx: argv[0]: ...". Returns the exit status.
 */
int cli_run_simple(struct cli *cli, int argc, char **argv, const char *usage, const char *method,
                   cli_result_fn print);

/* cli_rpc for a request whose result opens a stream: *sid = result.stream. 0 or -1. */
int cli_rpc_stream(struct sbx_client *c, uint32_t id, uint32_t *sid, struct sbx_err *err);

/* Exit status for a cli_parse_simple result below 1. */
int cli_opts_status(int r);

/* Print "sbx: <cmd>: <message> (<code>)" to stderr. */
void cli_print_err(const char *cmd, const struct sbx_err *err);

/* Commands: argv[0] is the command name; each returns the process exit status. */
int cli_cmd_exec(struct cli *cli, int argc, char **argv);
int cli_cmd_sh(struct cli *cli, int argc, char **argv);
int cli_cmd_shell(struct cli *cli, int argc, char **argv);
int cli_cmd_ping(struct cli *cli, int argc, char **argv);
int cli_cmd_info(struct cli *cli, int argc, char **argv);
int cli_cmd_hello(struct cli *cli, int argc, char **argv);
int cli_cmd_call(struct cli *cli, int argc, char **argv);
int cli_cmd_env(struct cli *cli, int argc, char **argv);
int cli_cmd_ps(struct cli *cli, int argc, char **argv);
int cli_cmd_kill(struct cli *cli, int argc, char **argv);
int cli_cmd_wait(struct cli *cli, int argc, char **argv);
int cli_cmd_cp(struct cli *cli, int argc, char **argv);
int cli_cmd_pack(struct cli *cli, int argc, char **argv);
int cli_cmd_fs(struct cli *cli, int argc, char **argv);
int cli_cmd_repl(struct cli *cli, int argc, char **argv);

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

/*
 * Pack "@key: signal" for the wire: the "SIGxxx" name for the classic signals 1..31, the number
 * for real-time signals (which have no portable names in the protocol).
 */
void cli_pack_signal(msgpack_packer *pk, const char *key, int sig);

/* Parse a decimal uint64 (no sign, no spaces). Returns 0 or -1. */
int cli_parse_u64(const char *s, uint64_t *out);

/* Print a msgpack value for humans: str and bin raw, nil "-", arrays space-separated, maps as
 * JSON. */
void cli_print_human(FILE *f, const msgpack_object *o);

/* Write @n bytes to @fd completely (EINTR-safe, polls on EAGAIN). Returns 0 or -errno. */
int cli_write_all(int fd, const void *p, size_t n);

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

/* True while raw mode is in effect. */
bool cli_tty_is_raw(void);

#endif /* SBX_CLI_H */
