import vm from "node:vm";
const out = Deno.openSync("/proc/self/fd/4", { write: true });
const put = (b) => { let o = 0; while (o < b.length) o += out.writeSync(b.subarray(o)); };
const enc = new TextEncoder();
let abort = null;
Deno.addSignalListener("SIGINT", () => { if (abort) abort(new Error("Script execution was interrupted by `SIGINT`")); });
const clean = (s) => { const l = s.split("\n"), i = l.findIndex((x) => /^\s+at .*(node:vm|ext:|\[eval\]|repl:|\$deno\$eval)/.test(x)); return (i < 0 ? l : l.slice(0, i)).join("\n"); };
/* format "json" (repl.eval `format`): the value as JSON text. undefined, functions and symbols
 * become null (left out of objects), BigInt its decimal string, a Map an object of its entries,
 * a Set an array, a repeated ancestor (a cycle) the string "[Circular]", NaN and Infinity null;
 * toJSON is honoured (a Date is its ISO string). A thrown value becomes the JSON error object
 * {constructorName, message, stack}. */
const toJ = (x, anc) => {
  if (x === undefined || typeof x === "function" || typeof x === "symbol") return undefined;
  if (typeof x === "bigint") return x.toString();
  if (typeof x === "number") return Number.isFinite(x) ? x : null;
  if (x === null || typeof x !== "object") return x;
  if (anc.includes(x)) return "[Circular]";
  if (typeof x.toJSON === "function") { const y = x.toJSON(); if (y === null || typeof y !== "object" || y === x) return y === x ? null : toJ(y, anc); x = y; }
  anc.push(x);
  try {
    if (x instanceof Map) { const o = {}; for (const [k, v] of x) { const j = toJ(v, anc); if (j !== undefined) o[String(k)] = j; } return o; }
    if (x instanceof Set) return Array.from(x, (v) => { const j = toJ(v, anc); return j === undefined ? null : j; });
    if (Array.isArray(x) || ArrayBuffer.isView(x)) return Array.from(x, (v) => { const j = toJ(v, anc); return j === undefined ? null : j; });
    const o = {};
    for (const k of Object.keys(x)) { const j = toJ(x[k], anc); if (j !== undefined) o[k] = j; }
    return o;
  } finally { anc.pop(); }
};
const errJ = (x) => {
  const isObj = x !== null && typeof x === "object";
  let name = "Error";
  try { if (isObj && x.constructor && typeof x.constructor.name === "string" && x.constructor.name) name = x.constructor.name; } catch (_) { /* keep Error */ }
  return JSON.stringify({ constructorName: name, message: isObj && "message" in x ? String(x.message) : String(x), stack: isObj && typeof x.stack === "string" ? clean(x.stack) : null });
};
const result = (failed, x, json) => {
  let v = null, e = null;
  try {
    if (failed) {
      e = x !== null && typeof x === "object" && typeof x.stack === "string" ? clean(x.stack) : String(x);
      if (json) v = errJ(x);
    } else if (json) { const j = toJ(x, []); v = JSON.stringify(j === undefined ? null : j); }
    else if (x !== undefined) v = Deno.inspect(x);
  } catch (e2) {
    e = "error formatting the result: " + String(e2); v = null;
    if (json) v = JSON.stringify({ constructorName: "TypeError", message: e, stack: null });
  }
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
const run = async (code, json) => {
  let val;
  try { val = compile(code).runInThisContext({ breakOnSigint: true, displayErrors: false }); } catch (e) { return result(true, e, json); }
  if (!(val instanceof Promise)) return result(false, val, json);
  try { result(false, await new Promise((res, rej) => { abort = rej; val.then(res, rej); }), json); } catch (e) { result(true, e, json); } finally { abort = null; }
};
const inp = Deno.openSync("/proc/self/fd/3", { read: true });
let buf = new Uint8Array(0), want = -1, json = false;
const chunk = new Uint8Array(1 << 16);
put(enc.encode("ready\n"));
for (;;) {
  while (true) {
    if (want < 0) { const nl = buf.indexOf(10); if (nl < 0) break; const h = new TextDecoder().decode(buf.subarray(0, nl)).split(" "); want = parseInt(h[0], 10); json = h[1] === "json"; buf = buf.subarray(nl + 1); }
    if (buf.length < want) break;
    const code = new TextDecoder().decode(buf.subarray(0, want)); buf = buf.subarray(want); want = -1;
    await run(code, json);
  }
  const n = await inp.read(chunk);
  if (n === null) Deno.exit(0);
  const nb = new Uint8Array(buf.length + n); nb.set(buf, 0); nb.set(chunk.subarray(0, n), buf.length); buf = nb;
}
