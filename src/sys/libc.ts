// libc through koffi. Nothing outside src/sys/ knows koffi.
import { ChError } from "./errors.ts";

type Koffi = typeof import("koffi");

let koffi: Koffi | undefined;
let loading: Promise<void> | undefined;

/** Loads koffi (its native module) once; every program that calls libc awaits this first. */
export function loadLibc(): Promise<void> {
  loading ??= import("koffi").then(
    (m) => {
      const mod = m as unknown as { default?: Koffi } & Koffi;
      koffi = mod.default ?? mod;
    },
    (thrown: unknown) => {
      const e = (globalThis as Record<symbol, unknown>)[Symbol.for("charliecloud.koffi-error")] ?? thrown;
      const err = e as { message?: string; errno?: number };
      throw new ChError(`can't load the native FFI module: ${err.message ?? e}`, { errno: Math.abs(err.errno ?? 0) });
    },
  );
  return loading;
}

function k0(): Koffi {
  if (!koffi) throw new Error("libc used before loadLibc()");
  return koffi;
}

export interface Passwd {
  name: string;
  uid: number;
  gid: number;
  gecos: string;
  dir: string;
  shell: string;
}

export interface Group {
  name: string;
  gid: number;
}

function bind() {
  const koffi = k0();
  const lib = koffi.load("libc.so.6");
  const passwd = koffi.struct("ch_passwd", {
    pw_name: "char *",
    pw_passwd: "char *",
    pw_uid: "uint32_t",
    pw_gid: "uint32_t",
    pw_gecos: "char *",
    pw_dir: "char *",
    pw_shell: "char *",
  });
  const group = koffi.struct("ch_group", {
    gr_name: "char *",
    gr_passwd: "char *",
    gr_gid: "uint32_t",
    gr_mem: "void *",
  });
  const f = {
    strerror: lib.func("const char *strerror(int)"),
    getpwuid: lib.func("ch_passwd *getpwuid(uint32_t)"),
    getgrgid: lib.func("ch_group *getgrgid(uint32_t)"),
    mmap: lib.func("void *mmap(void *, size_t, int, int, int, intptr_t)"),
    mprotect: lib.func("int mprotect(void *, size_t, int)"),
    pipe2: lib.func("int pipe2(_Out_ int32_t *fds, int)"),
    read: lib.func("intptr_t read(int, _Out_ uint8_t *, size_t)"),
    write: lib.func("intptr_t write(int, const uint8_t *, size_t)"),
    close: lib.func("int close(int)"),
    clone: lib.func("int clone(void *fn, void *stack, int flags, void *arg)"),
    waitpid: lib.func("int waitpid(int, _Out_ int *, int)"),
    kill: lib.func("int kill(int, int)"),
    fcntl: lib.func("int fcntl(int, int, int)"),
    fcntlLock: lib.func("int fcntl(int, int, ...)"),
    flock: lib.func("int flock(int, int)"),
    memfd_create: lib.func("int memfd_create(const char *, unsigned int)"),
    execveat: lib.func("int execveat(int, const char *, const char **, const char **, int)"),
    sigprocmask: lib.func("int pthread_sigmask(int, const uint64_t *, _Out_ uint64_t *)"),
    sigaction: lib.func("int sigaction(int, const uint8_t *, void *)"),
    statvfs: lib.func("int statvfs(const char *, _Out_ uint8_t *)"),
    mkfifo: lib.func("int mkfifo(const char *, uint32_t)"),
    lsetxattr: lib.func("int lsetxattr(const char *, const char *, const uint8_t *, size_t, int)"),
    lgetxattr: lib.func("intptr_t lgetxattr(const char *, const char *, _Out_ uint8_t *, size_t)"),
    llistxattr: lib.func("intptr_t llistxattr(const char *, _Out_ uint8_t *, size_t)"),
    socket: lib.func("int socket(int, int, int)"),
    connect: lib.func("int connect(int, const uint8_t *, uint32_t)"),
    send: lib.func("intptr_t send(int, const uint8_t *, size_t, int)"),
  };
  return { koffi, f, passwd, group };
}

let bound: ReturnType<typeof bind> | undefined;
function b(): ReturnType<typeof bind> {
  bound ??= bind();
  return bound;
}

function errno(): number {
  return k0().errno();
}

/** A failed libc call: errno and the call's name. */
export class LibcError extends Error {
  readonly call: string;
  readonly errno: number;
  constructor(call: string, errno: number) {
    super(`${call} failed: errno ${errno}`);
    this.call = call;
    this.errno = errno;
  }
}

function check(call: string, r: number): number {
  if (r < 0) throw new LibcError(call, errno());
  return r;
}

/** A page-aligned anonymous private mapping, copied into a clone(2) child like any memory. */
export interface Mapping {
  readonly address: bigint;
  readonly size: number;
  readonly ptr: unknown;
}

export const PROT_READ = 1;
export const PROT_WRITE = 2;
export const PROT_EXEC = 4;
export const LOCK_SH = 1;
export const LOCK_EX = 2;
export const LOCK_NB = 4;
export const LOCK_UN = 8;

