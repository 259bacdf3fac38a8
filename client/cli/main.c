/*
 * sbx: the command-line client. Global options, then the command table: every command's help,
 * options and arguments, and the one path that parses them, connects and reports failures.
 */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

#ifndef SBX_VERSION
#define SBX_VERSION "0.0.0"
#endif

/*
 * A command, run by run() below: it parses the options (@shortopts, NULL: "+h"; @longopts, NULL:
 * long_opts) and hands them and then the arguments to @parse (cli.h), prints @usage for --help
 * and on usage errors, connects, and calls @run, or makes the typed call @call and hands its
 * result to @print (@print alone: the hello result).
 */
struct command {
    const char *name, *summary, *usage;
    const char *shortopts;
    const struct option *longopts;
    cli_parse_fn *parse;
    cli_run_fn *run;
    int (*call)(struct sbx_conn *c, void *user, uint32_t *id, struct sbx_err *err);
    cli_print_fn *print;
    int fail;      /* the status for usage errors and failures before run (0: 2 and 1) */
    bool pipeline; /* hello is only sent: @run sends its first request, then cli_hello_wait */
    bool identity; /* takes -u/--user U: the file families act as U (sbx_conn_set_identity) */
};

/* What cli_getopt returns when it printed the help (CLI_OPTS_BAD: a bad option, cli.h). */
#define CLI_OPTS_HELP (-1)

/* The long options most commands end their table with: --json, then --help and the end mark. */
/* clang-format off */
#define CLI_OPT_JSON { "json", no_argument, NULL, 'j' }
#define CLI_OPTS_END { "help", no_argument, NULL, 'h' }, { NULL, 0, NULL, 0 }
/* clang-format on */

/* The options exec, sh and shell share, as their --help lists them, and their exit statuses. */
#define EXEC_OPTIONS_HELP                                                                          \
    "Options:\n"                                                                                   \
    "  -e, --env K=V      set a variable (repeatable); --env K copies K from here\n"               \
    "      --clear-env    start from an empty environment, not the agent's base env\n"             \
    "  -w, --cwd DIR      working directory\n"                                                     \
    "  -u, --user U       run as user name U, or UID, or UID:GID\n"                                \
    "      --timeout DUR  kill the process after DUR (e.g. 500ms, 10s, 2m)\n"
#define EXEC_STATUS_HELP                                                                           \
    "Exit status: the process's own, or 128+N when it was killed by signal N;\n"                   \
    "127 when the command is not found, 126 when it cannot be executed,\n"                         \
    "125 when sbx itself or the spawn failed otherwise.\n"
#define EXEC_HELP                                                                                  \
    "\n" EXEC_OPTIONS_HELP                                                                         \
    "  -t, --tty          run the process on a remote PTY (as 'sbx shell' does): stdout\n"         \
    "                     and stderr arrive merged on stdout, this terminal goes raw\n"            \
    "                     while it runs if stdin is one, window size changes are passed\n"         \
    "                     on; see 'sbx shell --help' for input without a terminal\n"               \
    "  -n, --no-stdin     give the process /dev/null as stdin (also automatic when this\n"         \
    "                     stdin is /dev/null or closed); with --tty: send it no input\n"           \
    "      --merge        send the process's stderr into its stdout stream\n"                      \
    "  -d, --detach       start the process and return at once: print its id (--json:\n"           \
    "                     {\"id\":N,\"pid\":P}) and exit 0; its stdin (unless -n), stdout and\n"   \
    "                     stderr are pipes nobody reads until 'sbx attach ID' (the agent\n"        \
    "                     keeps the most recent output to replay)\n"                               \
    "      --json         capture the output and print one JSON object at the end:\n"              \
    "                     {\"exit\":{...proc.exit...},\"stdout\":\"...\",\"stderr\":\"...\"}\n"    \
    "                     (output as JSON strings; invalid UTF-8 becomes U+FFFD; at most\n"        \
    "                     16 MiB per stream, then \"stdout_truncated\":true)\n"                    \
    "  -h, --help         show this help\n"                                                        \
    "\n"                                                                                           \
    "SIGINT, SIGTERM, SIGHUP and SIGQUIT received here are forwarded to the remote\n"              \
    "process group (after the third SIGINT sbx exits on its own with 130).\n"                      \
    "\n" EXEC_STATUS_HELP

/* 'T': --timeout (its old short form -t is --tty now, as in docker exec -t). */
#define EXEC_OPTS                                                                                  \
    { "env", required_argument, NULL, 'e' }, { "cwd", required_argument, NULL, 'w' },              \
        { "user", required_argument, NULL, 'u' }, { "timeout", required_argument, NULL, 'T' },     \
    {                                                                                              \
        "clear-env", no_argument, NULL, 'C'                                                        \
    }

