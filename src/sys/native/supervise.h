/* Root emulation's POSIX ACL faking (ch-run --seccomp; src/container/seccomp.ts): the pseudo-op
   OP_SUPERVISE of both interpreters (launcher.c, exec.c), run just before execve(2) in the
   process that becomes the command. Needs syscall.h.

   Classic BPF can't read setxattr(2)'s name (a pointer into the caller's memory), so the filter
   sends the setxattr family to a supervisor (SECCOMP_RET_USER_NOTIF), which reads the name
   with process_vm_readv(2): system.posix_acl_access and system.posix_acl_default get 0 without
   effect (the kernel never sees the call); every other name, or one that can't be read, gets
   SECCOMP_USER_NOTIF_FLAG_CONTINUE, and the kernel then makes the real call, re-reading the
   name itself: a name changed meanwhile by another thread only fools its own process (the
   supervisor never acts for it).

   Arguments: a0 the filter (struct sock_fprog *) with SECCOMP_RET_USER_NOTIF; a1 the same filter
   without it, installed instead when the kernel refuses a listener here (EBUSY: a filter of an
   outer supervisor has one; EINVAL: too old), after which a2/a3 (a warning, its length; 0 for
   none) is written to stderr; a4/a5: the mapping holding this code and its stack, the only
   memory whose pages the supervisor keeps (it is a copy of Node's on ch-run's clone path), or
   0 0 to drop nothing (exec.c: a small static program already).

   The supervisor is forked before the filter exists (a process under it would keep the filter
   in use: the listener reports EPOLLHUP only once no process uses it) and detached (the
   intermediate child exits at once: it is nobody's child in the container, so no wait(2) of
   the command's ever sees it, and ch-run's PID stays the command's). It gets the listener over
   a socketpair (SCM_RIGHTS), closes every other descriptor (no pipe reader waits for it), leaves
   the session (no terminal signal reaches it), keeps only CAP_SYS_PTRACE of the container's user
   namespace (which it needs to read the memory of the container's processes: of those that
   have more capabilities, root's in a build, and of any under Yama's ptrace_scope 1 or 2), and
   exits when the listener reports EPOLLHUP: when the last process
   under the filter is gone (Linux 5.9 or later; ch-run plans the fallback filter on older
   kernels). Its name is "ch-seccomp". */

#define OP_SUPERVISE -2

#if defined(__x86_64__)
#define SV_NR_socketpair 53
#define SV_NR_sendmsg 46
#define SV_NR_recvmsg 47
#define SV_NR_clone 56
#define SV_NR_seccomp 317
#define SV_NR_ioctl 16
#define SV_NR_ppoll 271
#define SV_NR_process_vm_readv 310
#define SV_NR_setsid 112
#define SV_NR_madvise 28
#define SV_NR_prctl 157
#define SV_NR_capset 126
#elif defined(__aarch64__)
#define SV_NR_socketpair 199
#define SV_NR_sendmsg 211
#define SV_NR_recvmsg 212
#define SV_NR_clone 220
#define SV_NR_seccomp 277
#define SV_NR_ioctl 29
#define SV_NR_ppoll 73
#define SV_NR_process_vm_readv 270
#define SV_NR_setsid 157
#define SV_NR_madvise 233
#define SV_NR_prctl 167
#define SV_NR_capset 91
#endif
#define SV_NR_setxattrat 463 /* the same on both */

#define SV_EINTR 4
#define SV_EBUSY 16
#define SV_EINVAL 22
#define SV_SIGCHLD 17
#define SV_MSG_NOSIGNAL 0x4000
#define SV_SCM_RIGHTS 1
#define SV_SOL_SOCKET 1
#define SV_POLLIN 1
#define SV_POLLERR 8
#define SV_POLLHUP 16
#define SV_POLLNVAL 32
#define SV_PR_SET_NAME 15
#define SV_CAP_SYS_PTRACE 19
#define SV_SECCOMP_SET_MODE_FILTER 1
#define SV_SECCOMP_FILTER_FLAG_NEW_LISTENER 8
#define SV_NOTIF_RECV 0xc0502100L     /* _IOWR('!', 0, struct seccomp_notif) */
#define SV_NOTIF_SEND 0xc0182101L     /* _IOWR('!', 1, struct seccomp_notif_resp) */
#define SV_NOTIF_ID_VALID 0x40082102L /* _IOW('!', 2, __u64) */
#define SV_FLAG_CONTINUE 1
#define SV_PAGE 4096L
#define SV_MADV_DONTNEED 4

struct sv_notif { /* struct seccomp_notif: 80 bytes */
  unsigned long id;
  unsigned int pid, flags;
  int nr;
  unsigned int arch;
  unsigned long ip, args[6];
};
struct sv_resp { /* struct seccomp_notif_resp */
  unsigned long id;
  long val;
  int error;
  unsigned int flags;
};
struct sv_iovec {
  void *base;
  unsigned long len;
};
struct sv_msghdr {
  void *name;
  int namelen;
  struct sv_iovec *iov;
  unsigned long iovlen;
  void *control;
  unsigned long controllen;
  int flags;
};
struct sv_cmsg { /* struct cmsghdr and one int */
  unsigned long len;
  int level, type;
  int fd, pad;
};

