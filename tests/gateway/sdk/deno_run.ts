// deno.run: an entrypoint uploaded with fs.upload (its output and scriptArgs), inline code with
// extension "ts", httpReady true for a Deno.serve server and false for a program that exits.
import { Sandbox } from "@deno/sandbox";
import { check, eq, HOME } from "./_lib.ts";

await using sandbox = await Sandbox.create();

const local = await Deno.makeTempDir({ prefix: "sbxgw-deno-run-" });
try {
  await Deno.writeTextFile(
    local + "/main.ts",
    'const n: number = 6 * 7;\nconsole.log("entry", n, JSON.stringify(Deno.args));\n' +
      'console.error("to-err");\n',
  );
  await sandbox.fs.upload(local + "/main.ts", HOME + "/main.ts");
} finally {
  await Deno.remove(local, { recursive: true });
}
const p1 = await sandbox.deno.run({
  entrypoint: HOME + "/main.ts",
  scriptArgs: ["a b", "--flag"],
  stdout: "piped",
  stderr: "piped",
});
const o1 = await p1.output();
eq(o1.status.code, 0, "entrypoint exit code: " + o1.stderrText);
eq(o1.stdoutText, 'entry 42 ["a b","--flag"]\n', "entrypoint stdout");
check(o1.stderrText!.endsWith("to-err\n"), "entrypoint stderr: " + o1.stderrText);
eq(await p1.httpReady, false, "httpReady of a program that exits");

// Inline code, TypeScript (a type annotation deno must strip), relative to cwd.
const p2 = await sandbox.deno.run({
  code: "const who: string = Deno.args[0];\nconsole.log(`hi ${who} in ${Deno.cwd()}`);\n" +
    "console.log(import.meta.url.endsWith('/main.ts'));\n",
  extension: "ts",
  scriptArgs: ["there"],
  stdout: "piped",
  stderr: "piped",
});
const o2 = await p2.output();
eq(o2.status.code, 0, "inline code exit code: " + o2.stderrText);
eq(o2.stdoutText, `hi there in ${HOME}\ntrue\n`, "inline code stdout");

// The default extension is ts; a failing program's status and stderr.
const p3 = await sandbox.deno.run({
  code: "throw new Error('boom');",
  stdout: "piped",
  stderr: "piped",
});
const o3 = await p3.output();
eq(o3.status.code, 1, "failing program's exit code");
check(o3.stderrText!.includes("boom"), "failing program's stderr: " + o3.stderrText);

// An HTTP server: httpReady resolves true once it listens.
const srv = await sandbox.deno.run({
  code: "await new Promise((r) => setTimeout(r, 300));\n" +
    "Deno.serve({ port: 0, hostname: '127.0.0.1', onListen() {} }, () => new Response('ok'));\n",
  extension: "js",
  stdout: "piped",
  stderr: "piped",
});
eq(await srv.httpReady, true, "httpReady of a Deno.serve server");
await srv.kill();
eq((await srv.status).signal, "SIGTERM", "server killed");

// A server in a child process of the runtime (a descendant's socket counts).
const parent = await sandbox.deno.run({
  code: "const child = new Deno.Command(Deno.execPath(), { args: ['eval', " +
    "\"Deno.serve({ port: 0, hostname: '127.0.0.1', onListen() {} }, () => new Response('c'))\"] })" +
    ".spawn();\nawait child.status;\n",
  stdout: "piped",
  stderr: "piped",
});
eq(await parent.httpReady, true, "httpReady of a server in a child process");
await parent.kill("SIGKILL");
await parent.status;

console.log("deno_run ok");
