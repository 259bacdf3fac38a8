// sandbox.env: set/get/delete/toObject, and a later sh sees what was set.
import { Sandbox } from "@deno/sandbox";
import { check, eq } from "./_lib.ts";

await using sandbox = await Sandbox.create();
eq(await sandbox.env.get("SBXGW_NOPE"), undefined, "get of an unset var");
await sandbox.env.set("SBXGW_COLOR", "blue green");
eq(await sandbox.env.get("SBXGW_COLOR"), "blue green", "get after set");
const all = await sandbox.env.toObject();
eq(all["SBXGW_COLOR"], "blue green", "toObject() has the var");
check(Object.values(all).every((v) => typeof v === "string"), "toObject() values are strings");
eq(await sandbox.sh`echo "$SBXGW_COLOR"`.text(), "blue green\n", "sh sees env.set");
const p = await sandbox.spawn("printenv", { args: ["SBXGW_COLOR"], stdout: "piped" });
eq((await p.output()).stdoutText, "blue green\n", "spawn sees env.set");
await sandbox.env.delete("SBXGW_COLOR");
eq(await sandbox.env.get("SBXGW_COLOR"), undefined, "get after delete");
check(!("SBXGW_COLOR" in await sandbox.env.toObject()), "toObject() after delete");
eq(await sandbox.sh`echo "[$SBXGW_COLOR]"`.text(), "[]\n", "sh after delete");
console.log("env ok");
