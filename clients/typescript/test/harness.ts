// Starts the real comfy-reality server and the fake ComfyUI on free ports for the tests, each
// with its own temporary directory, and reads the addresses they print (no sleeping).
import { spawn, type ChildProcess } from "node:child_process";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";

const repoRoot = resolve(dirname(fileURLToPath(import.meta.url)), "../../..");
/** The server binary: $COMFY_REALITY_BIN, else the repository's debug build. */
export const serverBin =
  process.env["COMFY_REALITY_BIN"] ?? join(repoRoot, "target/debug/comfy-reality");
/** The fake ComfyUI binary: $COMFY_REALITY_FAKE_BIN, else the repository's debug build. */
export const fakeBin =
  process.env["COMFY_REALITY_FAKE_BIN"] ??
  join(repoRoot, "target/debug/comfy-reality-fake-comfyui");

/** How long a child may take to print its address before the test fails. */
const START_GUARD_MS = 30_000;

/** A started child process with its temporary directory. */
export interface Started {
  /** The address or URL it printed. */
  address: string;
  /** Its temporary directory (output dir of the fake, data dir of the server). */
  dir: string;
  /** Everything it wrote to stderr so far. */
  stderr(): string;
  /** SIGTERM, wait for the exit, remove the directory. */
  stop(): Promise<void>;
}

async function start(
  bin: string,
  args: (dir: string) => string[],
  prefix: string,
  name: string,
): Promise<Started> {
  const dir = await mkdtemp(join(tmpdir(), `${name}-`));
  const child = spawn(bin, args(dir), { stdio: ["ignore", "pipe", "pipe"] });
  let stderr = "";
  child.stderr.setEncoding("utf8");
  child.stderr.on("data", (text: string) => (stderr += text));
  // A child that failed to start (no such binary) emits "error" and never "exit".
  const exited = new Promise<void>((done) => {
    child.once("exit", () => done());
    child.once("error", () => done());
  });
  const lines = createInterface({ input: child.stdout });
  const address = await new Promise<string>((done, fail) => {
    const guard = setTimeout(
      () => fail(new Error(`${name} printed no address in ${START_GUARD_MS} ms:\n${stderr}`)),
      START_GUARD_MS,
    );
    child.once("error", (error) => fail(new Error(`cannot start ${name} (${bin}): ${error.message}`)));
    child.once("exit", (code) =>
      fail(new Error(`${name} exited (${code}) before printing its address:\n${stderr}`)),
    );
    lines.on("line", (line) => {
      if (line.startsWith(prefix)) {
        clearTimeout(guard);
        done(line.slice(prefix.length).trim());
      }
    });
  }).catch(async (error: unknown) => {
    await kill(child, exited);
    await rm(dir, { recursive: true, force: true });
    throw error;
  });
  return {
    address,
    dir,
    stderr: () => stderr,
    stop: async () => {
      await kill(child, exited);
      await rm(dir, { recursive: true, force: true });
    },
  };
}

async function kill(child: ChildProcess, exited: Promise<void>): Promise<void> {
  if (child.exitCode === null && child.signalCode === null) {
    child.kill("SIGTERM");
  }
  await exited;
}

/** The fake ComfyUI, fast (`--time-scale 0.05`), writing into its own output dir. */
export function startFake(): Promise<Started> {
  return start(
    fakeBin,
    (dir) => ["--port", "0", "--time-scale", "0.05", "--output-dir", dir],
    "comfy-reality-fake-comfyui listening on ",
    "fake-comfyui",
  );
}

/** `comfy-reality serve` against one ComfyUI URL; `address` is its gRPC `host:port`. */
export function startServer(comfyuiUrl: string): Promise<Started> {
  return start(
    serverBin,
    (dir) => [
      "serve",
      "--listen",
      "127.0.0.1:0",
      "--metrics-listen",
      "127.0.0.1:0",
      "--comfyui",
      comfyuiUrl,
      "--data-dir",
      dir,
    ],
    "comfy-reality listening on ",
    "comfy-reality",
  );
}
