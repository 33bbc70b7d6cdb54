// ch-image: manage images in storage and registries: pull, push, import, list, delete, reset,
// gestalt.
import { openSync, statSync } from "node:fs";
import { userInfo } from "node:os";
import { buildCacheCommand, recordDeleted, undeletable, undelete } from "../builder/cache-commands.ts";
import { BUILD_SPECS, build, buildOptions, isBuildOption } from "../builder/cli.ts";
import { helpOrVersion, type OptSpec, type ParsedOpt, parseArgs } from "../cli/getopt.ts";
import { debug, info, setVerbosity, trace, verbose } from "../cli/log.ts";
import { copyImage } from "../image/convert.ts";
import { imageName, Storage, storageDir } from "../image/storage.ts";
import { unpackImage } from "../image/unpack.ts";
import { authFromEnv, listLong, listOne, pull, push } from "../registry/commands.ts";
import { ChError, errorOut, formatError, setDebugStacks, setLogFd, sysError, warn } from "../sys/errors.ts";
import { loadLibc } from "../sys/libc.ts";

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
  { name: "debug", arg: "none", help: "add a stack trace to fatal errors (also $CH_IMAGE_DEBUG)" },
  { name: "fail", arg: "none", help: "gestalt logging: also fail" },
  { name: "gc", arg: "none", help: "build-cache: remove the states no image needs" },
  { name: "image", arg: "required", argName: "DIR", help: "push: the image directory DIR instead of one in storage" },
  { name: "last-layer", arg: "required", argName: "N", help: "pull: unpack only the lowest N layers (for debugging)" },
  { name: "long", short: "l", arg: "none", help: "list: also architecture and time of last change" },
  { name: "no-xattrs", arg: "none", help: "don't keep extended attributes (overrides --xattrs, $CH_XATTRS)" },
  { name: "storage", short: "s", arg: "required", argName: "DIR", help: "set storage directory to DIR" },
  { name: "tls-no-verify", arg: "none", help: "don't verify registry TLS certificates (risky)" },
  { name: "quiet", short: "q", arg: "none", help: "be quieter (can be repeated)" },
  { name: "reset", arg: "none", help: "build-cache: empty the build cache" },
  { name: "tree", arg: "none", help: "build-cache: show the states, and which images hold which" },
  { name: "undeletable", short: "u", arg: "none", help: "list: images the build cache can undelete" },
  { name: "undeleteable", arg: "none", help: "same as --undeletable" },
  { name: "verbose", short: "v", arg: "none", help: "print extra chatter (can be repeated)" },
  {
    name: "xattrs",
    arg: "none",
    help: "import, pull, push: keep extended attributes (user.* when unprivileged; also $CH_XATTRS)",
  },
  ...BUILD_SPECS,
  { name: "help", short: "h", arg: "none", help: "give this help list" },
  { name: "version", short: "V", arg: "none", help: "print version and exit" },
];

