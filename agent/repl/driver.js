(() => {
  'use strict';
  const fs = require('fs'), net = require('net'), vm = require('vm'), util = require('util');
  let tla = null;
  try { tla = require('internal/repl/await').processTopLevelAwait; } catch (e) { tla = null; }
  const send = (b) => { let o = 0; while (o < b.length) o += fs.writeSync(4, b, o); };
  let buf = Buffer.alloc(0), want = -1, busy = false, abort = null;
  process.on('SIGINT', () => { if (abort) abort(new Error('Script execution was interrupted by `SIGINT`')); });
  const clean = (s) => {
    const l = s.split('\n'), i = l.findIndex((x) => /^\s+at .*(\(node:vm:|\[eval\])/.test(x));
    return (i < 0 ? l : l.slice(0, i)).join('\n');
  };
  const done = (failed, x) => {
    let v = null, e = null;
    try {
      if (failed) e = x !== null && typeof x === 'object' && typeof x.stack === 'string' ? clean(x.stack) : String(x);
      else if (x !== undefined) v = util.inspect(x);
    } catch (e2) { e = 'error formatting the result: ' + String(e2); v = null; }
    const vb = v === null ? null : Buffer.from(v), eb = e === null ? null : Buffer.from(e);
    send(Buffer.concat([Buffer.from('result ' + (vb ? vb.length : -1) + ' ' + (eb ? eb.length : -1) + '\n'),
                        vb || Buffer.alloc(0), eb || Buffer.alloc(0)]));
    busy = false; abort = null; setImmediate(pump);
  };
  const script = (src) => new vm.Script(src, { filename: 'repl' });
  const compile = (code) => {
    if (/^\s*\{/.test(code) && /\}\s*$/.test(code)) {
      try { return [script('(' + code + '\n)'), false]; } catch (e) { /* a block, not an object */ }
    }
    try { return [script(code), false]; } catch (e) {
      let w = null;
      if (tla && e instanceof SyntaxError && /\bawait\b/.test(code)) { try { w = tla(code); } catch (e2) { w = null; } }
      if (w === null) throw e;
      // node >= 16.6 returns { value: (last expression) } from the wrapper; older, the value.
      return [script(w), /\{ value: \(/.test(w) && !/\{ value: \(/.test(code)];
    }
  };
  const run = (code) => {
    busy = true;
    let val, wrapped;
    try {
      const [s, w] = compile(code);
      wrapped = w;
      val = s.runInThisContext({ breakOnSigint: true, displayErrors: false });
    } catch (e) { return done(true, e); }
    if (!util.types.isPromise(val)) return done(false, val);
    new Promise((res, rej) => { abort = rej; val.then(res, rej); }).then(
      (x) => done(false, wrapped ? (x === undefined ? undefined : x.value) : x), (x) => done(true, x));
  };
  const pump = () => {
    while (!busy) {
      if (want < 0) {
        const nl = buf.indexOf(10);
        if (nl < 0) return;
        want = parseInt(buf.subarray(0, nl).toString(), 10);
        buf = buf.subarray(nl + 1);
      }
      if (buf.length < want) return;
      const code = buf.subarray(0, want).toString();
      buf = buf.subarray(want); want = -1;
      run(code);
    }
  };
  const inp = new net.Socket({ fd: 3, readable: true, writable: false });
  inp.on('data', (d) => { buf = Buffer.concat([buf, d]); pump(); });
  inp.on('end', () => process.exit(0));
  send(Buffer.from('ready\n'));
})();
