// sandbox.deploy(): a local build (installCommand + buildCommand) of a directory written with
// fs.writeTextFile, its build logs read live with `for await`, and `await build.done` resolving
// with the succeeded revision and its timelines. Prints "LOG <step> <level> <message>" per log
// line and "REVISION <json>" at the end for the harness (which fetches the app through the
// ingress itself).
import { Sandbox } from "@deno/sandbox";
import { check, eq, HOME } from "./_lib.ts";

await using sandbox = await Sandbox.create();

const dir = HOME + "/deploy-basic-app";
await sandbox.fs.mkdir(dir + "/src", { recursive: true });
await sandbox.fs.writeTextFile(
  dir + "/main.ts",
  'import { v } from "./gen/v.ts";\n' +
    "Deno.serve({ port: 0, onListen() {} }, () => " +
    "new Response(`hello ${v} ${Deno.args.join(',')}\\n`));\n",
);
await sandbox.fs.writeTextFile(dir + "/src/data.txt", "built\n");

const build = await sandbox.deploy("basic-app", {
  path: dir,
  build: {
    mode: "local",
    entrypoint: "main.ts",
    args: ["x", "y z"],
    installCommand: "echo installing deps; mkdir -p gen",
    buildCommand: 'echo building; echo "export const v = \\"$(cat src/data.txt)\\";" > gen/v.ts',
  },
});
check(/^[0-9a-hjkmnp-z]{12}$/.test(build.id), "revision id shape: " + build.id);

const steps = new Set<string>();
let lines = 0;
for await (const log of build.logs()) {
  console.log(`LOG ${log.step} ${log.level} ${log.message}`);
  check(typeof log.timestamp === "string" && !isNaN(Date.parse(log.timestamp)), "timestamp");
  check(log.level === "info" || log.level === "error", "level " + log.level);
  steps.add(log.step);
  lines++;
}
check(lines > 0, "no build logs");
for (const s of ["preparing", "installing", "building", "deploying"]) {
  check(steps.has(s), "no log line of step " + s + ": " + [...steps]);
}

const rev = await build.done;
eq(rev.id, build.id, "revision id");
eq(rev.status, "succeeded", "revision status: " + JSON.stringify(rev));
eq(rev.failure_reason, null, "failure_reason");
check(rev.build_finished_at !== null, "build_finished_at");
const tl = (rev as unknown as { timelines: { domains: { domain: string }[] }[] }).timelines;
check(Array.isArray(tl) && tl.length === 1 && tl[0].domains.length === 1, "timelines " +
  JSON.stringify(tl));
// Build.done again (each access repeats the requests): the same finished revision.
eq((await build.done).status, "succeeded", "second done");
console.log("REVISION " + JSON.stringify(rev));
console.log("deploy_basic ok");
