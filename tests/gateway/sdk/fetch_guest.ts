// fetch to a server inside the sandbox: by its localhost port, and DenoProcess.fetch by pid
// (the URL's host ignored). SBXGW_GUEST_PORT is a free port the server listens on.
import { Sandbox } from "@deno/sandbox";
import { arg, eq } from "./_lib.ts";

const port = Number(arg("GUEST_PORT"));
await using sandbox = await Sandbox.create({ allowNet: ["nothing.test"] });
const srv = await sandbox.deno.run({
  code: `Deno.serve({ port: ${port}, hostname: "127.0.0.1", onListen() {} }, async (req) =>
    new Response(req.method + " " + new URL(req.url).pathname + " " + (await req.text()).length,
      { headers: { "x-guest": "yes" } }));`,
  extension: "js",
  stdout: "piped",
  stderr: "piped",
});
eq(await srv.httpReady, true, "server ready");
let r = await sandbox.fetch(`http://localhost:${port}/a`);
eq([r.status, await r.text(), r.headers.get("x-guest")], [200, "GET /a 0", "yes"], "localhost");
r = await sandbox.fetch(`http://127.0.0.1:${port}/b`, { method: "POST", body: "12345" });
eq(await r.text(), "POST /b 5", "127.0.0.1 with a body");
r = await srv.fetch("https://example.com/by-pid");
eq(await r.text(), "GET /by-pid 0", "DenoProcess.fetch by pid");
await srv.kill();
await srv.status;
console.log("fetch_guest ok");
