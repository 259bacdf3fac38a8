// deno.run with watch: the runtime restarts when its entrypoint changes; the SDK gets a
// "restart" event ($sandbox.deno.watcher.restart) and stderr still carries deno's own line.
import { Sandbox } from "@deno/sandbox";
import { check, HOME, until } from "./_lib.ts";

await using sandbox = await Sandbox.create();

const file = HOME + "/watched.ts";
await sandbox.fs.writeTextFile(file, 'console.log("v1");\nsetInterval(() => {}, 1000);\n');
const proc = await sandbox.deno.run({ entrypoint: file, watch: true, stdout: "piped", stderr: "piped" });
let restarts = 0;
proc.addEventListener("restart", () => restarts++);
let out = "", err = "";
const pump = async (s: ReadableStream<Uint8Array>, add: (t: string) => void) => {
  for await (const t of s.pipeThrough(new TextDecoderStream())) add(t);
};
const done = Promise.all([
  pump(proc.stdout!, (t) => out += t),
  pump(proc.stderr!, (t) => err += t),
]);
await until(async () => out.includes("v1\n"), 30000, "the first run's output");
await sandbox.fs.writeTextFile(file, 'console.log("v2");\nsetInterval(() => {}, 1000);\n');
await until(async () => out.includes("v2\n"), 30000, "the restarted run's output: " + err);
await until(async () => restarts >= 1, 5000, "a restart event: " + err);
check(/Restarting!/.test(err), "deno's restart line on stderr: " + err);
await proc.kill();
await proc.status;
await done;
console.log("deno_watch ok");
