// sandbox.fs.umask, FsFile.utime, FsFile.lock/unlock: fs.umask, fs.futimes, fs.flock (waiting,
// as Deno's lock() does) and fs.funlock through the gateway.
import { Sandbox } from "@deno/sandbox";
import { check, eq, HOME } from "./_lib.ts";

await using sandbox = await Sandbox.create();
const fs = sandbox.fs;
const d = HOME + "/fsm";
await fs.mkdir(d);

// umask: reads without a mask, sets and returns the previous one with it.
const old = await fs.umask();
eq(typeof old, "number", "umask() is a number");
check(old >= 0 && old <= 0o777, `umask() ${old} in 0..0o777`);
eq(await fs.umask(), old, "umask() only reads");
eq(await fs.umask(0o077), old, "umask(0o077) returns the previous mask");
try {
  await fs.mkdir(d + "/private");
  eq((await fs.stat(d + "/private")).mode & 0o777, 0o700, "mkdir under umask 0o077");
  const f = await fs.create(d + "/private.txt");
  await f.close();
  eq((await fs.stat(d + "/private.txt")).mode & 0o777, 0o600, "create under umask 0o077");
} finally {
  eq(await fs.umask(old), 0o077, "umask(old) returns 0o077");
}
eq(await fs.umask(), old, "umask restored");

// FsFile.utime sets the times of the open file.
const p = d + "/t.txt";
await fs.writeTextFile(p, "x");
const f = await fs.open(p, { read: true, write: true });
const at = new Date("2001-02-03T04:05:06.789Z"), mt = new Date("2011-12-13T14:15:16.5Z");
await f.utime(at, mt);
const st = await f.stat();
eq([st.atime?.toISOString(), st.mtime?.toISOString()], [at.toISOString(), mt.toISOString()],
  "FsFile.utime");

// lock/unlock: a second handle's lock() waits until the first unlocks, then gets it.
const g = await fs.open(p, { read: true });
await f.lock(true);
let got = false;
const waiting = g.lock(true).then(() => { got = true; });
await new Promise((r) => setTimeout(r, 400));
check(!got, "lock(true) on a second handle waits while the first holds the lock");
await f.unlock();
await waiting;
check(got, "lock(true) resolved once the first handle unlocked");
// shared locks share; the lock goes with the handle on close.
await g.unlock();
await f.lock(false);
await g.lock(false);
await g.unlock();
await f.close(); // releases f's shared lock
let got2 = false;
const w2 = g.lock(true).then(() => { got2 = true; });
await Promise.race([w2, new Promise((r) => setTimeout(r, 5000))]);
check(got2, "lock(true) succeeds once the other handle closed");
await g.unlock();
await g.close();
await fs.remove(d, { recursive: true });
console.log("fs_more ok");