static const struct option exec_opts[] = {
    EXEC_OPTS,
    { "no-stdin", no_argument, NULL, 'n' },
    { "merge", no_argument, NULL, 'm' },
    { "tty", no_argument, NULL, 't' },
    { "detach", no_argument, NULL, 'd' },
    CLI_OPT_JSON,
    CLI_OPTS_END,
};
static const struct option attach_opts[] = {
    { "from", required_argument, NULL, 'F' },
    { "stderr-from", required_argument, NULL, 'E' },
    { "steal", no_argument, NULL, 'S' },
    { "no-stdin", no_argument, NULL, 'n' },
    { "tty", no_argument, NULL, 't' },
    { "sig-proxy", no_argument, NULL, 'P' },
    CLI_OPT_JSON,
    CLI_OPTS_END,
};
static const struct option forward_opts[] = {
    { "verbose", no_argument, NULL, 'v' },
    CLI_OPTS_END,
};
static const struct option shell_opts[] = { EXEC_OPTS, CLI_OPTS_END };

/* The long options of the other commands: each takes the long forms of the short options its
 * entry lists (so "+t:h" takes -t and --timeout), and --json, --help. */
static const struct option long_opts[] = {
    { "count", required_argument, NULL, 'n' },   /* ping */
    { "signal", required_argument, NULL, 's' },  /* kill */
    { "group", no_argument, NULL, 'g' },         /* kill */
    CLI_OPT_JSON,                                /* all */
    { "timeout", required_argument, NULL, 't' }, /* wait, repl */
    { "eval", required_argument, NULL, 'e' },    /* repl */
    CLI_OPTS_END,
};

/* The long options of cp, pack and fs (fs: of all its subcommands, each taking those it reads;
 * -R is -r). */
/* clang-format off */
static const struct option cp_opts[] = {
    { "recursive", no_argument, NULL, 'r' }, { "compress", required_argument, NULL, 'z' },
    { "mode", required_argument, NULL, 'm' }, { "parents", no_argument, NULL, 'p' },
    { "no-clobber", no_argument, NULL, 'n' }, { "fsync", no_argument, NULL, 'F' },
    { "no-verify", no_argument, NULL, 'V' }, { "quiet", no_argument, NULL, 'q' },
    { "user", required_argument, NULL, 'u' }, CLI_OPTS_END,
};
static const struct option pack_opts[] = {
    { "output", required_argument, NULL, 'o' }, { "format", required_argument, NULL, 'f' },
    { "build", required_argument, NULL, 'b' }, { "entrypoint", required_argument, NULL, 'e' },
    { "arg", required_argument, NULL, 'a' }, { "exclude", required_argument, NULL, 'x' },
    { "quiet", no_argument, NULL, 'q' }, { "user", required_argument, NULL, 'u' }, CLI_OPTS_END,
};
static const struct option fs_opts[] = {
    { "cwd", required_argument, NULL, 'C' }, { "no-follow", no_argument, NULL, 'L' },
    { "mode", required_argument, NULL, 'm' }, { "parents", no_argument, NULL, 'p' },
    { "recursive", no_argument, NULL, 'r' }, { "symbolic", no_argument, NULL, 's' },
    { "directory", no_argument, NULL, 'd' }, { "append", no_argument, NULL, 'a' },
    { "dir", required_argument, NULL, 'D' }, { "prefix", required_argument, NULL, 'P' },
    { "suffix", required_argument, NULL, 'S' }, { "maxdepth", required_argument, NULL, 'x' },
    { "type", required_argument, NULL, 't' }, { "ext", required_argument, NULL, 'e' },
    { "match", required_argument, NULL, 'M' }, { "skip", required_argument, NULL, 'K' },
    { "follow", no_argument, NULL, 'F' }, { "root", required_argument, NULL, 'T' },
    { "exclude", required_argument, NULL, 'X' }, { "no-dirs", no_argument, NULL, 'N' },
    { "user", required_argument, NULL, 'u' }, CLI_OPT_JSON, CLI_OPTS_END,
};
/* clang-format on */

static const char exec_usage[] =
    "Usage: sbx exec [OPTIONS] [--] CMD [ARG...]\n"
    "\n"
    "Run CMD in the sandbox (PATH lookup in the guest), stream its stdout and stderr here,\n"
    "forward this stdin to it, and exit with its exit status.\n" EXEC_HELP;

static const char sh_usage[] =
    "Usage: sbx sh [OPTIONS] [--] 'COMMAND LINE'\n"
    "\n"
    "Run COMMAND LINE with /bin/sh -c in the sandbox (several arguments are joined with spaces);\n"
    "otherwise exactly like 'sbx exec'.\n" EXEC_HELP;

