// The sandboxes list (new Client().sandboxes.list) shows a sandbox with its labels.
import { Client, Sandbox } from "@deno/sandbox";
import { check, eq } from "./_lib.ts";

const run = crypto.randomUUID().slice(0, 8);
const labels = { suite: "sbxgw", run };
await using sandbox = await Sandbox.create({ labels });
const client = new Client();
const all = await client.sandboxes.list();
const me = all.find((s) => s.id === sandbox.id);
check(me !== undefined, `list() has ${sandbox.id}: ${JSON.stringify(all.map((s) => s.id))}`);
eq(me!.labels, labels, "labels in list()");
eq(me!.status, "running", "status");
check(me!.createdAt instanceof Date && Math.abs(me!.createdAt.getTime() - Date.now()) < 120_000,
  `createdAt ${me!.createdAt}`);
eq(me!.stoppedAt, null, "stoppedAt of a running sandbox");
const filtered = await client.sandboxes.list({ labels: { run } });
eq(filtered.map((s) => s.id), [sandbox.id], "list({labels}) filters");
const none = await client.sandboxes.list({ labels: { run: run + "-no" } });
eq(none.length, 0, "list() with labels nobody has");
console.log("list ok");
