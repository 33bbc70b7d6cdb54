// ch-image: manage images in storage and registries: pull, push, import, list, delete, reset.
import { statSync } from "node:fs";
import { userInfo } from "node:os";
import { BUILD_SPECS, build, buildOptions, isBuildOption } from "../builder/cli.ts";
import { helpOrVersion, type OptSpec, type ParsedOpt, parseArgs } from "../cli/getopt.ts";
import { info, setVerbosity } from "../cli/log.ts";
import { copyImage } from "../image/convert.ts";
import { imageName, imagePath, Storage, storageDir } from "../image/storage.ts";
import { unpackImage } from "../image/unpack.ts";
import { authFromEnv, listLong, listOne, pull, push } from "../registry/commands.ts";
import { ChError } from "../sys/errors.ts";

const SPECS: OptSpec[] = [
  {
    name: "arch",
    short: "a",
    arg: "required",
    argName: "ARCH",
    help: "pull: architecture: host (default), yolo, or e.g. arm64/v8",
  },
  { name: "always-download", arg: "none", help: "pull: download even what is in the download cache" },
  { name: "auth", arg: "none", help: "authenticate to the registry (default: anonymous; push always)" },
  { name: "image", arg: "required", argName: "DIR", help: "push: the image directory DIR instead of one in storage" },
  { name: "long", short: "l", arg: "none", help: "list: also architecture and time of last change" },
  { name: "storage", short: "s", arg: "required", argName: "DIR", help: "set storage directory to DIR" },
  { name: "tls-no-verify", arg: "none", help: "don't verify registry TLS certificates (risky)" },
  { name: "quiet", short: "q", arg: "none", help: "be quieter (can be repeated)" },
  { name: "verbose", short: "v", arg: "none", help: "print extra chatter (can be repeated)" },
  { name: "xattrs", arg: "none", help: "import: keep extended attributes (user.* when unprivileged)" },
  ...BUILD_SPECS,
  { name: "help", short: "h", arg: "none", help: "give this help list" },
  { name: "version", short: "V", arg: "none", help: "print version and exit" },
];

const SUBCOMMANDS = `Subcommands:
  build [-t TAG] [-f DOCKERFILE] [--build-arg KEY[=VALUE]] [--parse-only] CONTEXT
                                build image TAG from a Dockerfile (--parse-only: print its
                                instructions as JSON lines); no build cache yet: every build
                                runs every instruction; RUN without root emulation (as
                                --force=none)
  pull [-a ARCH] REF [DEST]     pull image REF from its registry into storage (as REF, or DEST;
                                DEST starting with / ./ ../ is a directory to unpack into)
  push [--image DIR] NAME [REF] push image NAME (or directory DIR) to REF (default NAME)
  import PATH NAME              copy image tarball or directory PATH into storage as NAME
  list [-l]                     print the names of the images in storage
  list REF                      details of REF: in storage? architectures in its registry
  delete NAME                   delete image NAME from storage
  reset                         delete everything in storage

References: [HOST[:PORT]/][PATH/]NAME[:TAG][@sha256:DIGEST]; default registry Docker Hub
(registry-1.docker.io, "library/" added to one-component names), tag "latest". In storage an
image is named with tag "latest" added and Docker Hub's defaults left out: busybox,
busybox:latest and docker.io/library/busybox are all busybox:latest (img/busybox+latest).
The storage directory must be yours and writable by no one else; it is made when first needed. Registries are reached over HTTPS, trusting Node's
roots, the system's (SSL_CERT_FILE, SSL_CERT_DIR) and NODE_EXTRA_CA_CERTS; plain HTTP is used
for a registry on localhost/127.0.0.0/8 that doesn't speak TLS, and with --tls-no-verify for any.
Credentials go only to the registry's own origin and its token server, never in clear off
loopback unless --tls-no-verify.

Environment:
  CH_IMAGE_CACHE                build cache: enabled, disabled or rebuild (like --cache,
                                --no-cache, --rebuild; no build cache in this version yet)
  CH_IMAGE_STORAGE              storage directory (else /var/tmp/$USER.ch; -s overrides)
  CH_IMAGE_USERNAME, CH_IMAGE_PASSWORD
                                registry credentials (else asked for on a terminal when needed
                                with --auth or push); never printed or stored
  CH_IMAGE_AUTH=yes             same as --auth
  CH_IMAGE_RETRY_DELAY_MS       first delay between retries (1000; then doubled, 4 tries)
  CH_IMAGE_TIMEOUT_S            seconds without data before a connection is given up (60)`;

