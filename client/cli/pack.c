/*
 * sbx pack: package a guest directory into a deploy archive (pack.create): the build's output
 * goes to our stdout / stderr as it happens, the archive into a local file (renamed into place
 * when complete) and the manifest beside it as JSON.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli.h"
#include "cp.h"

static const char usage[] =
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
    "  -h, --help              this help\n";

#define PACK_LIST_MAX 1024

struct pack_cli {
    struct sbx_client *c;
    uint32_t archive, out, err;
    bool archive_ended, out_ended, err_ended;
    int fd;     /* archive temporary file */
    FILE *mf;   /* manifest temporary file */
    bool first; /* no file entry written to the manifest yet */
    struct cli_progress prog;
    uint64_t scan_bytes;
    struct sbx_err err_end; /* the archive stream's error */
    bool failed;
};

static const char *format_for(const char *out)
{
    size_t n = strlen(out);
    static const struct {
        const char *suffix, *format;
    } map[] = {
        { ".tar.zst", "tar.zst" },
        { ".tzst", "tar.zst" },
        { ".tar.gz", "tar.gz" },
        { ".tgz", "tar.gz" },
    };

    for (size_t i = 0; i < sizeof(map) / sizeof(map[0]); i++) {
        size_t k = strlen(map[i].suffix);
        if (n > k && strcmp(out + n - k, map[i].suffix) == 0) {
            return map[i].format;
        }
    }
    return NULL;
}

/* Append one pack.manifest part to the manifest file; the last part closes the JSON. */
static void manifest_part(struct pack_cli *pc, const msgpack_object *params)
{
    const msgpack_object *files = sbx_obj_get(params, "files");
    const msgpack_object *last = sbx_obj_get(params, "last");

    if (files != NULL && files->type == MSGPACK_OBJECT_ARRAY) {
        for (uint32_t i = 0; i < files->via.array.size; i++) {
            (void)fputs(pc->first ? "\n  " : ",\n  ", pc->mf);
            (void)cli_json_write(pc->mf, &files->via.array.ptr[i]);
            pc->first = false;
        }
    }
    if (last == NULL || last->type != MSGPACK_OBJECT_BOOLEAN || !last->via.boolean) {
        return;
    }
    (void)fputs("\n ]", pc->mf);
    for (uint32_t i = 0; i < params->via.map.size; i++) {
        const msgpack_object_kv *kv = &params->via.map.ptr[i];
        if (kv->key.type != MSGPACK_OBJECT_STR) {
            continue;
        }
        const char *k = kv->key.via.str.ptr;
        size_t kn = kv->key.via.str.size;
        if ((kn == 2 && memcmp(k, "id", 2) == 0) || (kn == 4 && memcmp(k, "part", 4) == 0) ||
            (kn == 4 && memcmp(k, "last", 4) == 0) || (kn == 5 && memcmp(k, "files", 5) == 0)) {
            continue;
        }
        (void)fputs(",\n ", pc->mf);
        cli_json_write_str(pc->mf, k, kn);
        (void)fputs(": ", pc->mf);
        (void)cli_json_write(pc->mf, &kv->val);
    }
    (void)fputs("\n}\n", pc->mf);
}

static void on_progress(struct pack_cli *pc, const msgpack_object *params)
{
    char phase[16] = "";
    uint64_t bytes = 0;
    struct sbx_err e;
    const msgpack_object *exit;
    struct sbx_exit x;

    (void)sbx_param_cstr(params, "phase", SBX_OPTIONAL, phase, sizeof(phase), &e);
    (void)sbx_param_u64(params, "bytes", SBX_OPTIONAL, 0, UINT64_MAX, &bytes, &e);
    exit = sbx_obj_get(params, "exit");
    if (strcmp(phase, "build") == 0 && exit != NULL) {
        if (sbx_exit_read(exit, &x, &e) == 0 && sbx_exit_status(&x) == 0) {
            return;
        }
        (void)fputs("sbx: pack: build: ", stderr);
        (void)cli_json_write(stderr, exit);
        (void)fputc('\n', stderr);
    } else if (strcmp(phase, "scan") == 0) {
        pc->scan_bytes = bytes;
    } else if (strcmp(phase, "archive") == 0) {
        pc->prog.total = pc->scan_bytes;
        if (bytes > pc->prog.done) {
            cli_progress_add(&pc->prog, bytes - pc->prog.done);
        }
    }
}

