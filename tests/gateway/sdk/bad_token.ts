// A token the gateway did not mint -> InvalidTokenError (401 + {"code":"INVALID_TOKEN"}).
import { InvalidTokenError, Sandbox } from "@deno/sandbox";
import { check, errInfo, rejects } from "./_lib.ts";

const e = await rejects(
  () => Sandbox.create({ token: "ddo_" + "0".repeat(40) }),
  "create with a wrong token",
);
check(e instanceof InvalidTokenError, `create with a wrong token: ${errInfo(e)}`);
console.log("bad_token ok");