static const char shell_usage[] =
    "Usage: sbx shell [OPTIONS] [-- CMD [ARG...]]\n"
    "\n"
    "Open an interactive terminal session in the sandbox: CMD (default: /bin/sh -l) runs on\n"
    "a remote PTY of this terminal's size with TERM=$TERM (xterm-256color when unset), this\n"
    "terminal is in raw mode until sbx exits (every key, ^C and ^D included, goes to the\n"
    "remote side), and window size changes are passed on.\n"
    "\n" EXEC_OPTIONS_HELP "  -h, --help         show this help\n"
    "\n"
    "When this stdin is not a terminal there is no raw mode: the input is passed through\n"
    "as it is, and at its end sbx sends ^D (two when the last line is unfinished), the\n"
    "terminal's end-of-file, so a shell or cat reading it ends.\n"
    "\n"
    "SIGTERM or SIGHUP received here hangs up: the terminal is restored, the remote process\n"
    "group gets SIGHUP, and sbx exits with 128+N. SIGINT and SIGQUIT sent to sbx (not typed:\n"
    "typed ^C is a byte for the remote terminal) are forwarded to the remote process group.\n"
    "\n" EXEC_STATUS_HELP;

static const char attach_usage[] =
    "Usage: sbx attach [OPTIONS] ID\n"
    "\n"
    "Attach to process ID (as 'sbx ps' shows it; e.g. started by 'sbx exec --detach'):\n"
    "print its output from the replay buffer, then live (stdout here to stdout, stderr to\n"
    "stderr), forward this stdin to it, and exit with its status when it exits, as\n"
    "'sbx exec' does. When the agent no longer had the first bytes asked for, sbx says how\n"
    "many were dropped (\"sbx: attach: N bytes of stdout were dropped before offset M\";\n"
    "without --from, every byte before the replay's start counts).\n"
    "\n"
    "Options:\n"
    "      --from N         replay stdout (or PTY output) from byte offset N (default: the\n"
    "                       oldest byte the agent still has)\n"
    "      --stderr-from N  the same for stderr\n"
    "      --steal          take over even when another connection is attached (that one\n"
    "                       is cut off); without it a held process is BUSY\n"
    "  -n, --no-stdin       forward no input (also automatic when this stdin is /dev/null\n"
    "                       or closed); the process's stdin stays as it is\n"
    "  -t, --tty            the process runs on a PTY (spawned with -t; the agent does not\n"
    "                       say so): when this stdin is a terminal it goes raw, the window\n"
    "                       size is passed on, and ^\\ ^D detaches\n"
    "      --sig-proxy      forward SIGINT, SIGTERM, SIGHUP and SIGQUIT received here to the\n"
    "                       remote process group, as 'sbx exec' does\n"
    "      --json           capture the output and print one JSON object at the end, as\n"
    "                       'sbx exec --json' does\n"
    "  -h, --help           show this help\n"
    "\n"
    "Detaching leaves the process running: on a raw terminal type ^\\ then ^D (exit 0,\n"
    "\"sbx: detached from ID\"); without --sig-proxy, SIGINT (^C on a terminal that is not\n"
    "raw), SIGTERM, SIGHUP or SIGQUIT received here detach too (exit 128+N).\n"
    "\n" EXEC_STATUS_HELP;

static const char forward_usage[] =
    "Usage: sbx forward [-v] [BIND:]LOCAL:REMOTE...\n"
    "\n"
    "Forward local TCP ports into the sandbox: listen on BIND:LOCAL (BIND default 127.0.0.1;\n"
    "LOCAL 0 picks a free port) and relay every connection accepted there to REMOTE inside\n"
    "the guest (net.connect): a PORT on the guest's 127.0.0.1, or HOST:PORT with HOST an\n"
    "IPv4 or IPv6 address ([::1]:80), or localhost. All connections share one agent\n"
    "connection. One line per forward goes to stderr once it listens:\n"
    "  sbx: forward 127.0.0.1:8080 -> 127.0.0.1:80\n"
    "Runs until SIGINT or SIGTERM (exit 0; a second one ends it at once, even while the\n"
    "agent takes no bytes); 1 when the agent connection is lost.\n"
    "\n"
    "Options:\n"
    "  -v, --verbose   a line per connection on stderr: connected, closed (with the bytes\n"
    "                  each way), errors\n"
    "  -h, --help      show this help\n";

static const char ports_usage[] = "Usage: sbx ports [--json]\n"
                                  "\n"
                                  "List the guest's listening TCP sockets and bound UDP sockets "
                                  "(net.listening):\nPROTO ADDR PORT PID (PID \"-\" when no "
                                  "process was found).\n";

static const char ping_usage[] = "Usage: sbx ping [-n COUNT] [--json]\n"
                                 "\n"
                                 "Send COUNT (default 1) pings back to back and print each "
                                 "round-trip time\n(and min/avg/max for more than one).\n";

