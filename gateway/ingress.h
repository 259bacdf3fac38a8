/*
 * The HTTP ingress (ingress.c): --http-listen serves every exposed domain; a connection is routed
 * by its Host header to the sandbox and guest port (or process) the domain maps to, and relayed
 * byte for byte into the guest through a guest socket (gsock.h). Mappings are kept in
 * DATA/expose.json, so they survive client disconnects and gateway restarts.
 *
 * What deploy.c uses to expose a running revision.
 */
#ifndef SBX_GW_INGRESS_H
#define SBX_GW_INGRESS_H

#include <stddef.h>
#include <stdint.h>

#include "gw.h"

/* A domain name (the longest the ingress hands out or accepts). */
#define GW_DOMAIN_MAX 253

/* A new domain for @sb, "<label>.<--http-domain>", not yet mapped (what POST expose/http
 * answers). 0, or -1 with @why. */
int gw_expose_new_domain(struct gw_sandbox *sb, char *domain, size_t len, char *why, size_t whylen);

/* Map @domain (one gw_expose_new_domain gave for @sb) to guest port @port, or (@port 0) to the
 * TCP port process @pid (an agent process id, the SDK's pid) listens on, resolved at each new
 * connection. Replaces an earlier mapping of @domain; saved at once. 0, or -1 with @why (an
 * unknown domain, another sandbox's domain). */
int gw_expose_map(struct gw_sandbox *sb, const char *domain, uint16_t port, uint32_t pid, char *why,
                  size_t whylen);

/* The URL a client reaches @domain at through the ingress: "http://DOMAIN:PORT" (the ingress's
 * bound port). 0, or -1 when there is no ingress (@why says to give --http-listen). */
int gw_ingress_url(struct gw *g, const char *domain, char *out, size_t len, char *why,
                   size_t whylen);

#endif /* SBX_GW_INGRESS_H */
