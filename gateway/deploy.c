/* Deploy and revisions: not built yet (stub; answers 501). */
#include "backend.h"

int gw_deploy_start(struct gw *g, char *why, size_t whylen)
{
    (void)g;
    (void)why;
    (void)whylen;
    return 0;
}

void gw_deploy_stop(struct gw *g)
{
    (void)g;
}

static void not_yet(struct gw_http_conn *hc, const char *what)
{
    json_t *b = json_pack("{s:s, s:s+}", "code", "NOT_SUPPORTED", "message", what,
                          " is not supported by sbx-gateway yet");
    gw_http_respond_json(hc, 501, NULL, b);
}

void gw_rest_deploy(struct gw *g, struct gw_http_conn *hc, const struct gw_http_req *req,
                    struct gw_sandbox *sb)
{
    (void)g;
    (void)req;
    (void)sb;
    not_yet(hc, "deploy");
}

void gw_rest_revision(struct gw *g, struct gw_http_conn *hc, const struct gw_http_req *req,
                      const char *rev, const char *what)
{
    (void)g;
    (void)req;
    (void)rev;
    (void)what;
    not_yet(hc, "revisions");
}