static const char info_usage[] = "Usage: sbx info [--json]\n"
                                 "\n"
                                 "Show the agent's info: versions, uptime, load, memory, boot "
                                 "timings, connections, processes.\n";

static const char hello_usage[] = "Usage: sbx hello [--json]\n"
                                  "\n"
                                  "Say hello and print what was negotiated: protocol version, the "
                                  "agent's\ncapabilities and limits (--json: the whole hello "
                                  "result).\n";

static const char env_usage[] =
    "Usage: sbx env list [--json]\n"
    "       sbx env get NAME          print the value; exit 1 when unset\n"
    "       sbx env set NAME=VALUE... set one or more variables\n"
    "       sbx env unset NAME...     remove variables\n"
    "\n"
    "The agent's base environment is what processes spawned later inherit.\n";

static const char ps_usage[] = "Usage: sbx ps [--json]\n"
                               "\n"
                               "List the agent's processes (running, and exited but not yet "
                               "released):\nID PID STATE EXIT CMD. EXIT is the code, or the "
                               "signal that killed it.\nWhen the agent reports them, ATTACHED "
                               "(a connection holds the output) and\nDROPPED (bytes of "
                               "stdout/stderr the replay buffer no longer has) come before "
                               "CMD.\n";

static const char kill_usage[] = "Usage: sbx kill [-s SIGNAL] [--group] ID\n"
                                 "\n"
                                 "Send SIGNAL (default TERM; a name like KILL or SIGINT, SIG40, "
                                 "or a number 1..64)\nto process ID (an agent process id, as "
                                 "shown by 'sbx ps'), or with --group to its\nwhole process "
                                 "group.\n";

static const char wait_usage[] = "Usage: sbx wait [--timeout DUR] [--json] ID\n"
                                 "\n"
                                 "Wait until process ID has exited and its output has ended, "
                                 "then exit with its\nexit code (128+N when killed by signal N). "
                                 "--json prints the exit record.\nWith --timeout, give up after "
                                 "DUR (exit 124; the process is unaffected).\n";

static const char repl_usage[] =
    "Usage: sbx repl [OPTIONS] [LANG]\n"
    "\n"
    "Start a REPL session in the sandbox: sh (default), bash, python3, node or deno.\n"
    "State persists between evaluations. Output appears as the code produces it; then\n"
    "the value (python3: repr, node: util.inspect, deno: Deno.inspect) on stdout and\n"
    "any error on stderr.\n"
    "\n"
    "Without --eval, read code from stdin: a line, or a block that continues while a\n"
    "line ends in ':' ',' '\\' or an open bracket (shells: 'do' 'then' '{' '|' ...) up\n"
    "to an empty line. On a terminal there is a prompt and ^C interrupts the running\n"
    "code (a second ^C exits with 130); ^D ends the session.\n"
    "\n"
    "Options:\n"
    "  -e, --eval CODE   evaluate CODE (repeatable, in order; stops at the first error)\n"
    "                    and exit: 0, 1 on an error, 124 on a timeout, a shell's status\n"
    "  -t, --timeout DUR interrupt an evaluation after DUR (500ms, 10s, 2m); the session\n"
    "                    survives\n"
    "      --json        print each result as JSON (no streaming)\n"
    "  -h, --help        show this help\n";

static const char cp_usage[] =
    "usage: sbx cp [options] LOCAL :REMOTE\n"
    "       sbx cp [options] :REMOTE LOCAL\n"
    "\n"
    "Copy a file (or with -r a directory tree) into or out of the sandbox. The side written as\n"
    ":PATH is the guest's. A destination that is a directory, or ends in '/', receives the\n"
    "source under its own name. Uploads land atomically (temporary file, then rename); their size\n"
    "is checked, and their sha256 end to end unless --no-verify.\n"
    "\n"
    "With -r, LOCAL :DIR/ (trailing slash) puts the tree at DIR/<name>, LOCAL :DIR makes DIR the\n"
    "tree (created or merged); :DIR LOCAL into an existing local directory puts it at\n"
    "LOCAL/<name>. Modes, symlinks, hard links and mtimes are kept; downloads make no set-id\n"
    "bits or device nodes here, and their modes obey the local umask.\n"
    "\n"
    "options:\n"
    "  -r, --recursive     copy a directory tree (a tar stream underneath)\n"
    "  -z, --compress ALG  tree transfers: none (default), gzip or zstd on the wire\n"
    "  -m, --mode OCTAL    uploads: permission bits of the new file (default: the local file's)\n"
    "  -p, --parents       uploads: create missing parent directories\n"
    "  -n, --no-clobber    uploads: fail if the destination exists\n"
    "      --fsync         uploads: fsync the file and its directory before reporting success\n"
    "      --no-verify     file uploads: no sha256 on either side (the size is still checked);\n"
    "                      hashing is most of an upload's CPU time\n"
    "  -q, --quiet         no progress bar (it is shown only when stderr is a terminal)\n"
    "  -u, --user U        act in the guest as user U (name or uid): file access checked as U,\n"
    "                      new files owned by U (default: the guest's workload user; root for\n"
    "                      the agent's own rights)\n"
    "  -h, --help          this help\n";

