// sandbox.deploy() with a build command that fails: the logs carry its output and an error line,
// and build.done resolves with a failed revision (the SDK does not reject).
import { Sandbox } from "@deno/sandbox";
import { check, eq, HOME } from "./_lib.ts";

await using sandbox = await Sandbox.create();
const dir = HOME + "/deploy-fail-app";
await sandbox.fs.mkdir(dir, { recursive: true });
await sandbox.fs.writeTextFile(dir + "/main.ts", "console.log(1);\n");

const build = await sandbox.deploy("fail-app", {
  path: dir,
  build: { mode: "local", buildCommand: "echo before-fail; echo oops >&2; exit 3" },
});
const msgs: string[] = [];
for await (const log of build.logs()) {
  msgs.push(`${log.step} ${log.level} ${log.message}`);
}
const rev = await build.done;
eq(rev.status, "failed", "status");
eq(rev.failure_reason, "error", "failure_reason");
check(msgs.some((m) => m === "building info before-fail"), "stdout line: " + msgs.join("|"));
check(msgs.some((m) => m === "building info oops"), "stderr line: " + msgs.join("|"));
check(msgs.some((m) => m.startsWith("building error") && m.includes("exit status 3")),
  "error line: " + msgs.join("|"));
console.log("deploy_fail ok");
