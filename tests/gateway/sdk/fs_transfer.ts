// fs.upload of a file and of a directory tree, fs.download back; contents compared on the host.
import { Sandbox } from "@deno/sandbox";
import { check, eq, HOME } from "./_lib.ts";

const local = await Deno.makeTempDir({ prefix: "sbxgw-xfer-" });
try {
  // A file bigger than one 64 KiB upload chunk, and a tree with nested dirs.
  const big = new Uint8Array(300_000);
  for (let i = 0; i < big.length; i++) big[i] = (i * 7 + (i >> 9)) & 0xff;
  await Deno.writeFile(local + "/big.bin", big);
  await Deno.mkdir(local + "/tree/a/b", { recursive: true });
  await Deno.writeTextFile(local + "/tree/top.txt", "top\n");
  await Deno.writeTextFile(local + "/tree/a/mid.txt", "mid\n");
  await Deno.writeTextFile(local + "/tree/a/b/leaf.txt", "leaf\n");
  await Deno.writeTextFile(local + "/tree/a/b/empty.txt", "");

  await using sandbox = await Sandbox.create();
  const fs = sandbox.fs;
  await fs.upload(local + "/big.bin", HOME + "/big.bin");
  const got = await fs.readFile(HOME + "/big.bin");
  eq(got.length, big.length, "uploaded file size");
  check(got.every((b, i) => b === big[i]), "uploaded file content");
  eq((await sandbox.sh`sha256sum big.bin | cut -c1-64`.text()).trim(),
    [...new Uint8Array(await crypto.subtle.digest("SHA-256", big))]
      .map((b) => b.toString(16).padStart(2, "0")).join(""), "sha256 in the sandbox");

  // upload(dir, dest): dest/<basename(dir)>/... (the SDK walks and mkdirs non-recursively).
  await fs.mkdir(HOME + "/up");
  await fs.upload(local + "/tree", HOME + "/up");
  eq(await fs.readTextFile(HOME + "/up/tree/a/b/leaf.txt"), "leaf\n", "uploaded tree leaf");
  eq((await sandbox.sh`cd up && find . | sort`.text()).split("\n").filter((x) => x),
    [".", "./tree", "./tree/a", "./tree/a/b", "./tree/a/b/empty.txt", "./tree/a/b/leaf.txt",
      "./tree/a/mid.txt", "./tree/top.txt"], "uploaded tree listing");

  await fs.download(HOME + "/big.bin", local + "/big.back");
  const back = await Deno.readFile(local + "/big.back");
  check(back.length === big.length && back.every((b, i) => b === big[i]), "downloaded file");
  await Deno.mkdir(local + "/down");
  await fs.download(HOME + "/up/tree", local + "/down");
  eq(await Deno.readTextFile(local + "/down/tree/a/b/leaf.txt"), "leaf\n", "downloaded leaf");
  eq(await Deno.readTextFile(local + "/down/tree/top.txt"), "top\n", "downloaded top");
  eq((await Deno.stat(local + "/down/tree/a/b/empty.txt")).size, 0, "downloaded empty file");
  console.log("fs_transfer ok");
} finally {
  await Deno.remove(local, { recursive: true });
}
