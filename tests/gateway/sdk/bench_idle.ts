// Benchmark (tests/bench/bench_gateway.py): SBXGW_N sandboxes connected at once, each after one
// `sh`, then idle: it creates the file SBXGW_READY and waits for SBXGW_DONE to exist (the harness
// reads the gateway's memory in between), then closes them all.
import { Sandbox } from "@deno/sandbox";

const n = Number(Deno.env.get("SBXGW_N") ?? "20");
const ready = Deno.env.get("SBXGW_READY")!;
const done = Deno.env.get("SBXGW_DONE")!;
const boxes: Sandbox[] = [];
try {
  for (let i = 0; i < n; i++) {
    const sb = await Sandbox.create();
    boxes.push(sb);
    await sb.sh`true`;
  }
  Deno.writeTextFileSync(ready, "ready\n");
  for (let i = 0; i < 600; i++) {
    try {
      Deno.statSync(done);
      break;
    } catch {
      await new Promise((r) => setTimeout(r, 100));
    }
  }
} finally {
  for (const sb of boxes) await sb.close();
}
