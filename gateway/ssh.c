/* SSH: not built yet (stub; answers 501). */
#include "backend.h"

int gw_ssh_start(struct gw *g, char *why, size_t whylen)
{
    (void)g;
    (void)why;
    (void)whylen;
    return 0;
}

void gw_ssh_stop(struct gw *g)
{
    (void)g;
}

void gw_rest_expose_ssh(struct gw *g, struct gw_http_conn *hc, const struct gw_http_req *req,
                        struct gw_sandbox *sb)
{
    (void)g;
    (void)req;
    (void)sb;
    gw_http_respond_json(hc, 501, NULL,
                         json_pack("{s:s, s:s}", "code", "NOT_SUPPORTED", "message",
                                   "expose/ssh is not supported by sbx-gateway yet"));
}
