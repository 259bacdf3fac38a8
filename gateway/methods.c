/*
 * The JSON-RPC method table: every method the Deno Sandbox SDK 0.13.2 sends (54) and the
 * Python SDK's `download`, each mapped to its handler (docs/GATEWAY.md has the mapping).
 */
#include <string.h>

#include "gw.h"
#include "m_proc.h"
#if __has_include("m_fs.h")
#include "m_fs.h"
#else
#define GW_FS_METHODS
#endif

static const struct gw_method methods[] = {
    GW_PROC_METHODS GW_ENV_METHODS GW_MISC_METHODS GW_FS_METHODS
};

const struct gw_method *gw_method_find(const char *name)
{
    for (size_t i = 0; i < sizeof(methods) / sizeof(methods[0]); i++) {
        if (strcmp(methods[i].name, name) == 0) {
            return &methods[i];
        }
    }
    return NULL;
}
