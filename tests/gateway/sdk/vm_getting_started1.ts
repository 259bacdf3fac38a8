// The Deno Sandbox docs' first getting-started program, verbatim (DENO_DEPLOY_TOKEN and the
// endpoints come from the environment).
import { Sandbox } from "@deno/sandbox";

await using sandbox = await Sandbox.create();
await sandbox.sh`ls -lh /`;
