// Output is streamed: chunks of a program printing 3 lines with pauses arrive before it exits.
import { Sandbox } from "@deno/sandbox";
import { check, eq } from "./_lib.ts";

await using sandbox = await Sandbox.create();
const proc = await sandbox.spawn("bash", {
  args: ["-c", "for i in 1 2 3; do echo line $i; sleep 0.7; done"],
  stdout: "piped",
});
let exitedAt = 0;
const status = proc.status.then((s) => {
  exitedAt = performance.now();
  return s;
});
const dec = new TextDecoder();
const seen: { t: number; text: string }[] = [];
for await (const chunk of proc.stdout!) {
  seen.push({ t: performance.now(), text: dec.decode(chunk) });
}
const st = await status;
eq(st.code, 0, "exit code");
eq(seen.map((c) => c.text).join(""), "line 1\nline 2\nline 3\n", "output");
check(seen.length >= 2, `output came in ${seen.length} chunk(s), expected one per line`);
// The first line was printed ~1.4 s before the exit: it must have been delivered well before.
check(exitedAt - seen[0].t > 700,
  `first chunk ${(exitedAt - seen[0].t).toFixed(0)} ms before the exit status (want > 700)`);
console.log("spawn_stream ok", seen.map((c) => (c.t - seen[0].t).toFixed(0)).join(" "));