static inline i64 sv_sys(i64 n, i64 a, i64 b, i64 c) { return sys6(n, a, b, c, 0, 0, 0); }

/* Sends (fd >= 0) or receives (fd < 0: returns it, or -1) one descriptor over a socket. */
static inline i64 sv_pass(i64 sock, i64 fd) {
  char byte = 0;
  struct sv_iovec iov = {&byte, 1};
  struct sv_cmsg c = {sizeof c - sizeof c.pad, SV_SOL_SOCKET, SV_SCM_RIGHTS, (int)fd, 0};
  struct sv_msghdr m = {0, 0, &iov, 1, &c, sizeof c, 0};
  if (fd >= 0) return sv_sys(SV_NR_sendmsg, sock, (i64)&m, SV_MSG_NOSIGNAL);
  c.fd = -1;
  i64 r = sv_sys(SV_NR_recvmsg, sock, (i64)&m, 0);
  if (r <= 0 || c.level != SV_SOL_SOCKET || c.type != SV_SCM_RIGHTS || m.controllen < sizeof c - sizeof c.pad) return -1;
  return c.fd;
}

/* Whether the first `got` bytes read into the words w (zero past them) are one of the two ACL
   names, NUL included. */
static inline int sv_acl_name(const unsigned long *w, i64 got) {
  if (w[0] != 0x702e6d6574737973UL || w[1] != 0x6c63615f7869736fUL) return 0; /* "system.p" "osix_acl" */
  if (w[2] == 0x7373656363615fUL) return got >= 24;                             /* "_access\0" */
  return w[2] == 0x746c75616665645fUL && (w[3] & 255) == 0 && got >= 25;        /* "_default" "\0" */
}

/* Answers one notification. */
static inline void sv_answer(i64 listener) {
  struct sv_notif n;
  volatile unsigned char *z = (volatile unsigned char *)&n;
  for (unsigned long i = 0; i < sizeof n; i++) z[i] = 0; /* the kernel wants it zeroed */
  if (sv_sys(SV_NR_ioctl, listener, SV_NOTIF_RECV, (i64)&n) < 0) return; /* gone meanwhile */
  struct sv_resp r = {n.id, 0, 0, SV_FLAG_CONTINUE};
  unsigned long w[4] = {0, 0, 0, 0};
  unsigned long name = n.nr == SV_NR_setxattrat ? n.args[3] : n.args[1];
  /* 25 bytes: the longer name and its NUL, in two pieces if they cross a page boundary (a read
     stops at the first piece that can't be read). */
  unsigned long first = SV_PAGE - (name & (SV_PAGE - 1));
  if (first > 25) first = 25;
  struct sv_iovec local = {w, 25}, remote[2] = {{(void *)name, first}, {(void *)(name + first), 25 - first}};
  i64 got = sys6(SV_NR_process_vm_readv, n.pid, (i64)&local, 1, (i64)remote, first < 25 ? 2 : 1, 0);
  /* The name is valid only if the notification still is: its process did not die meanwhile
     (and its PID go to another process). */
  if (sv_acl_name(w, got) && sv_sys(SV_NR_ioctl, listener, SV_NOTIF_ID_VALID, (i64)&n.id) == 0)
    r.flags = 0; /* return 0 */
  sv_sys(SV_NR_ioctl, listener, SV_NOTIF_SEND, (i64)&r);
}

__attribute__((noreturn)) static void sv_exit(i64 code) {
  sv_sys(NR_exit_group, code, 0, 0);
  __builtin_unreachable();
}

/* Drops the pages of [from, to), mapping by mapping: madvise(2) stops at the first that can't
   be dropped ([vvar], io_uring's rings: EINVAL), so its first page is found by bisection and
   skipped. The mappings stay: the kernel may still write to some (glibc's rseq(2) area in
   Node's thread control block), so unmapping them would kill the supervisor. */
static inline void sv_drop(unsigned long from, unsigned long to) {
  while (from < to && sv_sys(SV_NR_madvise, from, to - from, SV_MADV_DONTNEED) == -SV_EINVAL) {
    unsigned long ok = from, bad = to; /* madvise(from, ok - from) works, (from, bad - from) not */
    while (bad - ok > SV_PAGE) {
      unsigned long mid = (ok + (bad - ok) / 2) & ~(SV_PAGE - 1);
      if (mid <= ok) mid = ok + SV_PAGE;
      if (sv_sys(SV_NR_madvise, from, mid - from, SV_MADV_DONTNEED) == -SV_EINVAL)
        bad = mid;
      else
        ok = mid;
    }
    from = bad; /* past the first page that can't be dropped */
  }
}