/* One received message of the job. Returns 0, or -1 on a local or transport error. */
static int pack_step(struct pack_cli *pc, struct sbx_err *err)
{
    struct sbx_msg m;
    uint64_t sid = 0;

    if (sbx_client_recv(pc->c, &m, -1, err) < 0) {
        return -1;
    }
    if (m.kind == SBX_MSG_DATA) {
        int fd = m.stream == pc->archive ? pc->fd
                 : m.stream == pc->out   ? STDOUT_FILENO
                 : m.stream == pc->err   ? STDERR_FILENO
                                         : -1;
        int rc;
        if (fd < 0) {
            return 0;
        }
        rc = cli_write_all(fd, m.data, m.data_len);
        if (rc < 0 && fd == pc->fd) {
            (void)sbx_client_stream_cancel(pc->c, pc->archive, err);
            return sbx_err_sys(err, -rc, NULL, "write the archive");
        }
        return sbx_client_consumed(pc->c, m.stream, m.data_len, err);
    }
    if (m.kind != SBX_MSG_NOTIFY) {
        return 0;
    }
    if (sbx_msg_method_is(&m, SBX_N_STREAM_END)) {
        const msgpack_object *e = sbx_obj_get(m.params, "error");
        (void)sbx_param_u64(m.params, "stream", SBX_OPTIONAL, 0, UINT32_MAX, &sid, err);
        if (sid == pc->archive) {
            pc->archive_ended = true;
            if (e != NULL && e->type != MSGPACK_OBJECT_NIL) {
                sbx_err_from_obj(e, &pc->err_end);
                pc->failed = true;
            }
        }
        pc->out_ended |= sid == pc->out;
        pc->err_ended |= sid == pc->err;
    } else if (sbx_msg_method_is(&m, SBX_N_PACK_MANIFEST)) {
        manifest_part(pc, m.params);
    } else if (sbx_msg_method_is(&m, SBX_N_PACK_PROGRESS)) {
        on_progress(pc, m.params);
    }
    return 0;
}

static int pack_request(struct pack_cli *pc, const char *dir, const char *format, const char *build,
                        const char *entry, char **args, int nargs, char **excl, int nexcl,
                        struct sbx_err *err)
{
    struct sbx_msg resp;
    struct sbx_pack_result r;
    msgpack_packer *pk;
    uint32_t id;

    pk = sbx_client_begin(pc->c, SBX_M_PACK_CREATE, &id);
    msgpack_pack_map(pk, 4 + (build != NULL) + (entry != NULL));
    sbx_pack_kv_str(pk, "path", dir);
    sbx_pack_kv_str(pk, "format", format);
    if (build != NULL) {
        sbx_pack_cstr(pk, "build");
        msgpack_pack_map(pk, 1);
        sbx_pack_kv_str(pk, "command", build);
    }
    if (entry != NULL) {
        sbx_pack_kv_str(pk, "entrypoint", entry);
    }
    sbx_pack_cstr(pk, "args");
    msgpack_pack_array(pk, (size_t)nargs);
    for (int i = 0; i < nargs; i++) {
        sbx_pack_cstr(pk, args[i]);
    }
    sbx_pack_cstr(pk, "exclude");
    msgpack_pack_array(pk, (size_t)nexcl);
    for (int i = 0; i < nexcl; i++) {
        sbx_pack_cstr(pk, excl[i]);
    }
    if (sbx_client_send(pc->c, err) < 0 || sbx_client_wait(pc->c, id, &resp, -1, err) < 0 ||
        sbx_pack_result_read(resp.result, &r, err) < 0) {
        return -1;
    }
    pc->archive = r.archive;
    pc->out = r.build_out;
    pc->err = r.build_err;
    pc->out_ended = pc->out == 0;
    pc->err_ended = pc->err == 0;
    return 0;
}

