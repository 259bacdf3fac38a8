// sandbox.fs: text files, stat (every FileInfo field), NotFound/ENOENT, readDir, mkdir/remove,
// walk, expandGlob.
import { Sandbox } from "@deno/sandbox";
import { check, eq, errInfo, HOME, rejects } from "./_lib.ts";

await using sandbox = await Sandbox.create();
const fs = sandbox.fs;
const d = HOME + "/fsb";
await fs.mkdir(d);
await fs.writeTextFile(d + "/a.txt", "héllo\n");
eq(await fs.readTextFile(d + "/a.txt"), "héllo\n", "readTextFile after writeTextFile");
await fs.writeTextFile(d + "/a.txt", "more\n", { append: true });
eq(await fs.readTextFile(d + "/a.txt"), "héllo\nmore\n", "append");
eq(new TextDecoder().decode(await fs.readFile(d + "/a.txt")), "héllo\nmore\n", "readFile");

const before = Date.now();
const st = await fs.stat(d + "/a.txt");
const fields: Record<string, string> = {
  isFile: "boolean", isDirectory: "boolean", isSymlink: "boolean", size: "number",
  dev: "number", ino: "number", mode: "number", nlink: "number", uid: "number", gid: "number",
  rdev: "number", blksize: "number", blocks: "number", isBlockDevice: "boolean",
  isCharDevice: "boolean", isFifo: "boolean", isSocket: "boolean",
};
for (const [k, t] of Object.entries(fields)) {
  eq(typeof (st as unknown as Record<string, unknown>)[k], t, `FileInfo.${k} type`);
}
for (const k of ["mtime", "atime", "birthtime", "ctime"] as const) {
  check(st[k] instanceof Date && !isNaN(st[k].getTime()), `FileInfo.${k} is a Date: ${st[k]}`);
}
check(Math.abs(st.mtime.getTime() - before) < 60_000, `mtime ${st.mtime.toISOString()} is now`);
eq([st.isFile, st.isDirectory, st.isSymlink], [true, false, false], "file kind");
eq(st.size, new TextEncoder().encode("héllo\nmore\n").length, "size");
eq(st.mode & 0o170000, 0o100000, "mode has S_IFREG");
check(st.nlink >= 1 && st.ino > 0, "nlink, ino");
const ds = await fs.stat(d);
eq([ds.isFile, ds.isDirectory], [false, true], "directory kind");

const e = await rejects(() => fs.stat(d + "/missing"), "stat of a missing file");
// The SDK rebuilds the class from constructorName with its bundled Deno shim's error classes
// (not the runtime's own Deno.errors), so the name is what can be checked.
check(e instanceof Error && e.constructor.name === "NotFound",
  `stat(missing) -> NotFound: ${errInfo(e)}`);
eq((e as { code?: string }).code, "ENOENT", "NotFound code");
const e2 = await rejects(() => fs.readTextFile(d + "/missing"), "readTextFile of a missing file");
eq((e2 as { code?: string }).code, "ENOENT", `readTextFile(missing) code (${errInfo(e2)})`);

await fs.mkdir(d + "/sub/deep", { recursive: true });
await fs.writeTextFile(d + "/sub/b.ts", "export {};\n");
await fs.writeTextFile(d + "/sub/deep/c.ts", "export {};\n");
const names: string[] = [];
for await (const ent of fs.readDir(d)) {
  names.push(`${ent.name}:${ent.isFile ? "f" : ent.isDirectory ? "d" : "?"}`);
}
eq(names.sort(), ["a.txt:f", "sub:d"], "readDir");

const walked: string[] = [];
for await (const w of fs.walk(d)) walked.push(w.path);
eq(walked.sort(), [d, d + "/a.txt", d + "/sub", d + "/sub/b.ts", d + "/sub/deep",
  d + "/sub/deep/c.ts"].sort(), "walk");
const onlyTs: string[] = [];
for await (const w of fs.walk(d, { exts: [".ts"], includeDirs: false })) onlyTs.push(w.name);
eq(onlyTs.sort(), ["b.ts", "c.ts"], "walk exts .ts");
const globbed: string[] = [];
for await (const g of fs.expandGlob("**/*.ts", { root: d })) globbed.push(g.path);
eq(globbed.sort(), [d + "/sub/b.ts", d + "/sub/deep/c.ts"], "expandGlob **/*.ts");

const e3 = await rejects(() => fs.remove(d + "/sub"), "remove of a non-empty dir");
check(e3 instanceof Error, `remove(non-empty) is an Error: ${errInfo(e3)}`);
await fs.remove(d + "/sub", { recursive: true });
await fs.remove(d + "/a.txt");
const left: string[] = [];
for await (const ent of fs.readDir(d)) left.push(ent.name);
eq(left, [], "readDir after remove");
await fs.remove(d);
await rejects(() => fs.stat(d), "stat after remove");
console.log("fs_basic ok");