export function libc() {
  const { koffi: k, f, passwd, group } = b();
  return {
    strerror(e: number): string {
      return f.strerror(e) as string;
    },
    getpwuid(uid: number): Passwd | null {
      const ptr = f.getpwuid(uid);
      if (!ptr) return null;
      const p = k.decode(ptr, passwd) as Record<string, string | number | null>;
      return {
        name: String(p.pw_name),
        uid: Number(p.pw_uid),
        gid: Number(p.pw_gid),
        gecos: String(p.pw_gecos ?? ""),
        dir: String(p.pw_dir ?? ""),
        shell: String(p.pw_shell ?? ""),
      };
    },
    getgrgid(gid: number): Group | null {
      const ptr = f.getgrgid(gid);
      if (!ptr) return null;
      const g = k.decode(ptr, group) as Record<string, string | number | null>;
      return { name: String(g.gr_name), gid: Number(g.gr_gid) };
    },
    mmap(size: number): Mapping {
      const ptr = f.mmap(null, size, PROT_READ | PROT_WRITE, 0x22 /* MAP_PRIVATE|MAP_ANONYMOUS */, -1, 0);
      const address = k.address(ptr);
      if (address === 0xffffffffffffffffn) throw new LibcError("mmap", errno());
      return { ptr, address, size };
    },
    /** Copies bytes into the mapping at an offset. */
    poke(m: Mapping, offset: number, bytes: Uint8Array): void {
      new Uint8Array(k.view(m.ptr, m.size)).set(bytes, offset);
    },
    mprotect(m: Mapping, offset: number, size: number, prot: number): void {
      const p = k.as(Number(m.address) + offset, "void *") ?? null;
      check("mprotect", f.mprotect(p, size, prot) as number);
    },
    pipe2(flags: number): [number, number] {
      const fds = [0, 0];
      check("pipe2", f.pipe2(fds, flags) as number);
      return [fds[0], fds[1]];
    },
    read(fd: number, buf: Uint8Array): number {
      for (;;) {
        const r = Number(f.read(fd, buf, buf.length));
        if (r >= 0) return r;
        const e = errno();
        if (e !== 4 /* EINTR */) throw new LibcError("read", e);
      }
    },
    write(fd: number, buf: Uint8Array): number {
      return check("write", Number(f.write(fd, buf, buf.length)));
    },
    close(fd: number): void {
      f.close(fd);
    },
    /** glibc clone(fn, stack, flags, arg) with addresses inside a mapping. */
    clone(fn: bigint, stackTop: bigint, flags: number, arg: bigint): number {
      const ptr = (a: bigint) => k.as(a, "void *");
      return check("clone", f.clone(ptr(fn), ptr(stackTop), flags, ptr(arg)) as number);
    },
    /** waitpid(2); returns the raw status. */
    waitpid(pid: number): number {
      const st = [0];
      for (;;) {
        const r = f.waitpid(pid, st, 0) as number;
        if (r >= 0) return st[0];
        const e = errno();
        if (e !== 4) throw new LibcError("waitpid", e);
      }
    },
    /** Clears close-on-exec on a descriptor. */
    keepOnExec(fd: number): void {
      check("fcntl", f.fcntl(fd, 2 /* F_SETFD */, 0) as number);
    },
    /** Takes an exclusive lock on the whole file open for writing at fd without waiting:
     * fcntl(2) F_OFD_SETLK (a lock of the open file description, released when it is closed or
     * the process ends), or F_SETLK on kernels without OFD locks. Either conflicts with the other
     * and with lockf(3)/Python's fcntl.lockf() on the same file, even over NFS. Returns false if
     * another holds a lock on it. */
    lockExclusive(fd: number): boolean {
      const flock = new Uint8Array(32); // struct flock: type, whence, start, len, pid
      const dv = new DataView(flock.buffer);
      dv.setInt16(0, 1 /* F_WRLCK */, true);
      dv.setInt16(2, 0 /* SEEK_SET */, true);
      for (const cmd of [37 /* F_OFD_SETLK */, 6 /* F_SETLK */]) {
        for (;;) {
          if ((f.fcntlLock(fd, cmd, "uint8_t *", flock) as number) === 0) return true;
          const e = errno();
          if (e === 4 /* EINTR */) continue;
          if (e === 11 /* EAGAIN */ || e === 13 /* EACCES */) return false;
          if (e === 22 /* EINVAL: no OFD locks */ && cmd === 37) break;
          throw new LibcError("fcntl", e);
        }
      }
      throw new LibcError("fcntl", 22);
    },
    /** flock(2); with LOCK_NB, false if another open file description holds a conflicting lock. */
    flock(fd: number, op: number): boolean {
      for (;;) {
        if ((f.flock(fd, op) as number) === 0) return true;
        const e = errno();
        if (e === 11 /* EWOULDBLOCK */ && op & LOCK_NB) return false;
        if (e !== 4 /* EINTR */) throw new LibcError("flock", e);
      }
    },
    /** waitpid(pid, WNOHANG): the raw status if it ended, else null. */
    reaped(pid: number): number | null {
      const st = [0];
      const r = f.waitpid(pid, st, 1) as number;
      return r === pid ? st[0] : null;
    },
    kill(pid: number, sig: number): void {
      f.kill(pid, sig);
    },
    memfdCreate(name: string): number {
      return check("memfd_create", f.memfd_create(name, 1 /* MFD_CLOEXEC */) as number);
    },
    writeAll(fd: number, bytes: Uint8Array): void {
      let off = 0;
      while (off < bytes.length) off += check("write", Number(f.write(fd, bytes.subarray(off), bytes.length - off)));
    },
    memfd(name: string, bytes: Uint8Array): number {
      const fd = this.memfdCreate(name);
      this.writeAll(fd, bytes);
      return fd;
    },
    /** execveat(fd, "", argv, envp, AT_EMPTY_PATH); returns only on failure. */
    execFd(fd: number, argv: string[], envp: string[]): never {
      f.execveat(fd, "", [...argv, null], [...envp, null], 0x1000);
      throw new LibcError("execveat", errno());
    },
    /** pthread_sigmask(how, set); returns the old mask. */
    sigmask(how: number, set: bigint): bigint {
      const old = [0n];
      const r = f.sigprocmask(how, [set], old) as number;
      if (r !== 0) throw new LibcError("pthread_sigmask", r);
      return BigInt(old[0]);
    },
    /** sigaction(2) through glibc (which adds the restorer): `handler` for `sig`, every signal
     * blocked while it runs, SA_RESTART. */
    sigaction(sig: number, handler: bigint): void {
      const act = new Uint8Array(152); // struct sigaction: handler, 128-byte mask, flags, restorer
      const dv = new DataView(act.buffer);
      dv.setBigUint64(0, handler, true);
      act.fill(0xff, 8, 136);
      dv.setInt32(136, 0x10000000, true);
      check("sigaction", f.sigaction(sig, act, null) as number);
    },
    /** statvfs(3) f_flag: ST_RDONLY, ST_NOSUID, ST_NODEV, ST_NOEXEC, atime flags... */
    mountFlags(path: string): number {
      const buf = new Uint8Array(128);
      check("statvfs", f.statvfs(path, buf) as number);
      return Number(new DataView(buf.buffer).getBigUint64(72, true));
    },
    /** mkfifo(3): makes a FIFO at path (mode less the umask). */
    mkfifo(path: string, mode: number): void {
      check("mkfifo", f.mkfifo(path, mode) as number);
    },
    /** lsetxattr(2): sets (creates or replaces) the extended attribute name of path, never
     * following a symlink there. */
    lsetxattr(path: string, name: string, value: Uint8Array): void {
      check("lsetxattr", f.lsetxattr(path, name, value, value.length, 0) as number);
    },
    /** lgetxattr(2): the value of the extended attribute name of path. */
    lgetxattr(path: string, name: string): Buffer {
      for (;;) {
        const size = check("lgetxattr", Number(f.lgetxattr(path, name, null, 0)));
        const buf = Buffer.alloc(size);
        const r = Number(f.lgetxattr(path, name, buf, size));
        if (r >= 0) return buf.subarray(0, r);
        const e = errno();
        if (e !== 34 /* ERANGE: it grew meanwhile */) throw new LibcError("lgetxattr", e);
      }
    },
    /** Sends one message to a syslog socket as syslog(3) does: a datagram, or on a stream socket
     * the message and a NUL. False if there is no one listening there (then nothing is logged,
     * as with syslog(3)). */
    sendLog(path: string, message: string): boolean {
      const AF_UNIX = 1;
      const SOCK_STREAM = 1;
      const SOCK_DGRAM = 2;
      const SOCK_CLOEXEC = 0o2000000;
      const MSG_NOSIGNAL = 0x4000;
      const name = Buffer.from(path);
      if (name.length >= 108) return false;
      const addr = new Uint8Array(2 + name.length + 1);
      new DataView(addr.buffer).setUint16(0, AF_UNIX, true);
      addr.set(name, 2);
      for (const type of [SOCK_DGRAM, SOCK_STREAM]) {
        const fd = f.socket(AF_UNIX, type | SOCK_CLOEXEC, 0) as number;
        if (fd < 0) return false;
        try {
          if ((f.connect(fd, addr, addr.length) as number) !== 0) continue; // EPROTOTYPE: the other type
          const bytes = Buffer.from(type === SOCK_STREAM ? `${message}\0` : message);
          return Number(f.send(fd, bytes, bytes.length, MSG_NOSIGNAL)) === bytes.length;
        } finally {
          f.close(fd);
        }
      }
      return false;
    },
    /** llistxattr(2): the names of the extended attributes of path (of a symlink itself). */
    llistxattr(path: string): string[] {
      for (;;) {
        const size = check("llistxattr", Number(f.llistxattr(path, null, 0)));
        if (size === 0) return [];
        const buf = Buffer.alloc(size);
        const r = Number(f.llistxattr(path, buf, size));
        if (r >= 0) return buf.toString("utf8", 0, r).split("\0").filter(Boolean);
        const e = errno();
        if (e !== 34 /* ERANGE */) throw new LibcError("llistxattr", e);
      }
    },
  };
}

export type Libc = ReturnType<typeof libc>;
