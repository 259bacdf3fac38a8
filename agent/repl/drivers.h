/*
 * The REPL language drivers (repl.c), one source file each in agent/repl/. The build turns each
 * file into a C string (embed.cmake, run from agent/CMakeLists.txt): the agent is static and
 * reads nothing from disk. Each string holds the file's bytes and a NUL; its _len is the byte
 * count without the NUL.
 */
#ifndef SBX_AGENT_REPL_DRIVERS_H
#define SBX_AGENT_REPL_DRIVERS_H

#include <stddef.h>

/* driver.py: python3 -u -c <driver>. */
extern const char sbx_repl_driver_py[];
extern const size_t sbx_repl_driver_py_len;

/* driver.js: node --expose-internals -e <driver> (node's own top-level-await rewriter). */
extern const char sbx_repl_driver_js[];
extern const size_t sbx_repl_driver_js_len;

/*
 * driver_deno.mjs: deno eval --quiet <driver>, the same protocol through Deno's node:vm; fds 3
 * and 4 are reached through /proc (Deno has no API for an inherited descriptor). An await at the
 * top level runs in an async function: an expression keeps its value, declarations stay local to
 * that eval. A synchronous endless loop cannot be interrupted (Deno's vm has no breakOnSigint),
 * so a timeout there ends the session. A code header "<length> json" asks for the value as JSON
 * text and a failure's value as {constructorName, message, stack} (repl.eval format "json").
 */
extern const char sbx_repl_driver_deno[];
extern const size_t sbx_repl_driver_deno_len;

/* prologue.sh: written to a sh/bash session's fd 3 first; each eval follows it there. */
extern const char sbx_repl_prologue_sh[];
extern const size_t sbx_repl_prologue_sh_len;

#endif /* SBX_AGENT_REPL_DRIVERS_H */