function want(args: string[], n: number, usage: string): void {
  if (args.length !== n) throw new ChError(`usage: ch-image ${usage}`);
}

async function importImage(storage: Storage, path: string, text: string, xattrs: boolean): Promise<void> {
  const name = imageName(text);
  let dir: boolean;
  try {
    dir = statSync(path).isDirectory();
  } catch {
    throw new ChError(`can't import, no such file or directory: ${path}`, { errno: 2 });
  }
  storage.init();
  storage.lock();
  info(`importing: ${path}`);
  const target = imagePath(storage.root, name);
  if (dir) await copyImage(path, target, { xattrs });
  else await unpackImage(path, target, { xattrs });
  info(`imported: ${name}`);
}

interface Flags {
  xattrs: boolean;
  arch: string;
  auth: boolean;
  tlsVerify: boolean;
  alwaysDownload: boolean;
  image: string | null;
  long: boolean;
  build: ParsedOpt[];
}

async function run(storage: Storage, sub: string, args: string[], f: Flags): Promise<number> {
  const client = { tlsVerify: f.tlsVerify, auth: f.auth };
  switch (sub) {
    case "build":
      return await build(args, buildOptions(f.build, process.env), process.env, storage, client);
    case "pull":
      if (args.length < 1 || args.length > 2) throw new ChError("usage: ch-image pull [-a ARCH] REF [DEST]");
      await pull(storage, args[0], args[1] ?? null, { ...client, arch: f.arch, alwaysDownload: f.alwaysDownload });
      return 0;
    case "push":
      if (args.length < 1 || args.length > 2) throw new ChError("usage: ch-image push [--image DIR] NAME [REF]");
      await push(storage, args[0], args[1] ?? null, f.image, client);
      return 0;
    case "list":
      if (args.length > 1) throw new ChError("usage: ch-image list [-l] [REF]");
      if (args.length === 1) {
        process.stdout.write(await listOne(storage, args[0], client));
        return 0;
      }
      if (f.long) process.stdout.write(listLong(storage));
      else for (const name of storage.list()) process.stdout.write(`${name}\n`);
      return 0;
    case "import":
      want(args, 2, "import PATH NAME");
      await importImage(storage, args[0], args[1], f.xattrs);
      return 0;
    case "delete":
      want(args, 1, "delete NAME");
      imageName(args[0]);
      storage.delete(args[0]);
      info(`deleted image: ${args[0]}`);
      return 0;
    case "reset":
      want(args, 0, "reset");
      storage.reset();
      return 0;
    default:
      throw new ChError(`unknown subcommand: ${sub} (see --help)`);
  }
}

export async function main(argv: string[]): Promise<number> {
  const p = parseArgs(argv, SPECS);
  let storageOpt: string | null = null;
  let verbosity = 0;
  const f: Flags = {
    xattrs: false,
    arch: "host",
    auth: authFromEnv(process.env),
    tlsVerify: true,
    alwaysDownload: false,
    image: null,
    long: false,
    build: [],
  };
  const hv = helpOrVersion(p, {
    name: "ch-image",
    usage: "[OPTION...] SUBCOMMAND [ARG...]",
    summary: "Manage Charliecloud images: build, pull and push them, keep them in storage.",
    specs: SPECS,
    trailer: SUBCOMMANDS,
  });
  if (hv !== null) return hv;
  for (const { name, value } of p.opts) {
    if (name === "help" || name === "version") continue;
    if (name === "storage") storageOpt = value;
    else if (name === "xattrs") f.xattrs = true;
    else if (name === "arch") f.arch = value ?? "host";
    else if (name === "auth") f.auth = true;
    else if (name === "tls-no-verify") f.tlsVerify = false;
    else if (name === "always-download") f.alwaysDownload = true;
    else if (name === "image") f.image = value;
    else if (name === "long") f.long = true;
    else if (isBuildOption(name)) f.build.push({ name, value });
    else verbosity += name === "quiet" ? -1 : 1;
  }
  setVerbosity(verbosity);
  const [sub, ...args] = p.positionals;
  if (!sub) throw new ChError("no subcommand given (see --help)");
  const storage = new Storage(storageDir(storageOpt, process.env, process.env.USER || userInfo().username));
  try {
    return await run(storage, sub, args, f);
  } finally {
    storage.unlock();
  }
}
