/*
 * sbx pack: package a guest directory into a deploy archive (pack.create): the build's output
 * goes to our stdout / stderr as it happens, the archive into a local file (renamed into place
 * when complete) and the manifest beside it as JSON.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli.h"
#include "cp.h"

#define PACK_LIST_MAX 1024

struct pack_cli {
    struct sbx_client *c;
    uint32_t archive, out, err;
    bool archive_ended, out_ended, err_ended;
    int fd;             /* archive temporary file */
    FILE *mf;           /* manifest temporary file */
    bool first;         /* no file entry written to the manifest yet */
    bool manifest_done; /* its last part came: the JSON is closed */
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

/* Append one pack.manifest part to the manifest file; the last part closes the JSON (parts
 * after it are a broken agent's, and dropped). */
static void manifest_part(struct pack_cli *pc, const msgpack_object *params)
{
    const msgpack_object *files = sbx_obj_get(params, "files");
    const msgpack_object *last = sbx_obj_get(params, "last");

    if (pc->manifest_done) {
        return;
    }
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
    pc->manifest_done = true;
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
    struct sbx_stream_note n;

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
        rc = sbx_write_all(fd, m.data, m.data_len);
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
        if (sbx_stream_note_read(SBX_N_STREAM_END, m.params, &n, err) < 0) {
            return 0;
        }
        if (n.stream == pc->archive) {
            pc->archive_ended = true;
            pc->failed = n.has_error;
            pc->err_end = n.error;
        }
        pc->out_ended |= n.stream == pc->out;
        pc->err_ended |= n.stream == pc->err;
    } else if (sbx_msg_method_is(&m, SBX_N_STREAM_CANCEL)) {
        /* The agent gave up a stream of its own (§8.5): nothing more comes on it. */
        if (sbx_stream_note_read(SBX_N_STREAM_CANCEL, m.params, &n, err) < 0) {
            return 0;
        }
        if (n.stream == pc->archive) {
            pc->archive_ended = true;
            pc->failed = true;
            if (n.has_error) {
                pc->err_end = n.error;
            } else {
                sbx_err_set(&pc->err_end, SBX_E_CANCELLED, "the agent cancelled the archive");
            }
        }
        pc->out_ended |= n.stream == pc->out;
        pc->err_ended |= n.stream == pc->err;
    } else if (sbx_msg_method_is(&m, SBX_N_PACK_MANIFEST)) {
        manifest_part(pc, m.params);
    } else if (sbx_msg_method_is(&m, SBX_N_PACK_PROGRESS)) {
        on_progress(pc, m.params);
    }
    return 0;
}

static int pack_request(struct pack_cli *pc, const struct sbx_pack_params *p, struct sbx_err *err)
{
    struct sbx_msg resp;
    struct sbx_pack_result r;
    uint32_t id;
    int rc = sbx_pack_create(sbx_client_conn(pc->c), p, NULL, &id, err);

    if (sbx_client_call(pc->c, rc, id, &resp, err) < 0 ||
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

/* What the options and arguments asked for (cli_parse_pack). */
static struct {
    const char *args[PACK_LIST_MAX], *excl[PACK_LIST_MAX];
    const char *out;
    struct sbx_spawn_params build;
    struct sbx_pack_params p;
    bool quiet;
} o = { .p = { .args = o.args, .exclude = o.excl } };

int cli_parse_pack(struct cli *cli, int opt, const char *arg)
{
    uint32_t *n = opt == 'a' ? &o.p.nargs : &o.p.nexclude;

    if (opt == 'o' || opt == 'f' || opt == 'e') {
        *(opt == 'o' ? &o.out : opt == 'f' ? &o.p.format : &o.p.entrypoint) = arg;
    } else if (opt == 'b') {
        o.build.command = arg;
        o.p.build = &o.build;
    } else if (opt == 'q') {
        o.quiet = true;
    } else if ((opt == 'a' || opt == 'x') && *n >= PACK_LIST_MAX) {
        (void)fprintf(stderr, "sbx: pack: at most %d --arg / --exclude\n", PACK_LIST_MAX);
        return CLI_EXIT_USAGE;
    } else if (opt == 'a' || opt == 'x') {
        (opt == 'a' ? o.args : o.excl)[(*n)++] = arg;
    }
    if (opt != 0) {
        return 0;
    }
    /* the options are done: DIR */
    if (cli->argc != 1 || o.out == NULL) {
        return CLI_OPTS_BAD;
    }
    o.p.path = cli->argv[0][0] == ':' ? cli->argv[0] + 1 : cli->argv[0];
    if (o.p.format == NULL && (o.p.format = format_for(o.out)) == NULL) {
        (void)fprintf(stderr, "sbx: pack: cannot tell the format from %s: use --format\n", o.out);
        return CLI_EXIT_USAGE;
    }
    return 0;
}

int cli_cmd_pack(struct cli *cli, struct sbx_client *c)
{
    char tmp[4096], mtmp[4096], mpath[4096];
    struct pack_cli pc = { .c = c, .fd = -1, .first = true };
    struct sbx_err err;
    int rc = -1;

    (void)cli;
    snprintf(tmp, sizeof(tmp), "%s.sbx-XXXXXX", o.out);
    snprintf(mpath, sizeof(mpath), "%s.manifest.json", o.out);
    snprintf(mtmp, sizeof(mtmp), "%s.sbx-XXXXXX", mpath);
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
    if (pack_request(&pc, &o.p, &err) < 0) {
        goto out;
    }
    cli_progress_start(&pc.prog, "pack", 0, o.quiet);
    while (!pc.archive_ended || !pc.out_ended || !pc.err_ended) {
        if (pack_step(&pc, &err) < 0) {
            goto out;
        }
    }
    if (pc.failed) {
        err = pc.err_end;
        goto out;
    }
    if (!pc.manifest_done) {
        /* §19.2: the last part comes before the archive's end. Without it the manifest is cut
         * short, and the archive cannot be told complete. */
        sbx_err_set(&err, SBX_E_BAD_MESSAGE,
                    "the agent ended the archive without the manifest's last part");
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
    if (chmod(mtmp, 0644) < 0 || rename(tmp, o.out) < 0 || rename(mtmp, mpath) < 0) {
        sbx_err_sys(&err, errno, NULL, "rename onto %s", o.out);
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
    return rc < 0 ? CLI_EXIT_FAIL : 0;
}
