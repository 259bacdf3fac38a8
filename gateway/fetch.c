/* fetch: not built yet (stub; answers NotSupported). */
#include "gw.h"

void gw_m_fetch(struct gw_call *call, json_t *params)
{
    (void)params;
    gw_call_fail(call, "NotSupported", "ENOTSUP", "fetch is not supported by sbx-gateway yet");
}
