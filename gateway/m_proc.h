/* The process, env and miscellaneous JSON-RPC methods (m_proc.c, m_env.c, m_misc.c). */
#ifndef SBX_GW_M_PROC_H
#define SBX_GW_M_PROC_H

#include "gw.h"

void gw_m_spawn(struct gw_call *call, json_t *params);
void gw_m_process_wait(struct gw_call *call, json_t *params);
void gw_m_process_kill(struct gw_call *call, json_t *params);

void gw_m_env_get(struct gw_call *call, json_t *params);
void gw_m_env_set(struct gw_call *call, json_t *params);
void gw_m_env_delete(struct gw_call *call, json_t *params);
void gw_m_env_to_object(struct gw_call *call, json_t *params);

void gw_m_abort(struct gw_call *call, json_t *params);
void gw_m_not_yet(struct gw_call *call, json_t *params);
void gw_m_download(struct gw_call *call, json_t *params);

#define GW_PROC_METHODS                                                                            \
    { "spawn", gw_m_spawn }, { "processWait", gw_m_process_wait },                                 \
        { "processKill", gw_m_process_kill },

#define GW_ENV_METHODS                                                                             \
    { "envGet", gw_m_env_get }, { "envSet", gw_m_env_set }, { "envDelete", gw_m_env_delete },      \
        { "envToObject", gw_m_env_to_object },

/* Part 2 of the gateway (Deno runtime and REPL, HTTP in and out, VS Code) answers these with
 * NotSupported for now. */
#define GW_MISC_METHODS                                                                            \
    { "abort", gw_m_abort }, { "download", gw_m_download }, { "fetch", gw_m_not_yet },             \
        { "exposeHttp", gw_m_not_yet }, { "vscode", gw_m_not_yet }, { "spawnDeno", gw_m_not_yet }, \
        { "denoHttpWait", gw_m_not_yet }, { "spawnDenoRepl", gw_m_not_yet },                       \
        { "denoReplEval", gw_m_not_yet }, { "denoReplCall", gw_m_not_yet },                        \
        { "denoReplClose", gw_m_not_yet },

#endif /* SBX_GW_M_PROC_H */