static const char pack_usage[] =
    "usage: sbx pack [options] DIR -o FILE\n"
    "\n"
    "Package the guest directory DIR into a deterministic tar.gz or tar.zst (the same tree gives\n"
    "the same bytes), optionally after running a build command in it. Writes FILE and the\n"
    "manifest (each file's path, size, mode, sha256; totals; the archive's sha256; entrypoint\n"
    "and args) to FILE.manifest.json. .git is left out, and so is whatever DIR/.sbxignore\n"
    "(gitignore syntax) and --exclude name.\n"
    "\n"
    "options:\n"
    "  -o, --output FILE       the archive to write (required); .tar.zst/.tzst or .tar.gz/.tgz\n"
    "                          choose the format unless --format says\n"
    "  -f, --format FMT        tar.gz or tar.zst\n"
    "  -b, --build CMD         run CMD (/bin/sh -c) in DIR first; its output is shown; a failing\n"
    "                          build fails the pack\n"
    "  -e, --entrypoint PATH   the program to run, relative to DIR (must exist after the build)\n"
    "  -a, --arg ARG           an argument for the entrypoint (repeatable)\n"
    "  -x, --exclude PAT       leave out paths matching PAT (gitignore syntax; repeatable)\n"
    "  -q, --quiet             no progress line (shown only when stderr is a terminal)\n"
    "  -u, --user U            read DIR, and run the build, as user U (default: the guest's\n"
    "                          workload user)\n"
    "  -h, --help              this help\n";

static const char fs_usage[] =
    "Usage: sbx fs COMMAND [OPTIONS] ARGS...   (paths are in the guest)\n"
    "\n"
    "  ls [-l] [-a] [PATH...]        list directories (default /); -l long format, -a hidden\n"
    "  stat [-L|--no-follow] PATH... file information (-L: of a symlink itself)\n"
    "  mkdir [-p] [-m MODE] PATH...  create directories (-p: parents, no error if existing)\n"
    "  rm [-r] PATH...               remove files, symlinks, empty directories (-r: trees)\n"
    "  mv FROM TO                    rename (same file system)\n"
    "  cp [-r] FROM TO               copy a file, or a tree with -r\n"
    "  cat PATH...                   print files\n"
    "  write [-a] [-m MODE] PATH     write stdin to PATH (created or truncated; -a appends)\n"
    "  chmod MODE PATH...            change permission bits (octal MODE)\n"
    "  ln [-s] TARGET PATH           hard link, or symbolic link with -s\n"
    "  readlink PATH                 print a symlink's target\n"
    "  realpath PATH                 print the resolved absolute path\n"
    "  mktemp [-d] [--dir D] [--prefix P] [--suffix S]  create a unique temporary file or dir\n"
    "  find PATH [--maxdepth N] [--type f|d|l] [--ext E] [--match RE] [--skip RE] [-L]\n"
    "                                walk a tree; --ext/--match/--skip repeat\n"
    "  glob PATTERN [--root DIR] [--exclude PAT] [--no-dirs] [-L]\n"
    "                                match a glob (*, ?, [..], {a,b}, **)\n"
    "  watch [-r] PATH...            print file events until interrupted (-r: recursive)\n"
    "\n"
    "Common options: --json (JSON output), --cwd DIR (relative paths resolve there),\n"
    "-u/--user U (act as user U: name or uid; default the guest's workload user, root for the\n"
    "agent's own rights), -h.\n";

static const char call_usage[] =
    "Usage: sbx call METHOD [JSON-PARAMS | -]\n"
    "\n"
    "Send request METHOD with params given as a JSON object (default {}; '-' reads it\n"
    "from stdin) and print the result as JSON. Strings become msgpack str, integers\n"
    "int, other numbers float64. In the output, bin values are base64 strings.\n"
    "An error is printed to stderr (and as {\"error\":{...}} on stdout with --json);\n"
    "the exit status is then 1.\n";

/* In the order of 'sbx --help'. Columns: name, summary, usage, getopt's short options and long
 * options (NULL: long_opts), the parse hook and run. */