int cli_cmd_pack(struct cli *cli, int argc, char **argv)
{
    static const struct option opts[] = {
        { "output", required_argument, NULL, 'o' }, { "format", required_argument, NULL, 'f' },
        { "build", required_argument, NULL, 'b' },  { "entrypoint", required_argument, NULL, 'e' },
        { "arg", required_argument, NULL, 'a' },    { "exclude", required_argument, NULL, 'x' },
        { "quiet", no_argument, NULL, 'q' },        CLI_OPTS_END,
    };
    char *args[PACK_LIST_MAX], *excl[PACK_LIST_MAX];
    char tmp[4096], mtmp[4096], mpath[4096];
    const char *out = NULL, *format = NULL, *build = NULL, *entry = NULL, *dir;
    struct pack_cli pc = { .fd = -1, .first = true };
    bool quiet = false;
    struct sbx_err err;
    int nargs = 0, nexcl = 0, opt, rc = -1;

    while ((opt = cli_getopt(cli, argc, argv, "o:f:b:e:a:x:qh", opts, usage)) > 0) {
        switch (opt) {
        case 'o':
            out = optarg;
            break;
        case 'f':
            format = optarg;
            break;
        case 'b':
            build = optarg;
            break;
        case 'e':
            entry = optarg;
            break;
        case 'a':
        case 'x':
            if ((opt == 'a' ? nargs : nexcl) >= PACK_LIST_MAX) {
                (void)fprintf(stderr, "sbx: pack: at most %d --arg / --exclude\n", PACK_LIST_MAX);
                return CLI_EXIT_USAGE;
            }
            if (opt == 'a') {
                args[nargs++] = optarg;
            } else {
                excl[nexcl++] = optarg;
            }
            break;
        default: /* 'q' */
            quiet = true;
            break;
        }
    }
    if (opt < 0) {
        return cli_opts_status(opt);
    }
    if (argc - optind != 1 || out == NULL) {
        (void)fputs(usage, stderr);
        return CLI_EXIT_USAGE;
    }
    dir = argv[optind][0] == ':' ? argv[optind] + 1 : argv[optind];
    if (format == NULL && (format = format_for(out)) == NULL) {
        (void)fprintf(stderr, "sbx: pack: cannot tell the format from %s: use --format\n", out);
        return CLI_EXIT_USAGE;
    }
    snprintf(tmp, sizeof(tmp), "%s.sbx-XXXXXX", out);
    snprintf(mpath, sizeof(mpath), "%s.manifest.json", out);
    snprintf(mtmp, sizeof(mtmp), "%s.sbx-XXXXXX", mpath);
    pc.c = cli_connect(cli);
    if (pc.c == NULL) {
        return CLI_EXIT_FAIL;
    }
    sbx_err_clear(&err);
    pc.fd = mkostemp(tmp, O_CLOEXEC);
    {
        int mfd = pc.fd >= 0 ? mkostemp(mtmp, O_CLOEXEC) : -1;
        pc.mf = mfd >= 0 ? fdopen(mfd, "w") : NULL;
        if (pc.mf == NULL) {
            sbx_err_sys(&err, errno, NULL, "create %s", pc.fd < 0 ? tmp : mtmp);
            goto out;
        }
    }
    (void)fputs("{\n \"files\": [", pc.mf);
    if (pack_request(&pc, dir, format, build, entry, args, nargs, excl, nexcl, &err) < 0) {
        goto out;
    }
    cli_progress_start(&pc.prog, "pack", 0, quiet);
    while (!pc.archive_ended || !pc.out_ended || !pc.err_ended) {
        if (pack_step(&pc, &err) < 0) {
            goto out;
        }
    }
    if (pc.failed) {
        err = pc.err_end;
        goto out;
    }
    if (fchmod(pc.fd, 0644) < 0 || close(pc.fd) < 0) {
        sbx_err_sys(&err, errno, NULL, "write %s", tmp);
        pc.fd = -1;
        goto out;
    }
    pc.fd = -1;
    if (fclose(pc.mf) != 0) {
        pc.mf = NULL;
        sbx_err_sys(&err, errno, NULL, "write %s", mtmp);
        goto out;
    }
    pc.mf = NULL;
    if (chmod(mtmp, 0644) < 0 || rename(tmp, out) < 0 || rename(mtmp, mpath) < 0) {
        sbx_err_sys(&err, errno, NULL, "rename onto %s", out);
        goto out;
    }
    rc = 0;
out:
    cli_progress_end(&pc.prog, rc == 0);
    if (pc.fd >= 0) {
        close(pc.fd);
    }
    if (pc.mf != NULL) {
        fclose(pc.mf);
    }
    if (rc < 0) {
        (void)unlink(tmp);
        (void)unlink(mtmp);
        cli_print_err("pack", &err);
    }
    sbx_client_close(pc.c);
    return rc < 0 ? CLI_EXIT_FAIL : 0;
}