const SUBCOMMANDS = `Subcommands:
  build [-t TAG] [-f DOCKERFILE] [--build-arg KEY[=VALUE]] [--parse-only] CONTEXT
                                build image TAG from a Dockerfile (--parse-only: print its
                                instructions as JSON lines), each instruction's result kept in
                                the build cache (--no-cache: not used; --rebuild: run them
                                all again); RUN with root emulation (--force=seccomp) unless
                                --force=none
  build-cache [--reset] [--gc] [--tree]
                                the build cache's states, layers and size (--reset: empty it;
                                --gc: remove what no image needs; --tree: show the states)
  pull [-a ARCH] [--last-layer N] REF [DEST]
                                pull image REF from its registry into storage (as REF, or DEST;
                                DEST starting with / ./ ../ is a directory to unpack into)
  push [--image DIR] NAME [REF] push image NAME (or directory DIR) to REF (default NAME)
  import PATH NAME              copy image tarball or directory PATH into storage as NAME
  list [-l] [-u]                print the names of the images in storage (-u: of those
                                deleted that the build cache, or Charliecloud's, can undelete)
  list REF                      details of REF: in storage? architectures in its registry
  delete GLOB [GLOB...]         delete images from storage: names, or globs over the names
                                ('foo*'; quote them), with their build stages NAME_stageN
  undelete IMAGE                restore the last deleted image IMAGE from the build cache
  reset                         delete the storage directory: all images and caches in it
  gestalt [bucache|bucache-dot|storage-path|python-path|logging [--fail]]
                                what this ch-image supports, as Charliecloud's answers

References: [HOST[:PORT]/][PATH/]NAME[:TAG][@sha256:DIGEST]; default registry Docker Hub
(registry-1.docker.io, "library/" added to one-component names), tag "latest". In storage an
image is named with tag "latest" added and Docker Hub's defaults left out: busybox,
busybox:latest and docker.io/library/busybox are all busybox:latest (img/busybox+latest); an
image Charliecloud stored as written (img/busybox) is found by any spelling too.
The storage directory is Charliecloud's (version 7): one serves both. It must be yours and
writable by no one else; it is made when first needed. Registries are reached over HTTPS,
trusting Node's roots, the system's (SSL_CERT_FILE, SSL_CERT_DIR) and NODE_EXTRA_CA_CERTS;
plain HTTP is used for a registry on localhost/127.0.0.0/8 that doesn't speak TLS, and with
--tls-no-verify for any. Credentials go only to the registry's own origin and its token server,
never in clear off loopback unless --tls-no-verify.

Environment:
  CH_IMAGE_CACHE                build cache: enabled, disabled or rebuild (like --cache,
                                --no-cache, --rebuild)
  CH_IMAGE_STORAGE              storage directory (else /var/tmp/$USER.ch; -s overrides)
  CH_IMAGE_USERNAME, CH_IMAGE_PASSWORD
                                registry credentials (else asked for on a terminal when needed
                                with --auth or push); never printed or stored
  CH_IMAGE_AUTH=yes             same as --auth
  CH_IMAGE_DEBUG                same as --debug
  CH_LOG_FILE                   append chatter (info, warnings, errors) to this file instead of
                                stderr (errors go to stderr too); implies -v
  CH_XATTRS                     same as --xattrs (--no-xattrs overrides)
  CH_REGY_DEFAULT_HOST, CH_REGY_DEFAULT_PORT, CH_REGY_PATH_PREFIX
                                registry (and port, default 443; and path components put first)
                                of references without a host, instead of Docker Hub
  CH_IMAGE_RETRY_DELAY_MS       first delay between retries (1000; then doubled, 4 tries)
  CH_IMAGE_TIMEOUT_S            seconds without data before a connection is given up (60)
  https_proxy, http_proxy, all_proxy, no_proxy (or uppercase)
                                HTTP proxy http://[USER:PASSWORD@]HOST[:PORT] and the hosts
                                reached without it, as curl reads them (loopback included)`;

function want(args: string[], n: number, usage: string): void {
  if (args.length !== n) throw new ChError(`usage: ch-image ${usage}`);
}

async function importImage(storage: Storage, path: string, text: string, xattrs: boolean): Promise<void> {
  imageName(text);
  let dir: boolean;
  try {
    dir = statSync(path).isDirectory();
  } catch {
    throw new ChError(`can't import, no such file or directory: ${path}`, { errno: 2 });
  }
  storage.init();
  info(`importing: ${path}`);
  const target = storage.imagePath(text);
  if (dir) await copyImage(path, target, { xattrs });
  else await unpackImage(path, target, { xattrs });
  info(`imported: ${imageName(text)}`);
}

/** gestalt SELECTOR: what this build supports, answering as Charliecloud's ch-image does. */
function gestalt(storage: Storage, args: string[], fail: boolean): number {
  if (args.length === 0) return 0; // as Charliecloud: no selector, no answer, success
  if (args.length > 1) throw new ChError("usage: ch-image gestalt [SELECTOR]");
  switch (args[0]) {
    case "bucache":
      // As Charliecloud's: success when builds have a cache (ours: overlay layers, not Git).
      return 0;
    case "bucache-dot":
      throw new ChError("no DOT output of the build cache: this one is not Git's (see ch-image build-cache --tree)");
    case "storage-path":
      process.stdout.write(`${storage.root}\n`);
      return 0;
    case "python-path":
      throw new ChError("no Python interpreter: this ch-image is not written in Python");
    case "logging":
      trace("trace");
      debug("debug");
      verbose("verbose");
      info("info");
      warn("warning");
      errorOut(`${formatError("error", 0, null)}\n`);
      if (fail) throw new ChError("the program failed inexplicably");
      return 0;
    default:
      throw new ChError(`unknown gestalt selector: ${args[0]} (bucache, bucache-dot, storage-path, python-path, logging)`);
  }
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
  undeletable: boolean;
  lastLayer: number | null;
  fail: boolean;
  cache: { reset: boolean; gc: boolean; tree: boolean };
}

