// exposeHttp: a port (a deno.run server on a port the harness picked) and a pid (a deno.run
// server on port 0, exposed before it listens), each reached through the gateway's ingress
// (SBXGW_INGRESS, "127.0.0.1:PORT") with the returned domain as Host.
import { Sandbox } from "@deno/sandbox";
import { arg, check, eq, ingressGet, rejects } from "./_lib.ts";

const port = Number(arg("PORT"));

/** GET / at the ingress with Host @host: [status, body]. */
function get(host: string): Promise<[number, string]> {
  return ingressGet(arg("INGRESS"), host);
}

await using sandbox = await Sandbox.create();

// A port.
const byPort = await sandbox.deno.run({
  code: `Deno.serve({ port: ${port}, hostname: "127.0.0.1", onListen() {} }, ` +
    `(req) => new Response("by-port " + new URL(req.url).pathname));\n`,
  stdout: "piped",
  stderr: "piped",
});
eq(await byPort.httpReady, true, "httpReady of the port server");
const url1 = await sandbox.exposeHttp({ port });
check(url1.startsWith("https://") && url1.endsWith(".sbx.localhost"), "url: " + url1);
const d1 = new URL(url1).hostname;
const [s1, b1] = await get(d1);
eq([s1, b1], [200, "by-port /"], "GET through the ingress (port)");

// A pid, exposed before the server listens: 502 until it does, then 200.
const byPid = await sandbox.deno.run({
  code: "await new Promise((r) => setTimeout(r, 1500));\n" +
    "Deno.serve({ port: 0, hostname: '127.0.0.1', onListen() {} }, () => new Response('by-pid'));\n",
  stdout: "piped",
  stderr: "piped",
});
const url2 = await sandbox.exposeHttp({ pid: byPid.pid });
const d2 = new URL(url2).hostname;
check(d2 !== d1, "two domains");
const [early] = await get(d2);
eq(early, 502, "before the pid listens");
eq(await byPid.httpReady, true, "httpReady of the pid server");
const [s2, b2] = await get(d2);
eq([s2, b2], [200, "by-pid"], "GET through the ingress (pid)");

// A domain of nobody's.
const e = await rejects(
  () => sandbox.exposeHttp({ port: 0 }),
  "exposeHttp with port 0",
);
check(e instanceof Error, "port 0 rejected: " + String(e));

await byPort.kill();
await byPid.kill();
console.log("expose_http ok");
