// What the README shows: start scripts/gateway.sh, export the three variables it prints, then
//   deno run -A tests/gateway/sdk/seed.ts
// creates a sandbox (a QEMU VM), runs a shell command, uploads a Deno program and runs it,
// prints its output, and kills the sandbox.
import { Sandbox } from "@deno/sandbox";

const sandbox = await Sandbox.create({ labels: { from: "seed" } });
console.log("created", sandbox.id);
try {
  console.log(await sandbox.sh`uname -a && id`.text());

  const dir = await Deno.makeTempDir();
  await Deno.writeTextFile(
    `${dir}/hello.ts`,
    `console.log("Hello from Deno", Deno.version.deno, "in", Deno.cwd());\n`,
  );
  await sandbox.fs.upload(`${dir}/hello.ts`, "hello.ts");
  await Deno.remove(dir, { recursive: true });

  const proc = await sandbox.spawn("deno", { args: ["run", "hello.ts"], stdout: "piped" });
  for await (const chunk of proc.stdout!) {
    await Deno.stdout.write(chunk);
  }
  const status = await proc.status;
  console.log("deno run hello.ts exited with", status.code);
} finally {
  await sandbox.kill();
  console.log("killed", sandbox.id);
}
