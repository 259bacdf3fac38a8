// The seed's end-to-end workflow on real VMs: scaffold a small Deno HTTP app in the sandbox, run
// its `deno task build` step, serve it with deno.run and reach it from the host through
// exposeHttp and the gateway's ingress (SBXGW_INGRESS), then deploy it with a local build whose
// logs are printed live, and reach the deployed revision (a fresh VM) through the ingress too.
// Prints "RUN_SANDBOX <id>" so the harness can end the revision's VM.
import { Sandbox } from "@deno/sandbox";
import { arg, check, eq, HOME, ingressGet } from "./_lib.ts";

const ingress = arg("INGRESS");
await using sandbox = await Sandbox.create();

const dir = HOME + "/seed-app";
await sandbox.fs.mkdir(dir, { recursive: true });
await sandbox.fs.writeTextFile(
  dir + "/deno.json",
  JSON.stringify({ tasks: { build: "deno run -A build.ts" } }, null, 2) + "\n",
);
await sandbox.fs.writeTextFile(
  dir + "/build.ts",
  'await Deno.mkdir("gen", { recursive: true });\n' +
    'await Deno.writeTextFile("gen/v.ts", `export const v = "built at build time";\\n`);\n' +
    'console.log("build step done");\n',
);
await sandbox.fs.writeTextFile(
  dir + "/main.ts",
  'import { v } from "./gen/v.ts";\n' +
    "Deno.serve({ port: 8000, onListen() {} }, (req) => " +
    "new Response(`seed app: ${v} ${new URL(req.url).pathname}\\n`));\n",
);

// The build step, as a developer runs it in the sandbox.
const built = await sandbox.sh`cd ${dir} && deno task build`.stdout("piped");
check(built.stdoutText!.includes("build step done"), "deno task build: " + built.stdoutText);

// Serve it and expose it.
const server = await sandbox.deno.run({ entrypoint: "main.ts", cwd: dir });
eq(await server.httpReady, true, "the app serves HTTP");
const url = await sandbox.exposeHttp({ pid: server.pid });
const [st, body] = await ingressGet(ingress, new URL(url).hostname, "/hello");
eq([st, body], [200, "seed app: built at build time /hello\n"], "the app through exposeHttp");
console.log("EXPOSED " + url);

// Deploy with the same build step, logs printed as they come.
const build = await sandbox.deploy("seed-app", {
  path: dir,
  build: { mode: "local", entrypoint: "main.ts", buildCommand: "deno task build" },
});
let lines = 0;
for await (const log of build.logs()) {
  console.log(`LOG ${log.timestamp} ${log.step} ${log.level} ${log.message}`);
  lines++;
}
check(lines > 0, "no build logs");
const rev = await build.done;
eq(rev.status, "succeeded", "revision: " + JSON.stringify(rev));
const extra = rev as unknown as { run_sandbox_id?: string; timelines: { domains: { domain: string }[] }[] };
if (extra.run_sandbox_id) console.log("RUN_SANDBOX " + extra.run_sandbox_id);
const domain = extra.timelines[0].domains[0].domain;
const [st2, body2] = await ingressGet(ingress, domain, "/deployed");
eq([st2, body2], [200, "seed app: built at build time /deployed\n"], "the deployed revision");
console.log("vm_seed_deploy ok");