static const struct command commands[] = {
    { "exec", "run a command, stream its output, exit with its status", exec_usage, "+e:w:u:tndh",
      exec_opts, cli_parse_exec, cli_cmd_exec, .fail = CLI_EXIT_SBX, .pipeline = true },
    { "sh", "run a shell command line (/bin/sh -c), like exec", sh_usage, "+e:w:u:tndh", exec_opts,
      cli_parse_exec, cli_cmd_exec, .fail = CLI_EXIT_SBX, .pipeline = true },
    { "shell", "open an interactive terminal session (a remote PTY)", shell_usage, "+e:w:u:h",
      shell_opts, cli_parse_exec, cli_cmd_exec, .fail = CLI_EXIT_SBX, .pipeline = true },
    { "ping", "measure the round-trip time to the agent", ping_usage, "+n:h", NULL, cli_parse_ping,
      .run = cli_cmd_ping },
    { "info", "show agent and guest information", info_usage, .call = sbx_info,
      .print = cli_print_map },
    { "hello", "show the negotiated version, capabilities and limits", hello_usage,
      .print = cli_print_map },
    /* env: no '+', so options may follow the subcommand ("sbx env list --json") */
    { "env", "list, get, set or unset the base environment of new processes", env_usage, "h", NULL,
      cli_parse_env, .run = cli_cmd_env },
    { "ps", "list processes", ps_usage, .call = sbx_proc_list, .print = cli_print_procs },
    { "kill", "send a signal to a process", kill_usage, "+s:gh", NULL, cli_parse_proc,
      .run = cli_cmd_kill },
    { "wait", "wait for a process and exit with its status", wait_usage, "+t:h", NULL,
      cli_parse_proc, .run = cli_cmd_wait },
    { "attach", "attach to a running process: replay and stream its output, send input",
      attach_usage, "+nth", attach_opts, cli_parse_attach, cli_cmd_attach, .fail = CLI_EXIT_SBX,
      .pipeline = true },
    { "forward", "forward local TCP ports to ports inside the sandbox", forward_usage, "+vh",
      forward_opts, cli_parse_forward, .run = cli_cmd_forward },
    { "ports", "list the guest's listening sockets", ports_usage, .call = sbx_net_listening,
      .print = cli_print_ports },
    /* pack, fs: no '+', so options may follow the arguments ("sbx pack DIR -o FILE") */
    { "pack", "package a guest directory into a deploy archive with a manifest", pack_usage,
      "o:f:b:e:a:x:qu:h", pack_opts, cli_parse_pack, .run = cli_cmd_pack, .identity = true },
    { "cp", "copy files into or out of the sandbox (sbx cp LOCAL :REMOTE)", cp_usage,
      "+rz:m:pnqu:h", cp_opts, cli_parse_cp, .run = cli_cmd_cp, .identity = true },
    { "fs", "files in the guest: ls, stat, cat, write, mkdir, rm, find, watch, ...", fs_usage,
      "hlaLm:prRsdx:t:u:", fs_opts, cli_parse_fs, .run = cli_cmd_fs, .identity = true },
    { "repl", "evaluate code in a persistent interpreter (sh, bash, python3, node)", repl_usage,
      "e:t:h", NULL, cli_parse_repl, .run = cli_cmd_repl },
    { "call", "send any request with JSON params and print the JSON result", call_usage,
      .parse = cli_parse_call, .run = cli_cmd_call },
};

static void usage(FILE *f)
{
    (void)fprintf(f, "Usage: sbx [GLOBAL OPTIONS] COMMAND [ARGS...]\n"
                     "\n"
                     "Drive an sbx-agent inside a sandbox VM.\n"
                     "\n"
                     "Global options (before the command):\n"
                     "  -c, --connect ADDR  agent address (default $SBX_ADDR):\n"
                     "                        unix:/path  vsock:CID:PORT  fc:/path/v.sock:PORT  "
                     "tcp:HOST:PORT\n"
                     "      --token T       auth token sent in hello (default $SBX_TOKEN)\n"
                     "      --token-file F  read the token from the first line of F\n"
                     "      --json          JSON output for scripts\n"
                     "      --timeout DUR   connect + hello timeout (default 10s; 500ms, 2m, ...)\n"
                     "      --keepalive DUR after DUR with nothing from the agent, ping it; give\n"
                     "                      up if nothing comes within 2 x DUR (default 15s; 0: "
                     "never)\n"
                     "  -h, --help          show this help\n"
                     "      --version       show the version\n"
                     "\n"
                     "Commands:\n");
    for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++) {
        (void)fprintf(f, "  %-7s %s\n", commands[i].name, commands[i].summary);
    }
    (void)fprintf(f, "\nRun 'sbx COMMAND --help' for the options of a command.\n");
}

void cli_print_err(const char *cmd, const struct sbx_err *err)
{
    if (err->code[0] != '\0' && strstr(err->msg, err->code) == NULL) {
        cli_say("sbx: %s: %s (%s)\n", cmd, err->msg, err->code);
    } else {
        cli_say("sbx: %s: %s\n", cmd, err->msg);
    }
}

