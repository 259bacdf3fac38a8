// https from a sandbox through the gateway's egress (test_fetch.py TestFetchTLS): TLS servers on
// 127.0.0.1 with certificates of a test CA the gateway trusts with --ca-file; tls.test,
// other.test and allowed.test are mapped to 127.0.0.1 with --resolve. Byte-exact bodies both
// ways, secrets toward an https host, redirects between http and https, https to the sandbox's
// own localhost (the guest socket), and the failures: a certificate for another name, a
// self-signed one, an expired one, plain HTTP on the TLS port, an abort during the handshake.
import { Sandbox } from "@deno/sandbox";
import { arg, check, eq, errInfo, rejects } from "./_lib.ts";

const port = arg("PORT");
const good = arg("GOOD_PORT");
const A = `http://allowed.test:${port}`;
const T = `https://tls.test:${good}`;

await using sandbox = await Sandbox.create({
  allowNet: ["tls.test", "allowed.test", "other.test"],
  secrets: { API_TOKEN: { hosts: ["tls.test"], value: "tls-secret-value" } },
});

function pattern(n: number): Uint8Array {
  const b = new Uint8Array(n);
  for (let i = 0; i < n; i++) b[i] = (i * 31 + (i >> 10)) & 0xff;
  return b;
}
async function sha(b: Uint8Array): Promise<string> {
  const d = new Uint8Array(await crypto.subtle.digest("SHA-256", b as BufferSource));
  return Array.from(d).map((x) => x.toString(16).padStart(2, "0")).join("");
}

// GET over TLS 1.2+ with ALPN http/1.1.
let r = await sandbox.fetch(`${T}/echo?q=1`, { headers: { "x-test": "one" } });
eq(r.status, 200, "GET status");
let j = await r.json();
eq([j.method, j.path], ["GET", "/echo?q=1"], "GET request");
eq(j.headers["x-test"], "one", "GET header");
eq(j.headers["host"], `tls.test:${good}`, "Host header");
eq(j.alpn, "http/1.1", "ALPN");
check(j.tls === "TLSv1.3" || j.tls === "TLSv1.2", "TLS version: " + j.tls);

// A small body (content-length) and a streamed one of several MiB (chunked), byte-exact.
r = await sandbox.fetch(`${T}/echo`, { method: "POST", body: "hello" });
j = await r.json();
eq([j.method, j.bodyLen, j.headers["content-length"]], ["POST", 5, "5"], "small POST");
const big = pattern(5 * 1024 * 1024 + 321);
const body = new ReadableStream<Uint8Array>({
  start(c) {
    for (let off = 0; off < big.length; off += 65536) c.enqueue(big.slice(off, off + 65536));
    c.close();
  },
});
r = await sandbox.fetch(`${T}/echo`, { method: "POST", body });
j = await r.json();
eq(j.bodyLen, big.length, "streamed POST length");
eq(j.sha, await sha(big), "streamed POST bytes");
eq(j.headers["transfer-encoding"], "chunked", "streamed POST framing");

// Large responses, byte-exact: content-length, chunked, close-delimited with close_notify.
for (const kind of ["big", "chunked", "closetls"]) {
  const n = kind === "big" ? 12 * 1024 * 1024 + 7 : 3 * 1024 * 1024 + 5;
  r = await sandbox.fetch(`${T}/${kind}?n=${n}`);
  eq(r.status, 200, kind + " status");
  const got = new Uint8Array(await r.arrayBuffer());
  eq(got.length, n, kind + " length");
  eq(await sha(got), await sha(pattern(n)), kind + " bytes");
}

// Secrets: substituted toward their https host.
const ph = (await sandbox.sh`echo $API_TOKEN`.text()).trim();
check(/^sbx-secret-API_TOKEN-[0-9a-f]{32}$/.test(ph), "placeholder: " + ph);
r = await sandbox.fetch(`${T}/echo?k=${ph}`, { headers: { authorization: `Bearer ${ph}` } });
j = await r.json();
eq(j.headers["authorization"], "Bearer tls-secret-value", "secret toward its https host");
eq(j.path, "/echo?k=tls-secret-value", "secret in the URL toward its https host");
r = await sandbox.fetch(`${A}/echo`, { headers: { authorization: `Bearer ${ph}` } });
j = await r.json();
eq(j.headers["authorization"], `Bearer ${ph}`, "placeholder toward another host");

// Redirects between http and https; allowNet is checked at every hop.
r = await sandbox.fetch(`${A}/redir?code=302&to=${encodeURIComponent(`${T}/echo?from=http`)}`);
j = await r.json();
eq([r.status, j.path, j.tls !== undefined], [200, "/echo?from=http", true], "http -> https");
r = await sandbox.fetch(`${T}/redir?code=307&to=${encodeURIComponent(`${A}/echo`)}`, {
  method: "PUT",
  body: "again",
});
j = await r.json();
eq([j.method, j.bodyLen, j.tls], ["PUT", 5, undefined], "https -> http keeps a whole body");
let e = await rejects(
  () => sandbox.fetch(`${T}/redir?code=302&to=${encodeURIComponent(`https://refused.test:${good}/x`)}`),
  "redirect to a refused host",
);
check(e instanceof TypeError && /allowNet/.test(e.message), "https redirect refused: " + errInfo(e));

// https to the sandbox's own localhost: TLS over the guest socket (the cert names localhost and
// 127.0.0.1; no SNI for the IP literal).
for (const h of ["localhost", "127.0.0.1"]) {
  r = await sandbox.fetch(`https://${h}:${good}/echo`);
  j = await r.json();
  eq([r.status, j.headers["host"], j.alpn], [200, `${h}:${good}`, "http/1.1"], "guest " + h);
}

// Certificates that must be refused: nothing is sent.
const cases: [string, string, RegExp][] = [
  ["OTHER", "tls.test", /invalid peer certificate: NotValidForName/],
  ["SELF", "tls.test", /invalid peer certificate: UnknownIssuer/],
  ["EXPIRED", "tls.test", /invalid peer certificate: Expired/],
  ["GOOD", "other.test", /invalid peer certificate: NotValidForName/],
];
for (const [which, host, re] of cases) {
  const url = `https://${host}:${arg(which + "_PORT")}/secret?k=${ph}`;
  e = await rejects(() => sandbox.fetch(url, { headers: { authorization: `Bearer ${ph}` } }),
    which);
  check(e instanceof TypeError && re.test(e.message), `${which}: ` + errInfo(e));
  check(e instanceof Error && e.message.startsWith(
    `error sending request for url (${url}): client error (Connect): `), "message: " + errInfo(e));
}
// A server that speaks plain HTTP on the port.
e = await rejects(() => sandbox.fetch(`https://tls.test:${arg("PLAIN_PORT")}/`), "plain");
check(e instanceof TypeError && /does not speak TLS/.test(e.message) &&
  /plain HTTP/.test(e.message), "plain HTTP on the TLS port: " + errInfo(e));

// A server that accepts and never answers the handshake: an abort ends it.
const ac = new AbortController();
const p = sandbox.fetch(`https://tls.test:${arg("HANG_PORT")}/`, { signal: ac.signal });
setTimeout(() => ac.abort(), 300);
e = await rejects(() => p, "aborted handshake");
check(e instanceof DOMException && e.name === "AbortError", "abort in handshake: " + errInfo(e));

// Still serving after all that.
r = await sandbox.fetch(`${T}/status?code=204`);
eq([r.status, r.body], [204, null], "204 over https");

console.log("fetch_tls ok");