async function run(storage: Storage, sub: string, args: string[], f: Flags): Promise<number> {
  const client = { tlsVerify: f.tlsVerify, auth: f.auth };
  switch (sub) {
    case "build":
      return await build(args, buildOptions(f.build, process.env), process.env, storage, client);
    case "pull":
      if (args.length < 1 || args.length > 2) throw new ChError("usage: ch-image pull [-a ARCH] [--last-layer N] REF [DEST]");
      await pull(storage, args[0], args[1] ?? null, {
        ...client,
        arch: f.arch,
        alwaysDownload: f.alwaysDownload,
        lastLayer: f.lastLayer,
        xattrs: f.xattrs,
      });
      return 0;
    case "push":
      if (args.length < 1 || args.length > 2) throw new ChError("usage: ch-image push [--image DIR] NAME [REF]");
      await push(storage, args[0], args[1] ?? null, f.image, { ...client, xattrs: f.xattrs });
      return 0;
    case "list":
      if (args.length > 1) throw new ChError("usage: ch-image list [-l] [-u] [REF]");
      if (args.length === 1) {
        process.stdout.write(await listOne(storage, args[0], client));
        return 0;
      }
      if (f.undeletable)
        for (const name of [...new Set([...storage.undeletable(), ...undeletable(storage)])].sort())
          process.stdout.write(`${name}\n`);
      else if (f.long) process.stdout.write(listLong(storage));
      else for (const name of storage.list()) process.stdout.write(`${name}\n`);
      return 0;
    case "import":
      want(args, 2, "import PATH NAME");
      await importImage(storage, args[0], args[1], f.xattrs);
      return 0;
    case "delete":
      if (args.length < 1) throw new ChError("usage: ch-image delete GLOB [GLOB...]");
      {
        const before = storage.list();
        try {
          storage.deleteGlobs(args);
        } finally {
          recordDeleted(storage, before);
        }
      }
      return 0;
    case "undelete":
      want(args, 1, "undelete IMAGE");
      await undelete(storage, args[0]);
      return 0;
    case "build-cache":
      want(args, 0, "build-cache [--reset] [--gc] [--tree]");
      buildCacheCommand(storage, f.cache);
      return 0;
    case "reset":
      want(args, 0, "reset");
      storage.reset();
      return 0;
    case "gestalt":
      return gestalt(storage, args, f.fail);
    default:
      throw new ChError(`unknown subcommand: ${sub} (see --help)`);
  }
}

export async function main(argv: string[]): Promise<number> {
  const p = parseArgs(argv, SPECS);
  let storageOpt: string | null = null;
  let verbosityOpt = 0;
  let xattrs: boolean | null = null;
  let debugOpt = false;
  const f: Flags = {
    xattrs: false,
    arch: "host",
    auth: authFromEnv(process.env),
    tlsVerify: true,
    alwaysDownload: false,
    image: null,
    long: false,
    build: [],
    undeletable: false,
    lastLayer: null,
    fail: false,
    cache: { reset: false, gc: false, tree: false },
  };
  const hv = helpOrVersion(p, {
    name: "ch-image",
    usage: "[OPTION...] SUBCOMMAND [ARG...]",
    summary: "Manage Charliecloud images: build, pull and push them, keep them in storage.",
    specs: SPECS,
    trailer: SUBCOMMANDS,
  });
  if (hv !== null) return hv;
  let noXattrs = false;
  for (const { name, value } of p.opts) {
    if (name === "help" || name === "version") continue;
    if (name === "storage") storageOpt = value;
    else if (name === "xattrs") xattrs = true;
    else if (name === "no-xattrs") noXattrs = true;
    else if (name === "arch") f.arch = value ?? "host";
    else if (name === "auth") f.auth = true;
    else if (name === "tls-no-verify") f.tlsVerify = false;
    else if (name === "always-download") f.alwaysDownload = true;
    else if (name === "image") f.image = value;
    else if (name === "long") f.long = true;
    else if (isBuildOption(name)) f.build.push({ name, value });
    else if (name === "undeletable" || name === "undeleteable") f.undeletable = true;
    else if (name === "debug") debugOpt = true;
    else if (name === "fail") f.fail = true;
    else if (name === "reset" || name === "gc" || name === "tree") f.cache[name] = true;
    else if (name === "last-layer") {
      if (!/^\d+$/.test(value ?? "")) throw new ChError(`--last-layer: not a number of layers: ${value}`);
      f.lastLayer = Number(value);
    } else verbosityOpt += name === "quiet" ? -1 : 1;
  }
  // $CH_XATTRS, when set at all, is --xattrs; --no-xattrs overrides both.
  f.xattrs = !noXattrs && (xattrs ?? process.env.CH_XATTRS !== undefined);
  setDebugStacks(debugOpt || process.env.CH_IMAGE_DEBUG !== undefined);
  const logFile = process.env.CH_LOG_FILE;
  if (logFile !== undefined && logFile !== "") {
    try {
      setLogFd(openSync(logFile, "a", 0o644));
    } catch (e) {
      throw sysError(`can't open log file ($CH_LOG_FILE): ${logFile}`, e);
    }
    if (verbosityOpt === 0) verbosityOpt = 1;
  }
  setVerbosity(verbosityOpt);
  const [sub, ...args] = p.positionals;
  if (!sub) throw new ChError("no subcommand given (see --help)");
  // The storage lock is fcntl(2)'s.
  await loadLibc();
  const storage = new Storage(storageDir(storageOpt, process.env, process.env.USER || userInfo().username), { upgrade: true });
  try {
    return await run(storage, sub, args, f);
  } finally {
    storage.unlock();
  }
}
