// VM lifecycle, part 2: connect to SBXGW_ID, kill it; a later connect fails.
import { Sandbox } from "@deno/sandbox";
import { arg, eq, errInfo, rejects } from "./_lib.ts";

const id = arg("ID");
const sandbox = await Sandbox.connect({ id });
eq((await sandbox.sh`echo up`.text()), "up\n", "sh after connect");
await sandbox.kill();
const e = await rejects(() => Sandbox.connect({ id }), "connect after kill");
console.log("killed; connect after kill: " + errInfo(e));
