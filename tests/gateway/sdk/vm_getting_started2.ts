// The Deno Sandbox docs' second getting-started program: upload a hello.ts, run it with deno
// in the sandbox, print each chunk of its output (the file is uploaded with sandbox.fs.upload
// from a local temporary file, since this runs from a test and not from a project dir).
import { Sandbox } from "@deno/sandbox";

const local = await Deno.makeTempDir({ prefix: "sbxgw-hello-" });
await Deno.writeTextFile(
  `${local}/hello.ts`,
  `for (let i = 0; i < 3; i++) {\n  console.log("Hello from the sandbox", i);\n}\n`,
);

await using sandbox = await Sandbox.create();
await sandbox.fs.upload(`${local}/hello.ts`, "hello.ts");
const proc = await sandbox.spawn("deno", {
  args: ["run", "hello.ts"],
  stdout: "piped",
});
let all = "";
for await (const chunk of proc.stdout!) {
  const text = new TextDecoder().decode(chunk);
  all += text;
  console.log(text);
}
const status = await proc.status;
await Deno.remove(local, { recursive: true });
if (status.code !== 0) throw new Error(`deno run hello.ts exited ${status.code}`);
for (let i = 0; i < 3; i++) {
  if (!all.includes(`Hello from the sandbox ${i}`)) {
    throw new Error(`output lacks line ${i}: ${JSON.stringify(all)}`);
  }
}
