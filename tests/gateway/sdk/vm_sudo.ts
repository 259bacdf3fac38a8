// vm backend: sh runs as the image's workload user `app` in /home/app; .sudo() is root without a
// password (the Deno-compatible image profile); .text() and .json().
import { Sandbox } from "@deno/sandbox";
import { eq } from "./_lib.ts";

await using sandbox = await Sandbox.create();
eq(await sandbox.sh`id -un; pwd`.text(), "app\n/home/app\n", "user and cwd");
// `.sudo().text()` would lose the sudo: 0.13.2's builder keeps only the last modifier
// (docs/GATEWAY.md), so sudo goes in the command itself here, and .sudo() alone below.
eq(await sandbox.sh`sudo -n id -u`.text(), "0\n", "sudo");
await sandbox.sh`touch /root/by-sudo`.sudo();
eq(await sandbox.sh`sudo -n ls /root/by-sudo`.text(), "/root/by-sudo\n", ".sudo()");
eq(await sandbox.sh`echo '{"a":[1,2],"b":"x"}'`.json(), { a: [1, 2], b: "x" }, "json");
console.log("sudo ok");
