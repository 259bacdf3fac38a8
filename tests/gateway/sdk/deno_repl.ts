// deno.repl: state kept across evals, call with args (a REPL function and a function
// expression), JSON values, an exception's class and message, console output on the REPL's
// stdout, close then ENOENT; deno.eval.
import { Sandbox } from "@deno/sandbox";
import { check, eq, errInfo, rejects } from "./_lib.ts";

await using sandbox = await Sandbox.create();

const repl = await sandbox.deno.repl({ stdout: "piped", stderr: "piped" });
const out: string[] = [];
const reading = (async () => {
  for await (const chunk of repl.stdout!.pipeThrough(new TextDecoderStream())) out.push(chunk);
})();

eq(await repl.eval("const x = 42;"), null, "a declaration's value");
eq(await repl.eval("x + 8"), 50, "state across evals");
eq(await repl.eval("let o = { a: [1, 'two', null], b: { c: true } }; o"), {
  a: [1, "two", null],
  b: { c: true },
}, "an object value");
eq(await repl.eval("await Promise.resolve('later')"), "later", "an awaited value");
await repl.eval("function add(a, b) { return a + b + x; }");
eq(await repl.call("add", 1, 2), 45, "call of a REPL function");
eq(await repl.call("(s, n) => s.repeat(n)", "ab", 3), "ababab", "call of a function expression");
eq(await repl.call("(v) => v", { k: [1, 2] }), { k: [1, 2] }, "args as JSON");
eq(await repl.eval("console.log('printed', x); 1"), 1, "eval that prints");

const e = await rejects(() => repl.eval("notDefined + 1"), "a ReferenceError");
check(e instanceof ReferenceError, "ReferenceError class: " + errInfo(e));
check(
  (e as Error).message.includes("notDefined is not defined"),
  "ReferenceError message: " + errInfo(e),
);
const e2 = await rejects(() => repl.call("add2", 1), "call of an undefined function");
check(e2 instanceof ReferenceError, "call: ReferenceError class: " + errInfo(e2));
const e3 = await rejects(() => repl.eval("throw new TypeError('tt')"), "a TypeError");
check(e3 instanceof TypeError && (e3 as Error).message.includes("tt"), "TypeError: " + errInfo(e3));
eq(await repl.eval("x"), 42, "the REPL survives exceptions");

// Values JSON carries but a strict parser balks at: a number beyond int64, a NUL, a lone
// surrogate (U+FFFD); and a value over the REPL's 1 MiB cap: a RangeError, not garbage.
eq(await repl.eval("1e20"), 1e20, "a number beyond int64");
eq(await repl.eval("2 ** 63"), 2 ** 63, "2^63");
eq(await repl.eval("'a\\u0000b'"), "a\u0000b", "a string with a NUL");
eq(await repl.eval("'x\\ud800y'"), "x\ufffdy", "a lone surrogate");
eq(await repl.eval("['\\ud83d\\ude00']"), ["\u{1F600}"], "a surrogate pair is kept");
const big = await rejects(() => repl.eval("'x'.repeat(2 << 20)"), "a value over the cap");
check(big instanceof RangeError, "a value over the cap: RangeError: " + errInfo(big));
eq(await repl.eval("x"), 42, "the REPL survives a value over the cap");

await repl.close();
const gone = await rejects(() => repl.eval("x"), "eval after close");
eq((gone as { code?: string }).code, "ENOENT", "eval after close: " + errInfo(gone));
await repl.close(); // ENOENT is swallowed by close()
const st = await repl.status; // processWait on the REPL's pid settles once it has exited
check(typeof st.code === "number", "REPL status after close: " + JSON.stringify(st));
await reading;
check(out.join("").includes("printed 42\n"), "console.log reached the REPL's stdout: " + out.join(""));

// deno.eval: a REPL, an eval, a close.
eq(await sandbox.deno.eval("const a = 1; const b = 2; a + b;"), 3, "deno.eval");

// processKill on a REPL's pid ends it: evals answer ENOENT.
const r2 = await sandbox.deno.repl({ stdout: "null", stderr: "null" });
eq(await r2.eval("1 + 1"), 2, "second REPL");
await r2.kill("SIGKILL");
eq((await r2.status).signal, "SIGKILL", "killed REPL's status");
const gone2 = await rejects(() => r2.eval("1"), "eval after kill");
eq((gone2 as { code?: string }).code, "ENOENT", "eval after kill: " + errInfo(gone2));

// A long eval aborted: the REPL is killed while an endless loop runs; the pending eval rejects
// (it never hangs), and the REPL's status says it was killed.
const r4 = await sandbox.deno.repl({ stdout: "null", stderr: "null" });
eq(await r4.eval("let spins = 0; 7"), 7, "fourth REPL");
const t0 = Date.now();
const longEval = r4.eval("while (true) { spins++; }");
await new Promise((r) => setTimeout(r, 500));
await r4.kill("SIGKILL");
const aborted = await rejects(() => longEval, "an endless eval whose REPL was killed");
check(aborted instanceof Error, "the aborted eval's error: " + errInfo(aborted));
check(Date.now() - t0 < 30000, "the aborted eval settled in " + (Date.now() - t0) + " ms");
eq((await r4.status).signal, "SIGKILL", "the aborted REPL's status");

// A REPL left open when the session ends (its denoHttpWait and the gateway's proc.wait are
// still in flight then).
const r3 = await sandbox.deno.repl({ stdout: "piped", stderr: "piped" });
eq(await r3.eval("[1, 2].map((v) => v * 3)"), [3, 6], "third REPL");

console.log("deno_repl ok");
