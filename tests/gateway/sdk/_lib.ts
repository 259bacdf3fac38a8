// Shared by the SDK programs: tiny assertions (no jsr imports) and the harness's inputs.
// Every program exits non-zero with a clear message (an uncaught Error) when an expectation fails.

export function check(cond: unknown, msg: string): asserts cond {
  if (!cond) throw new Error("expectation failed: " + msg);
}

export function eq<T>(got: T, want: T, what: string): void {
  const g = JSON.stringify(got), w = JSON.stringify(want);
  if (g !== w) throw new Error(`${what}: got ${g}, want ${w}`);
}

/** The error @fn rejects with; throws if it resolves. */
export async function rejects(fn: () => Promise<unknown>, what: string): Promise<unknown> {
  try {
    await fn();
  } catch (e) {
    return e;
  }
  throw new Error(`${what}: resolved, expected a rejection`);
}

/** A harness-provided value (env SBXGW_<name>), or throw. */
export function arg(name: string): string {
  const v = Deno.env.get("SBXGW_" + name);
  if (v === undefined || v === "") throw new Error(`harness did not set SBXGW_${name}`);
  return v;
}

/** The workload user's home (the gateway's --cwd), as the harness passes it. */
export const HOME = Deno.env.get("SBXGW_HOME") ?? "/home/app";

/** Poll @probe until it returns true, at most @ms. For state that has no event to wait on. */
export async function until(probe: () => Promise<boolean>, ms: number, what: string) {
  const end = Date.now() + ms;
  for (;;) {
    if (await probe()) return;
    if (Date.now() > end) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

export function errInfo(e: unknown): string {
  if (e instanceof Error) {
    return `${e.constructor.name}(${(e as { code?: unknown }).code ?? ""}): ${e.message}`;
  }
  return String(e);
}

/**
 * GET @path at the gateway's ingress (@ingress "HOST:PORT") with Host @host, over a raw TCP
 * connection (fetch would send the ingress's own address as Host): [status, body].
 */
export async function ingressGet(
  ingress: string,
  host: string,
  path = "/",
): Promise<[number, string]> {
  const [hostname, port] = ingress.split(":");
  const conn = await Deno.connect({ hostname, port: Number(port) });
  try {
    await conn.write(
      new TextEncoder().encode(
        `GET ${path} HTTP/1.1\r\nHost: ${host}\r\nConnection: close\r\n\r\n`,
      ),
    );
    const chunks: Uint8Array[] = [];
    const buf = new Uint8Array(65536);
    for (;;) {
      const n = await conn.read(buf);
      if (n === null) break;
      chunks.push(buf.slice(0, n));
    }
    const all = new Uint8Array(chunks.reduce((n, c) => n + c.length, 0));
    let off = 0;
    for (const c of chunks) {
      all.set(c, off);
      off += c.length;
    }
    const text = new TextDecoder().decode(all);
    return [Number(text.split(" ")[1]), text.slice(text.indexOf("\r\n\r\n") + 4)];
  } finally {
    try {
      conn.close();
    } catch { /* closed by the peer */ }
  }
}
