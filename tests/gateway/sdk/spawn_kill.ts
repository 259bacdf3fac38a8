// proc.kill() -> SIGTERM, code 143; proc.output() collects stdout and stderr.
import { Sandbox } from "@deno/sandbox";
import { check, eq } from "./_lib.ts";

await using sandbox = await Sandbox.create();
const proc = await sandbox.spawn("sleep", { args: ["600"], stdout: "piped", stderr: "piped" });
await proc.kill();
const st = await proc.status;
eq(st.signal, "SIGTERM", "status.signal after kill()");
eq(st.code, 143, "status.code after kill()");
eq(st.success, false, "status.success after kill()");

const p2 = await sandbox.spawn("sleep", { args: ["600"] });
await p2.kill("SIGKILL");
const st2 = await p2.status;
eq([st2.signal, st2.code], ["SIGKILL", 137], "kill(SIGKILL)");

const p3 = await sandbox.spawn("bash", {
  args: ["-c", "echo to-out; echo to-err >&2; exit 5"],
  stdout: "piped",
  stderr: "piped",
});
const out = await p3.output();
eq(out.status.code, 5, "output().status.code");
eq(out.stdoutText, "to-out\n", "output().stdoutText");
eq(out.stderrText, "to-err\n", "output().stderrText");
check(out.stdout instanceof Uint8Array && out.stdout.length === 7, "output().stdout bytes");
console.log("spawn_kill ok");
