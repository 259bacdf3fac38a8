// Benchmark (tests/bench/bench_gateway.py, vm backend): Sandbox.create() until the WebSocket is
// up (the VM booted), then the first `sh` answered; prints {"create_ms", "sh_ms"}.
import { Sandbox } from "@deno/sandbox";

const t0 = performance.now();
const sandbox = await Sandbox.create();
const t1 = performance.now();
await sandbox.sh`true`;
const t2 = performance.now();
await sandbox.kill();
console.log(JSON.stringify({ create_ms: t1 - t0, sh_ms: t2 - t1 }));