/* The supervisor: the grandchild, on the socket's end `sock`. */
__attribute__((noreturn)) static void sv_main(i64 sock, i64 keep, i64 keep_len) {
  sv_sys(SV_NR_setsid, 0, 0, 0);
  /* Default signal actions, none blocked: no handler of ch-run's (Node's, on the clone path)
     runs here, and a signal sent to it acts. */
  i64 zero[4] = {0, 0, 0, 0};
  for (i64 s = 1; s <= 64; s++)
    if (s != 9 && s != 19) sys6(NR_rt_sigaction, s, (i64)zero, 0, 8, 0, 0);
  sys6(NR_rt_sigprocmask, 2 /* SIG_SETMASK */, (i64)zero, 0, 8, 0, 0);
  if (sock > 0) sv_sys(NR_close_range, 0, sock - 1, 0);
  sv_sys(NR_close_range, sock + 1, ~0U, 0);
  unsigned long comm[2] = {0x6f636365732d6863UL, 0x706dUL}; /* "ch-seccomp" */
  sv_sys(SV_NR_prctl, SV_PR_SET_NAME, (i64)comm, 0);
  if (keep_len) {
    sv_drop(0, keep);
    sv_drop(keep + keep_len, 1L << 60);
  }
  i64 listener = sv_pass(sock, -1);
  sv_sys(NR_close, sock, 0, 0);
  if (listener < 0) sv_exit(0); /* the filter was not installed */
  /* Only CAP_SYS_PTRACE, to read the callers' memory. */
  unsigned long hdr = 0x20080522; /* {_LINUX_CAPABILITY_VERSION_3, pid 0} */
  /* Two struct __user_cap_data_struct {effective, permitted, inheritable}, as 32-bit words. */
  unsigned long data[3];
  data[0] = (1UL << SV_CAP_SYS_PTRACE) | (1UL << SV_CAP_SYS_PTRACE) << 32;
  data[1] = data[2] = 0;
  sv_sys(SV_NR_capset, (i64)&hdr, (i64)data, 0);
  for (;;) {
    struct {
      int fd;
      short events, revents;
    } p = {(int)listener, SV_POLLIN, 0};
    i64 r = sys6(SV_NR_ppoll, (i64)&p, 1, 0, 0, 8, 0);
    if (r == -SV_EINTR) continue;
    if (r < 0) sv_exit(1);
    if (p.revents & SV_POLLIN)
      sv_answer(listener);
    else if (p.revents & (SV_POLLHUP | SV_POLLERR | SV_POLLNVAL))
      sv_exit(0);
  }
}

/* OP_SUPERVISE: 0, or -errno. */
static inline i64 supervise(const i64 *a) {
  int sv[2];
  i64 r = sys6(SV_NR_socketpair, 1 /* AF_UNIX */, 5 /* SOCK_SEQPACKET */ | 02000000 /* SOCK_CLOEXEC */, 0, (i64)sv, 0, 0);
  if (r < 0) return r;
  i64 pid = sys6(SV_NR_clone, SV_SIGCHLD, 0, 0, 0, 0, 0);
  if (pid == 0) {
    i64 pid2 = sys6(SV_NR_clone, SV_SIGCHLD, 0, 0, 0, 0, 0);
    if (pid2 != 0) sv_exit(pid2 < 0 ? -pid2 : 0); /* the intermediate: the errno of its fork */
    sv_sys(NR_close, sv[0], 0, 0);
    sv_main(sv[1], a[4], a[5]);
  }
  sv_sys(NR_close, sv[1], 0, 0);
  if (pid < 0) {
    sv_sys(NR_close, sv[0], 0, 0);
    return pid;
  }
  int st = 0;
  do r = sys6(NR_wait4, pid, (i64)&st, 0, 0, 0, 0);
  while (r == -SV_EINTR);
  if (r == pid && st) {
    sv_sys(NR_close, sv[0], 0, 0);
    return (st & 0x7f) ? -10 /* ECHILD */ : -((st >> 8) & 255);
  }
  i64 listener = sv_sys(SV_NR_seccomp, SV_SECCOMP_SET_MODE_FILTER, SV_SECCOMP_FILTER_FLAG_NEW_LISTENER, a[0]);
  if (listener < 0) {
    sv_sys(NR_close, sv[0], 0, 0); /* the supervisor exits */
    if (listener != -SV_EBUSY && listener != -SV_EINVAL) return listener;
    r = sv_sys(SV_NR_seccomp, SV_SECCOMP_SET_MODE_FILTER, 0, a[1]);
    if (r < 0) return r;
    if (a[3]) sv_sys(NR_write, 2, a[2], a[3]);
    return 0;
  }
  r = sv_pass(sv[0], listener);
  sv_sys(NR_close, listener, 0, 0);
  sv_sys(NR_close, sv[0], 0, 0);
  return r < 0 ? r : 0;
}
