// VM lifecycle, part 1: create with memory, labels and a duration timeout; close; connect
// again; prints "ID <id>" and leaves the sandbox running (part 2 kills it).
import { Client, Sandbox } from "@deno/sandbox";
import { check, eq } from "./_lib.ts";

const labels = { suite: "sbxgw-vm", kind: "lifecycle" };
const sandbox = await Sandbox.create({ memory: "1GiB", labels, timeout: "5m" });
const id = sandbox.id;
const memKb = Number((await sandbox.sh`awk '/MemTotal/ {print $2}' /proc/meminfo`.text()).trim());
// MemTotal is the guest memory minus what the kernel keeps: between 0.8 and 1 GiB.
check(memKb > 800 * 1024 && memKb <= 1024 * 1024, `MemTotal ${memKb} kB for memory 1GiB`);
eq((await sandbox.sh`id -un`.text()).trim(), "app", "the workload user");
await sandbox.fs.writeTextFile("/home/app/mark", id);
await sandbox.close();

const again = await Sandbox.connect({ id });
eq(again.id, id, "id after connect");
eq(await again.fs.readTextFile("/home/app/mark"), id, "file written before close");
const me = (await new Client().sandboxes.list({ labels })).find((s) => s.id === id);
eq(me?.labels, labels, "labels in list()");
await again.close();
console.log("ID " + id);
