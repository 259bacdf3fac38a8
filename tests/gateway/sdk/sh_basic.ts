// sandbox.sh: output, .text(), .json(), a failing command, BASH_ENV (~/.bashrc is sourced).
import { Sandbox, SandboxCommandError } from "@deno/sandbox";
import { check, eq, errInfo, HOME } from "./_lib.ts";

await using sandbox = await Sandbox.create();
check(/^sbx_[a-z]{3}_[0-9a-hjkmnp-z]{20}$/.test(sandbox.id), `sandbox.id ${sandbox.id}`);

const ls = await sandbox.sh`ls -lh /`.stdout("piped");
eq(ls.status.code, 0, "ls -lh / exit code");
check(ls.status.success, "ls -lh / success");
check(/\btmp\b/.test(ls.stdoutText ?? ""), `ls -lh / lists tmp: ${ls.stdoutText}`);
// The default (inherit) form, as the docs write it.
await sandbox.sh`ls -lh /`;

eq(await sandbox.sh`echo hello`.text(), "hello\n", ".text()");
eq(await sandbox.sh`pwd`.text(), HOME + "\n", "the working directory is the gateway's --cwd");
const who = (await sandbox.sh`id -un`.text()).trim();
eq(who, HOME.split("/").pop(), "processes run as the workload user");
eq(await sandbox.sh`echo '{"a": [1, 2], "b": "x"}'`.json(), { a: [1, 2], b: "x" }, ".json()");
const name = "two words; $(not run)";
eq(await sandbox.sh`printf %s ${name}`.text(), name, "substitutions are escaped");

let err: unknown = null;
try {
  await sandbox.sh`echo failing >&2; exit 3`;
} catch (e) {
  err = e;
}
check(err instanceof SandboxCommandError, `a failing sh rejects with SandboxCommandError: ${errInfo(err)}`);
eq((err as SandboxCommandError).code, 3, "SandboxCommandError.code");
const nt = await sandbox.sh`exit 7`.noThrow();
eq(nt.status.code, 7, "noThrow() status code");
eq(nt.status.success, false, "noThrow() success");

// BASH_ENV=$HOME/.bashrc: an export at the top of ~/.bashrc (before Debian's
// "not interactive: return") is seen by every sh.
let rc = "";
try {
  rc = await sandbox.fs.readTextFile(HOME + "/.bashrc");
} catch (_) { /* none yet */ }
await sandbox.fs.writeTextFile(HOME + "/.bashrc", "export SBXGW_FROM_BASHRC=bashrc-ok\n" + rc);
eq(await sandbox.sh`echo $SBXGW_FROM_BASHRC`.text(), "bashrc-ok\n", "BASH_ENV sources ~/.bashrc");
console.log("sh_basic ok");
