// spawn cat with piped stdin fed from a ReadableStream; read stdout with for await.
import { Sandbox } from "@deno/sandbox";
import { check, eq } from "./_lib.ts";

await using sandbox = await Sandbox.create();
const proc = await sandbox.spawn("cat", { stdin: "piped", stdout: "piped" });
check(typeof proc.pid === "number" && proc.pid > 0, `pid ${proc.pid}`);
check(proc.stdin !== null && proc.stdout !== null, "stdin and stdout are piped");

const lines = Array.from({ length: 200 }, (_, i) => `line ${i} ${"x".repeat(i)}\n`);
const enc = new TextEncoder();
const input = new ReadableStream<Uint8Array<ArrayBuffer>>({
  start(c) {
    for (const l of lines) c.enqueue(enc.encode(l));
    c.close();
  },
});
const fed = input.pipeTo(proc.stdin!);

const dec = new TextDecoder();
let out = "";
for await (const chunk of proc.stdout!) out += dec.decode(chunk, { stream: true });
out += dec.decode();
await fed;
const status = await proc.status;
eq(status.code, 0, "cat exit code");
eq(status.success, true, "cat success");
eq(status.signal, null, "cat signal");
eq(out.length, lines.join("").length, "bytes through cat");
check(out === lines.join(""), "cat echoed its stdin exactly");
console.log("spawn_stdin ok");