/*
 * getopt_long for a command: sets cli->json on 'j' and goes on, prints @usage to stdout on 'h'
 * (returns CLI_OPTS_HELP) or to stderr on a bad option (returns CLI_OPTS_BAD). Otherwise returns
 * the option, or 0 after the last one (optind is then the first positional argument).
 */
static int cli_getopt(struct cli *cli, int argc, char **argv, const char *shortopts,
                      const struct option *longopts, const char *usage)
{
    for (;;) {
        int opt = getopt_long(argc, argv, shortopts, longopts, NULL);

        switch (opt) {
        case -1:
            return 0;
        case 'j':
            cli->json = true;
            break;
        case 'h':
            (void)fputs(usage, stdout);
            return CLI_OPTS_HELP;
        case '?':
        case ':':
            (void)fputs(usage, stderr);
            return CLI_OPTS_BAD;
        default:
            return opt;
        }
    }
}

int cli_call(struct sbx_client *c, int r, const uint32_t *id, struct sbx_msg *resp,
             struct sbx_err *err)
{
    return sbx_client_call(c, r, *id, resp, err);
}

int cli_hello_wait(struct sbx_client *c)
{
    struct sbx_err err;

    sbx_err_clear(&err);
    if (sbx_client_hello_wait(c, &err) < 0) {
        cli_say("sbx: hello: %s (%s)\n", err.msg, err.code);
        return -1;
    }
    return 0;
}

/* Connect and send hello; wait for its answer too unless @pipeline. */
static struct sbx_client *connect_hello(const struct cli *cli, bool pipeline)
{
    struct sbx_err err;
    struct sbx_client *c;

    sbx_err_clear(&err);
    c = sbx_client_connect(cli->addr, cli->connect_timeout_ms, &err);
    if (c == NULL) {
        cli_say("sbx: %s (%s)\n", err.msg, err.code);
        return NULL;
    }
    sbx_client_set_keepalive(c, cli->keepalive_ms);
    if (sbx_client_hello_send(c, cli->token, &err) < 0) {
        cli_say("sbx: hello: %s (%s)\n", err.msg, err.code);
    } else if (pipeline || cli_hello_wait(c) == 0) {
        return c;
    }
    sbx_client_close(c);
    return NULL;
}

/* The result of a command that is a typed call and a print function (or the hello result). */
static int print_call(struct cli *cli, const struct command *cmd, struct sbx_client *c)
{
    const msgpack_object *res = sbx_client_hello_result(c);
    struct sbx_msg resp;
    struct sbx_err err;
    uint32_t id;

    sbx_err_clear(&err);
    if (cmd->call != NULL) {
        res = cli_call(c, cmd->call(sbx_client_conn(c), NULL, &id, &err), &id, &resp, &err) < 0
                  ? NULL
                  : resp.result;
    }
    if (res == NULL || cmd->print(cli, res, &err) < 0) {
        cli_print_err(cmd->name, &err);
        return CLI_EXIT_FAIL;
    }
    return 0;
}

/* Parse @cmd's options and arguments, connect and run it. */
static int run(struct cli *cli, const struct command *cmd, int argc, char **argv)
{
    const char *shortopts = cmd->shortopts != NULL ? cmd->shortopts : "+h";
    const struct option *longopts = cmd->longopts != NULL ? cmd->longopts : long_opts;
    int bad = cmd->fail != 0 ? cmd->fail : CLI_EXIT_USAGE, opt = 0, status = 0;
    struct sbx_client *c;

    cli->cmd = cmd->name;
    optind = 0; /* glibc: full re-initialisation for the command's own getopt_long */
    while (status == 0 &&
           (opt = cli_getopt(cli, argc, argv, shortopts, longopts, cmd->usage)) > 0) {
        /* long_opts has every command's: this one takes those it has a short form of */
        if (cmd->identity && opt == 'u') {
            cli->identity = optarg;
            continue;
        }
        status = cmd->longopts == NULL && strchr(shortopts, opt) == NULL
                     ? CLI_OPTS_BAD
                     : cmd->parse(cli, opt, optarg);
    }
    if (opt < 0) {
        return opt == CLI_OPTS_HELP ? 0 : bad;
    }
    cli->argc = argc - optind;
    cli->argv = argv + optind;
    if (status == 0) {
        status = cmd->parse != NULL ? cmd->parse(cli, 0, NULL) : cli->argc > 0 ? CLI_OPTS_BAD : 0;
    }
    if (status == CLI_OPTS_BAD) {
        (void)fputs(cmd->usage, stderr);
        return bad;
    }
    if (status != 0) {
        return status;
    }
    if (cli->addr == NULL || cli->addr[0] == '\0') {
        (void)fprintf(stderr, "sbx: no agent address: use -c ADDR or set SBX_ADDR "
                              "(e.g. unix:/run/sbx.sock, vsock:3:1024)\n");
        return bad;
    }
    c = connect_hello(cli, cmd->pipeline);
    if (c == NULL) {
        return cmd->fail != 0 ? cmd->fail : CLI_EXIT_FAIL;
    }
    if (cli->identity != NULL) {
        struct sbx_err err;
        if (sbx_conn_set_identity(sbx_client_conn(c), cli->identity, &err) < 0) {
            cli_print_err(cmd->name, &err);
            sbx_client_close(c);
            return bad;
        }
    }
    status = cmd->run != NULL ? cmd->run(cli, c) : print_call(cli, cmd, c);
    sbx_client_close(c);
    return status;
}

