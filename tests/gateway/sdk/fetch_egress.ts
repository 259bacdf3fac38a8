// fetch from a sandbox through the gateway's egress (test_fetch.py): allowNet, --resolve,
// streamed request and response bodies, null bodies, redirects, secrets, aborts, failures.
// The harness runs an HTTP server on 127.0.0.1:SBXGW_PORT and maps allowed.test, second.test
// and refused.test to 127.0.0.1 with --resolve.
import { Sandbox } from "@deno/sandbox";
import { arg, check, eq, errInfo, rejects } from "./_lib.ts";

const port = arg("PORT");
const A = `http://allowed.test:${port}`;
const B = `http://second.test:${port}`;

await using sandbox = await Sandbox.create({
  allowNet: ["allowed.test", `second.test:${port}`],
  secrets: { API_TOKEN: { hosts: ["allowed.test"], value: "real-secret-value" } },
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

// GET with headers.
let r = await sandbox.fetch(`${A}/echo?q=1`, { headers: { "x-test": "one" } });
eq(r.status, 200, "GET status");
let j = await r.json();
eq(j.method, "GET", "GET method");
eq(j.path, "/echo?q=1", "GET path");
eq(j.headers["x-test"], "one", "GET header");
eq(j.headers["host"], `allowed.test:${port}`, "Host header");

// A small string body: content-length.
r = await sandbox.fetch(`${A}/echo`, { method: "POST", body: "hello" });
j = await r.json();
eq(j.method, "POST", "POST method");
eq(j.headers["content-length"], "5", "small body framed with content-length");
eq(j.bodyLen, 5, "small body length");

// A streamed request body of several MiB, byte-exact.
const big = pattern(5 * 1024 * 1024 + 123);
const body = new ReadableStream<Uint8Array>({
  start(c) {
    for (let off = 0; off < big.length; off += 65536) c.enqueue(big.slice(off, off + 65536));
    c.close();
  },
});
r = await sandbox.fetch(`${A}/echo`, { method: "PUT", body });
j = await r.json();
eq(j.bodyLen, big.length, "streamed body length");
eq(j.sha, await sha(big), "streamed body bytes");
eq(j.headers["transfer-encoding"], "chunked", "streamed body framing");

// A large response, streamed back byte-exact (content-length, chunked, close-delimited).
for (const kind of ["big", "chunked", "close"]) {
  const n = kind === "big" ? 24 * 1024 * 1024 + 7 : 3 * 1024 * 1024 + 5;
  r = await sandbox.fetch(`${A}/${kind}?n=${n}`);
  eq(r.status, 200, kind + " status");
  const got = new Uint8Array(await r.arrayBuffer());
  eq(got.length, n, kind + " length");
  eq(await sha(got), await sha(pattern(n)), kind + " bytes");
}

// Null bodies.
r = await sandbox.fetch(`${A}/status?code=204`);
eq(r.status, 204, "204");
eq(r.body, null, "204 body");
r = await sandbox.fetch(`${A}/echo`, { method: "HEAD" });
eq(r.body, null, "HEAD body");
r = await sandbox.fetch(`${A}/status?code=404`);
eq(r.status, 404, "404 status");
eq(r.statusText, "Not Found", "404 statusText");
await r.body?.cancel();

// Redirects: followed (302 GET, 303 POST -> GET, 307 POST with a small body kept), manual.
r = await sandbox.fetch(`${A}/redir?code=302&to=/echo%3Fr%3D1`);
j = await r.json();
eq([r.status, j.method, j.path], [200, "GET", "/echo?r=1"], "302 followed");
r = await sandbox.fetch(`${A}/redir?code=303&to=/echo`, { method: "POST", body: "x" });
j = await r.json();
eq([j.method, j.bodyLen], ["GET", 0], "303 turns POST into GET");
r = await sandbox.fetch(`${A}/redir?code=307&to=/echo`, { method: "POST", body: "keep" });
j = await r.json();
eq([j.method, j.bodyLen], ["POST", 4], "307 keeps a whole body");
r = await sandbox.fetch(`${A}/redir?code=301&to=/echo`, { redirect: "manual" });
eq(r.status, 301, "manual redirect status");
eq(r.headers.get("location"), "/echo", "manual redirect location");
await r.body?.cancel();
const streamed = new ReadableStream<Uint8Array>({
  start(c) {
    for (let i = 0; i < 40; i++) c.enqueue(pattern(65536));
    c.close();
  },
});
let e = await rejects(
  () => sandbox.fetch(`${A}/redir?code=307&to=/echo`, { method: "POST", body: streamed }),
  "307 with a streamed body",
);
check(e instanceof TypeError && /cannot follow a 307/.test(e.message), "307 streamed: " + errInfo(e));
e = await rejects(() => sandbox.fetch(`${A}/loop`), "loop");
check(e instanceof TypeError && /too many redirects/.test(e.message), "redirect loop: " + errInfo(e));
// A redirect to a host allowNet does not include.
e = await rejects(() => sandbox.fetch(`${A}/redir?code=302&to=http://refused.test:${port}/x`), "redir");
check(e instanceof TypeError && /allowNet/.test(e.message), "redirect refused: " + errInfo(e));

// allowNet: refused host, and a port the pattern does not cover.
e = await rejects(() => sandbox.fetch(`http://refused.test:${port}/refused`), "refused host");
check(e instanceof TypeError, "refused: " + errInfo(e));
check(e instanceof Error && e.message.includes("refused.test") && e.message.includes("allowNet"),
  "refused message: " + errInfo(e));
e = await rejects(() => sandbox.fetch(`http://second.test:1/refused`), "refused port");
check(e instanceof Error && e.message.includes("allowNet"), "refused port: " + errInfo(e));

// Secrets: the sandbox sees a placeholder; the real value goes only to the secret's hosts.
const out = await sandbox.sh`echo $API_TOKEN`.text();
const ph = out.trim();
check(/^sbx-secret-API_TOKEN-[0-9a-f]{32}$/.test(ph), "placeholder in the env: " + out);
r = await sandbox.fetch(`${A}/echo?k=${ph}`, { headers: { authorization: `Bearer ${ph}` } });
j = await r.json();
eq(j.headers["authorization"], "Bearer real-secret-value", "secret toward its host");
eq(j.path, "/echo?k=real-secret-value", "secret in the URL toward its host");
r = await sandbox.fetch(`${B}/echo`, { headers: { authorization: `Bearer ${ph}` } });
j = await r.json();
eq(j.headers["authorization"], `Bearer ${ph}`, "placeholder toward another host");

// Failures: a server that closes mid-body; schemes; https to a closed port.
r = await sandbox.fetch(`${A}/cut`);
eq(r.status, 200, "cut status");
e = await rejects(() => r.arrayBuffer(), "body cut short");
check(e instanceof TypeError, "cut: " + errInfo(e));
e = await rejects(() => sandbox.fetch("ftp://allowed.test/x"), "ftp");
check(e instanceof TypeError && /scheme 'ftp' not supported/.test(e.message), "ftp: " + errInfo(e));
// https goes over TLS (fetch_tls.ts); toward a closed port it fails as http does.
e = await rejects(() => sandbox.fetch(`https://allowed.test:1/x`), "https refused");
check(e instanceof TypeError && /tcp connect error/.test(e.message) && /refused/i.test(e.message),
  "https: " + errInfo(e));
e = await rejects(() => sandbox.fetch(`http://allowed.test:1/x`), "connection refused");
check(e instanceof TypeError && /error sending request for url/.test(e.message) &&
  /refused/i.test(e.message), "connection refused: " + errInfo(e));

// Abort while the body streams: the body fails with an AbortError.
const ac = new AbortController();
r = await sandbox.fetch(`${A}/slow`, { signal: ac.signal });
const reader = r.body!.getReader();
const first = await reader.read();
check(!first.done && first.value.length > 0, "slow: first chunk");
ac.abort();
e = await rejects(async () => {
  for (;;) {
    const x = await reader.read();
    if (x.done) break;
  }
}, "aborted body");
check(e instanceof DOMException && e.name === "AbortError", "abort mid-body: " + errInfo(e));
// Abort before the response.
const ac2 = new AbortController();
const p = sandbox.fetch(`${A}/hang`, { signal: ac2.signal });
setTimeout(() => ac2.abort(), 300);
e = await rejects(() => p, "aborted request");
check(e instanceof DOMException && e.name === "AbortError", "abort before head: " + errInfo(e));

console.log("fetch_egress ok");
