// Benchmark (tests/bench/bench_gateway.py): one process writes SBXGW_BYTES bytes to its stdout,
// read by the SDK chunk by chunk. Prints one JSON line: {"bytes", "seconds", "sdk_cpu_s"} (this
// deno's own CPU time over the read; the harness reads the gateway's).
import { Sandbox } from "@deno/sandbox";
import process from "node:process";

const bytes = Number(Deno.env.get("SBXGW_BYTES") ?? String(1 << 30));
await using sandbox = await Sandbox.create();
await sandbox.sh`true`;
const u0 = process.cpuUsage();
const t0 = performance.now();
const proc = await sandbox.spawn("head", {
  args: ["-c", String(bytes), "/dev/zero"],
  stdout: "piped",
  stderr: "null",
});
let got = 0;
for await (const chunk of proc.stdout!) got += chunk.length;
const status = await proc.status;
const secs = (performance.now() - t0) / 1000;
const u1 = process.cpuUsage(u0);
if (got !== bytes || !status.success) {
  throw new Error(`read ${got} of ${bytes} bytes, status ${JSON.stringify(status)}`);
}
console.log(JSON.stringify({
  bytes: got,
  seconds: secs,
  sdk_cpu_s: (u1.user + u1.system) / 1e6,
}));