/* The first line of @path (the token, so it need not be on this command line for ps to show):
 * 0, or -1 after saying why. */
static int read_token_file(const char *path, char *buf, size_t size)
{
    FILE *f = fopen(path, "re");
    size_t n;

    if (f == NULL || fgets(buf, (int)size, f) == NULL) {
        (void)fprintf(stderr, "sbx: --token-file %s: %s\n", path,
                      f == NULL || ferror(f) ? strerror(errno) : "empty");
        if (f != NULL) {
            (void)fclose(f);
        }
        return -1;
    }
    (void)fclose(f);
    n = strcspn(buf, "\r\n");
    if (n == 0 || n > SBX_TOKEN_MAX) {
        (void)fprintf(stderr, "sbx: --token-file %s: the first line must be 1..%u bytes\n", path,
                      SBX_TOKEN_MAX);
        return -1;
    }
    buf[n] = '\0';
    return 0;
}

int main(int argc, char **argv)
{
    static char token[SBX_TOKEN_MAX + 2];
    static const struct option opts[] = {
        CLI_OPT_JSON,
        { "connect", required_argument, NULL, 'c' },
        { "token", required_argument, NULL, 't' },
        { "token-file", required_argument, NULL, 'F' },
        { "timeout", required_argument, NULL, 'T' },
        { "keepalive", required_argument, NULL, 'K' },
        { "version", no_argument, NULL, 'V' },
        CLI_OPTS_END,
    };
    struct cli cli = { .addr = getenv("SBX_ADDR"),
                       .token = getenv("SBX_TOKEN"),
                       .connect_timeout_ms = SBX_CLIENT_CONNECT_TIMEOUT_MS,
                       .keepalive_ms = CLI_KEEPALIVE_MS };
    int opt;

    /* A closed pipe is an error to handle where it happens (EPIPE), never a silent death. */
    (void)signal(SIGPIPE, SIG_IGN);
    if (cli.token != NULL && cli.token[0] == '\0') {
        cli.token = NULL;
    }
    while ((opt = getopt_long(argc, argv, "+c:h", opts, NULL)) != -1) {
        uint64_t ms;

        if (opt == 'c') {
            cli.addr = optarg;
        } else if (opt == 't') {
            cli.token = optarg;
        } else if (opt == 'F' && read_token_file(optarg, token, sizeof(token)) == 0) {
            cli.token = token;
        } else if (opt == 'F') {
            return CLI_EXIT_USAGE;
        } else if (opt == 'j') {
            cli.json = true;
        } else if (opt == 'T' && cli_parse_duration(optarg, &ms) == 0 && ms <= 86400000) {
            cli.connect_timeout_ms = (int)ms;
        } else if (opt == 'T') {
            (void)fprintf(stderr, "sbx: bad --timeout \"%s\" (e.g. 500ms, 10s, 2m)\n", optarg);
            return CLI_EXIT_USAGE;
        } else if (opt == 'K' && cli_parse_duration(optarg, &ms) == 0 && ms <= 3600000) {
            cli.keepalive_ms = (int)ms;
        } else if (opt == 'K') {
            (void)fprintf(stderr, "sbx: bad --keepalive \"%s\" (0, or up to 1h: 500ms, 15s, 2m)\n",
                          optarg);
            return CLI_EXIT_USAGE;
        } else if (opt == 'V') {
            (void)printf("sbx %s (protocol %u)\n", SBX_VERSION, SBX_PROTO_VERSION);
            return 0;
        } else {
            usage(opt == 'h' ? stdout : stderr);
            return opt == 'h' ? 0 : CLI_EXIT_USAGE;
        }
    }
    if (optind >= argc) {
        usage(stderr);
        return CLI_EXIT_USAGE;
    }
    for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++) {
        if (strcmp(commands[i].name, argv[optind]) == 0) {
            return run(&cli, &commands[i], argc - optind, argv + optind);
        }
    }
    (void)fprintf(stderr, "sbx: unknown command \"%s\"; run 'sbx --help'\n", argv[optind]);
    return CLI_EXIT_USAGE;
}
