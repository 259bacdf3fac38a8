/* The process, Deno, env and miscellaneous JSON-RPC methods (m_proc.c, m_deno.c, m_env.c). */
#ifndef SBX_GW_M_PROC_H
#define SBX_GW_M_PROC_H

#include "gw.h"

void gw_m_spawn(struct gw_call *call, json_t *params);
void gw_m_process_wait(struct gw_call *call, json_t *params);
void gw_m_process_kill(struct gw_call *call, json_t *params);

/*
 * What a caller of gw_proc_spawn adds to a spawn (spawnDeno): @spawned sees the proc.spawn
 * result and the answer being built (it may add keys to @result) with @user, which lives as
 * long as the call; @err_xform transforms the stderr stream (NULL: the bytes as they are) with
 * @xform_user, which must live as long as that stream. Any member may be NULL.
 */
struct gw_spawn_ext {
    void (*spawned)(struct gw_call *call, const struct sbx_spawn_result *r, json_t *result,
                    void *user);
    void *user;
    gw_ostream_xform_fn err_xform;
    void *xform_user;
};
/*
 * proc.spawn of @argv (kept alive by the caller until the call is answered) with the spawn
 * params of @params the SDK's spawn and spawnDeno share: env, clearEnv, cwd, stdinStreamId,
 * stdout, stderr. Answers the call: {pid, stdoutStreamId, stderrStreamId} plus what
 * @ext->spawned adds. Uses call->data.
 */
void gw_proc_spawn(struct gw_call *call, json_t *params, const char *const *argv,
                   const struct gw_spawn_ext *ext);
/* env {NAME: value} of @params as a NULL-terminated "NAME=value" array kept by the call (NULL
 * when absent). 0, or -1 having answered the call with a TypeError. */
int gw_proc_env_param(struct gw_call *call, json_t *params, const char ***out);

void gw_m_spawn_deno(struct gw_call *call, json_t *params);
void gw_m_deno_http_wait(struct gw_call *call, json_t *params);
void gw_m_spawn_deno_repl(struct gw_call *call, json_t *params);
void gw_m_deno_repl_eval(struct gw_call *call, json_t *params);
void gw_m_deno_repl_call(struct gw_call *call, json_t *params);
void gw_m_deno_repl_close(struct gw_call *call, json_t *params);

void gw_m_env_get(struct gw_call *call, json_t *params);
void gw_m_env_set(struct gw_call *call, json_t *params);
void gw_m_env_delete(struct gw_call *call, json_t *params);
void gw_m_env_to_object(struct gw_call *call, json_t *params);

void gw_m_abort(struct gw_call *call, json_t *params);
/* vscode: NotSupported (sbx images carry no VS Code server). */
void gw_m_vscode(struct gw_call *call, json_t *params);
void gw_m_download(struct gw_call *call, json_t *params);

#define GW_PROC_METHODS                                                                            \
    { "spawn", gw_m_spawn }, { "processWait", gw_m_process_wait },                                 \
        { "processKill", gw_m_process_kill }, { "spawnDeno", gw_m_spawn_deno },                    \
        { "denoHttpWait", gw_m_deno_http_wait }, { "spawnDenoRepl", gw_m_spawn_deno_repl },        \
        { "denoReplEval", gw_m_deno_repl_eval }, { "denoReplCall", gw_m_deno_repl_call },          \
        { "denoReplClose", gw_m_deno_repl_close },

#define GW_ENV_METHODS                                                                             \
    { "envGet", gw_m_env_get }, { "envSet", gw_m_env_set }, { "envDelete", gw_m_env_delete },      \
        { "envToObject", gw_m_env_to_object },

/* Part 2 of the gateway (HTTP in and out, VS Code) answers these with NotSupported for now. */
#define GW_MISC_METHODS                                                                            \
    { "abort", gw_m_abort }, { "download", gw_m_download }, { "fetch", gw_m_fetch },               \
        { "exposeHttp", gw_m_expose_http }, { "vscode", gw_m_vscode },

#endif /* SBX_GW_M_PROC_H */
