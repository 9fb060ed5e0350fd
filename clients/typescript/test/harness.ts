// Starts the real comfy-reality server and the fake ComfyUI on free ports for the tests, each
// with its own temporary directory, and reads the addresses they print (no sleeping).
import { execFileSync, spawn, type ChildProcess } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
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

/** A server with access control: its address (`localhost:PORT`), the PEM files a client needs. */
export interface Secured extends Started {
  /** The CA that signed the server's and alice's certificates. */
  ca: Buffer;
  /** Alice's client certificate (CN alice.internal) and key. */
  aliceCert: Buffer;
  aliceKey: Buffer;
  /** API keys of alice (tenant studio-a) and bob (tenant studio-b). */
  keys: { alice: string; bob: string };
}

function openssl(dir: string, ...args: string[]): void {
  execFileSync("openssl", args, { cwd: dir, stdio: "ignore" });
}

/**
 * `comfy-reality serve` with `auth.mode = "api_key_or_mtls"` and TLS from a CA made here with
 * the openssl command; principals alice (key or certificate) and bob (key), in two tenants.
 */
export async function startSecuredServer(comfyuiUrl: string): Promise<Secured> {
  const certs = await mkdtemp(join(tmpdir(), "secured-"));
  const ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
  openssl(certs, "req", "-x509", ...ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=test ca");
  await writeFile(join(certs, "server.ext"), "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n");
  await writeFile(join(certs, "client.ext"), "extendedKeyUsage=clientAuth\n");
  for (const [name, cn, ext] of [
    ["server", "localhost", "server.ext"],
    ["alice", "alice.internal", "client.ext"],
  ] as const) {
    openssl(certs, "req", ...ec, "-keyout", `${name}.key`, "-out", `${name}.csr`, "-subj", `/CN=${cn}`);
    openssl(certs, "x509", "-req", "-in", `${name}.csr`, "-CA", "ca.pem", "-CAkey", "ca.key",
      "-CAcreateserial", "-out", `${name}.pem`, "-days", "2", "-extfile", ext);
  }
  const keys = { alice: randomBytes(32).toString("base64url"), bob: randomBytes(32).toString("base64url") };
  const sha = (key: string): string => createHash("sha256").update(key, "utf8").digest("hex");
  const config = join(certs, "config.toml");
  await writeFile(
    config,
    `[runtime]
enable_metrics = false
[scheduling]
probe_interval_seconds = 0.1
[[servers]]
url = "${comfyuiUrl}"
[auth]
mode = "api_key_or_mtls"
[[auth.principals]]
name = "alice"
tenant = "studio-a"
role = "submitter"
api_key_sha256 = ["${sha(keys.alice)}"]
cert_names = ["alice.internal"]
[[auth.principals]]
name = "bob"
tenant = "studio-b"
role = "submitter"
api_key_sha256 = ["${sha(keys.bob)}"]
[tls]
cert_file = "server.pem"
key_file = "server.key"
client_ca_file = "ca.pem"
`,
  );
  const started = await start(
    serverBin,
    (dir) => ["--config", config, "serve", "--listen", "127.0.0.1:0", "--data-dir", dir],
    "comfy-reality listening on ",
    "comfy-reality-secured",
  );
  const port = started.address.slice(started.address.lastIndexOf(":") + 1);
  return {
    ...started,
    address: `localhost:${port}`,
    ca: await readFile(join(certs, "ca.pem")),
    aliceCert: await readFile(join(certs, "alice.pem")),
    aliceKey: await readFile(join(certs, "alice.key")),
    keys,
    stop: async () => {
      await started.stop();
      await rm(certs, { recursive: true, force: true });
    },
  };
}
