import vm from "node:vm";
const out = Deno.openSync("/proc/self/fd/4", { write: true });
const put = (b) => { let o = 0; while (o < b.length) o += out.writeSync(b.subarray(o)); };
const enc = new TextEncoder();
let abort = null;
Deno.addSignalListener("SIGINT", () => { if (abort) abort(new Error("Script execution was interrupted by `SIGINT`")); });
const clean = (s) => { const l = s.split("\n"), i = l.findIndex((x) => /^\s+at .*(node:vm|ext:|\[eval\]|repl:|\$deno\$eval)/.test(x)); return (i < 0 ? l : l.slice(0, i)).join("\n"); };
const result = (failed, x) => {
  let v = null, e = null;
  try {
    if (failed) e = x !== null && typeof x === "object" && typeof x.stack === "string" ? clean(x.stack) : String(x);
    else if (x !== undefined) v = Deno.inspect(x);
  } catch (e2) { e = "error formatting the result: " + String(e2); v = null; }
  const vb = v === null ? null : enc.encode(v), eb = e === null ? null : enc.encode(e);
  const head = enc.encode("result " + (vb ? vb.length : -1) + " " + (eb ? eb.length : -1) + "\n");
  const all = new Uint8Array(head.length + (vb ? vb.length : 0) + (eb ? eb.length : 0));
  all.set(head, 0); if (vb) all.set(vb, head.length); if (eb) all.set(eb, head.length + (vb ? vb.length : 0));
  put(all);
};
const script = (src) => new vm.Script(src, { filename: "repl" });
const compile = (code) => {
  if (/^\s*\{/.test(code) && /\}\s*$/.test(code)) { try { return script("(" + code + "\n)"); } catch (_) { /* a block */ } }
  try { return script(code); } catch (e) {
    if (!(e instanceof SyntaxError) || !/\bawait\b/.test(code)) throw e;
    /* Top-level await: an expression keeps its value; statements run in an async function
     * (their declarations stay local to this eval). */
    try { return script("(async () => (\n" + code + "\n))()"); } catch (_) { return script("(async () => {\n" + code + "\n})()"); }
  }
};
const run = async (code) => {
  let val;
  try { val = compile(code).runInThisContext({ breakOnSigint: true, displayErrors: false }); } catch (e) { return result(true, e); }
  if (!(val instanceof Promise)) return result(false, val);
  try { result(false, await new Promise((res, rej) => { abort = rej; val.then(res, rej); })); } catch (e) { result(true, e); } finally { abort = null; }
};
const inp = Deno.openSync("/proc/self/fd/3", { read: true });
let buf = new Uint8Array(0), want = -1;
const chunk = new Uint8Array(1 << 16);
put(enc.encode("ready\n"));
for (;;) {
  while (true) {
    if (want < 0) { const nl = buf.indexOf(10); if (nl < 0) break; want = parseInt(new TextDecoder().decode(buf.subarray(0, nl)), 10); buf = buf.subarray(nl + 1); }
    if (buf.length < want) break;
    const code = new TextDecoder().decode(buf.subarray(0, want)); buf = buf.subarray(want); want = -1;
    await run(code);
  }
  const n = await inp.read(chunk);
  if (n === null) Deno.exit(0);
  const nb = new Uint8Array(buf.length + n); nb.set(buf, 0); nb.set(chunk.subarray(0, n), buf.length); buf = nb;
}
