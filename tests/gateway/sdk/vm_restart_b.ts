// Gateway restart, part 2 (the harness restarted the gateway on the same data dir): connect to
// SBXGW_ID, see the process started before the restart still appending to /tmp/tick, kill.
import { Sandbox } from "@deno/sandbox";
import { arg, check } from "./_lib.ts";

const sandbox = await Sandbox.connect({ id: arg("ID") });
const n1 = Number(await sandbox.sh`wc -l < /tmp/tick`.text());
await new Promise((r) => setTimeout(r, 1000));
const n2 = Number(await sandbox.sh`wc -l < /tmp/tick`.text());
check(n2 > n1 && n1 > 0, `the tick process runs on: ${n1} then ${n2} lines`);
check((await sandbox.sh`pgrep -f tickloop`.noThrow().text()).trim() !== "", "tickloop alive");
console.log("still ticking");
await sandbox.kill();
