// Benchmark (tests/bench/bench_gateway.py): `sandbox.sh\`true\`` round trips on one sandbox.
// Prints one JSON line: {"n", "p50_ms", "mean_ms"} (the harness reads the gateway's CPU time).
import { Sandbox } from "@deno/sandbox";

const n = Number(Deno.env.get("SBXGW_N") ?? "100");
await using sandbox = await Sandbox.create();
for (let i = 0; i < 10; i++) await sandbox.sh`true`; // warm-up
const times: number[] = [];
for (let i = 0; i < n; i++) {
  const t0 = performance.now();
  await sandbox.sh`true`;
  times.push(performance.now() - t0);
}
times.sort((a, b) => a - b);
console.log(JSON.stringify({
  n,
  p50_ms: times[Math.floor(n / 2)],
  mean_ms: times.reduce((a, b) => a + b, 0) / n,
}));
