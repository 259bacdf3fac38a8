// close() then Sandbox.connect({id}) sees a process started before (it keeps appending to a
// file); kill() then connect fails.
import { Sandbox } from "@deno/sandbox";
import { check, eq, errInfo, HOME, rejects, until } from "./_lib.ts";

const sandbox = await Sandbox.create({ timeout: "10m" });
const id = sandbox.id;
await sandbox.spawn("bash", {
  args: ["-c", `while :; do echo tick >> ${HOME}/ticks; sleep 0.1; done`],
  stdout: "null",
  stderr: "null",
});
const size = async (sb: Sandbox) => {
  try {
    return (await sb.fs.stat(HOME + "/ticks")).size;
  } catch (_) {
    return 0;
  }
};
await until(async () => (await size(sandbox)) > 0, 10_000, "the ticker's first line");
await sandbox.close();

const again = await Sandbox.connect({ id });
eq(again.id, id, "connected sandbox's id (x-deno-sandbox-id on connect)");
const s1 = await size(again);
check(s1 > 0, "the file written before close is there");
await until(async () => (await size(again)) > s1, 10_000, "the ticker to keep appending");
eq(await again.sh`echo still-here`.text(), "still-here\n", "sh after connect");

await again.kill();
const e = await rejects(() => Sandbox.connect({ id }), "connect after kill");
console.log("reconnect ok; connect after kill:", errInfo(e));
