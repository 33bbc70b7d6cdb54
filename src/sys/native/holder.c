/* Join holder: keeps a ch-run --join group's container joinable for late peers, however early
   the first peer's command ends, and removes the group's files in /dev/shm when nobody else
   will. ch-run starts it before it touches /dev/shm, so that no kill -9 of ch-run at any moment
   leaves files behind.

   argv: [1] "join-holder" (for ps); [2] hold time in ms, counted from when the container is
   ready; [3] a descriptor of the directory of the group's files (/dev/shm); [4] read end of a
   pipe of requests from ch-run; [5] write end of a pipe for the answers; [6] [7] the names of
   the group's lock file and shared file.

   The holder detaches (fork, the intermediate exits at once, setsid), closes every other
   descriptor (the command's stdout, an MPI launcher's sockets: no reader waits on it), blocks
   every signal and serves ch-run's requests, each three 64-bit words {request, a, b}:
     QUIT: exit.
     CLAIM (ch-run, under the group's lock, created the shared file: it is the first peer): open
       the two files (inodes a and b) and take a shared flock(2) on the shared file; peers take a
       group whose shared file nobody holds so for a dead one.
     FUSE (a SquashFS image's squashfuse started, PID a, before the container is set up):
       killed if ch-run dies or fails before HOLD, when nothing else would end it (it outlives
       ch-run, for the group's late peers: once the container is set up, it ends with the
       container's mount namespace). Any number of times, between CLAIM and HOLD.
     HOLD (the container is ready; a is the PID of its command): join its user (outer, then
       inner) and mount namespaces, as a peer does, and hold them until the shared file is
       unlinked (the last peer did it: the group is complete), or the hold time passes, or a
       signal comes (scancel's SIGTERM, say); in the last two cases remove the files itself,
       under the lock, if they are still the group's.
   Each answer is two 32-bit words: {0, holder PID}, else {errno, failed step}. End of file or a
   signal instead of a request means ch-run died or failed: before CLAIM, the holder removes the
   group's files if the group is dead (the shared file is not live, or missing: only the lock
   file is there); after it, the files it opened if they are still linked (ch-run died before
   anyone could join). */
#include "syscall.h"

#if defined(__x86_64__)
#define NR_read 0
#define NR_openat 257
#define NR_ioctl 16
#define NR_setns 308
#define NR_clone 56
#define NR_setsid 112
#define NR_chdir 80
#define NR_signalfd4 289
#define NR_ppoll 271
#define NR_clock_gettime 228
#define NR_statx 332
#define NR_flock 73
#define NR_unlinkat 263
#define NR_pidfd_open 434
#define NR_pidfd_send_signal 424
#elif defined(__aarch64__)
#define NR_read 63
#define NR_openat 56
#define NR_ioctl 29
#define NR_setns 268
#define NR_clone 220
#define NR_setsid 157
#define NR_chdir 49
#define NR_signalfd4 74
#define NR_ppoll 73
#define NR_clock_gettime 113
#define NR_statx 291
#define NR_flock 32
#define NR_unlinkat 35
#define NR_pidfd_open 434
#define NR_pidfd_send_signal 424
#endif

#define AT_FDCWD -100
#define AT_EMPTY_PATH 0x1000
#define O_RDWR 2
#define O_NOFOLLOW 0400000
#define O_CLOEXEC 02000000
#define CLONE_NEWUSER 0x10000000
#define CLONE_NEWNS 0x20000
#define NS_GET_PARENT 0xb702
#define SIGCHLD 17
#define POLLIN 1
#define LOCK_SH 1
#define LOCK_EX 2
#define LOCK_NB 4
#define LOCK_UN 8
#define STATX_NLINK 0x4
#define STATX_INO 0x100
#define EINTR 4
#define POLL_MS 50

#define SIGKILL 9

enum { QUIT, CLAIM, HOLD, FUSE };

struct pollfd {
  int fd;
  short events, revents;
};
struct timespec {
  i64 sec, nsec;
};

static i64 sys(i64 n, i64 a, i64 b, i64 c) { return sys6(n, a, b, c, 0, 0, 0); }

__attribute__((noreturn)) static void quit(i64 code) {
  sys(NR_exit_group, code, 0, 0);
  __builtin_unreachable();
}

static i64 number(const char *s) {
  i64 n = 0;
  while (s && *s >= '0' && *s <= '9') n = n * 10 + (*s++ - '0');
  return n;
}

static i64 now_ms(void) {
  struct timespec t;
  sys(NR_clock_gettime, 1 /* CLOCK_MONOTONIC */, (i64)&t, 0);
  return t.sec * 1000 + t.nsec / 1000000;
}

/* The holder's state, for clean_up(); fuse: a pidfd (else -1) of the squashfuse to kill, or
   its PID alone on a kernel without pidfd_open(2) (before 5.3). */
static i64 dir, sig, hold_ms, lock = -1, shm = -1, fuse = -1, fuse_pid = 0;
static const char *lock_name, *shm_name;

/* stx_nlink (a 32-bit word at byte 16 of struct statx) or stx_ino (64-bit, at byte 32) of an
   open file; -1 if unknown. */
static i64 stat_word(i64 fd, int ino) {
  unsigned int stx[64];
  if (sys6(NR_statx, fd, (i64) "", AT_EMPTY_PATH, ino ? STATX_INO : STATX_NLINK, (i64)stx, 0) < 0) return -1;
  return ino ? (i64)((unsigned long)stx[8] | (unsigned long)stx[9] << 32) : stx[4];
}

/* Waits for a signal at most ms; whether one came. */
static int signalled(i64 ms) {
  struct pollfd p;
  struct timespec ts;
  p.fd = (int)sig;
  p.events = POLLIN;
  p.revents = 0;
  ts.sec = ms / 1000;
  ts.nsec = ms % 1000 * 1000000;
  return sys6(NR_ppoll, (i64)&p, 1, (i64)&ts, 0, 8, 0) > 0;
}

/* Takes an exclusive lock, waiting at most the hold time (a stuck peer must not keep the
   holder forever) and no longer than a signal. */
static int lock_ex(i64 fd) {
  for (i64 deadline = now_ms() + hold_ms;;) {
    i64 r = sys(NR_flock, fd, LOCK_EX | LOCK_NB, 0);
    if (r == 0) return 1;
    if (r != -11 /* EWOULDBLOCK */ && r != -EINTR) return 0;
    if (now_ms() > deadline || signalled(5)) return 0;
  }
}

/* Removes the group's files, under the lock, if they are still the group's: before CLAIM, if no
   live group owns them; after it, if both files it opened are still linked (the last peer
   removes both at once; a peer that takes over a dead group removes its shared file and keeps
   the lock file). The holder gives its shared lock up first: a peer that gets the lock before
   it sees a dead group and takes it over, rather than a live one that nobody will publish. */
__attribute__((noreturn)) static void clean_up(void) {
  if (fuse >= 0) sys6(NR_pidfd_send_signal, fuse, SIGKILL, 0, 0, 0, 0);
  else if (fuse_pid > 0) sys(NR_kill, fuse_pid, SIGKILL, 0);
  if (lock < 0) {
    lock = sys6(NR_openat, dir, (i64)lock_name, O_RDWR | O_NOFOLLOW | O_CLOEXEC, 0, 0, 0);
    if (lock < 0 || !lock_ex(lock) || stat_word(lock, 0) <= 0) quit(0);
    shm = sys6(NR_openat, dir, (i64)shm_name, O_RDWR | O_NOFOLLOW | O_CLOEXEC, 0, 0, 0);
    if (shm >= 0 && sys(NR_flock, shm, LOCK_EX | LOCK_NB, 0) != 0) quit(0); /* live */
  } else {
    sys(NR_flock, shm, LOCK_UN, 0);
    if (!lock_ex(lock) || stat_word(lock, 0) <= 0 || stat_word(shm, 0) <= 0) quit(0);
  }
  sys(NR_unlinkat, dir, (i64)shm_name, 0);
  sys(NR_unlinkat, dir, (i64)lock_name, 0);
  quit(0);
}

/* Closes every descriptor but the n in keep (sorted here). */
static void close_others(i64 *keep, int n) {
  for (int i = 1; i < n; i++)
    for (int j = i; j > 0 && keep[j - 1] > keep[j]; j--) {
      i64 t = keep[j];
      keep[j] = keep[j - 1];
      keep[j - 1] = t;
    }
  i64 lo = 0;
  for (int i = 0; i < n; i++) {
    if (keep[i] > lo) sys(NR_close_range, lo, keep[i] - 1, 0);
    lo = keep[i] + 1;
  }
  sys(NR_close_range, lo, ~0U, 0);
}

/* path = "/proc/PID/ns/NS" */
static void ns_path(char *path, i64 pid, const char *ns) {
  char digits[24];
  int n = 0;
  do {
    digits[n++] = (char)('0' + pid % 10);
    pid /= 10;
  } while (pid > 0);
  const char *s = "/proc/";
  while (*s) *path++ = *s++;
  while (n) *path++ = digits[--n];
  s = "/ns/";
  while (*s) *path++ = *s++;
  while (*ns) *path++ = *ns++;
  *path = 0;
}

/* Joins the namespaces of process pid as a peer does; 0, else the failed step (errno in *err). */
static int join(i64 pid, i64 *err) {
  char path[48];
  i64 user, parent, mnt;
  ns_path(path, pid, "user");
  if ((*err = user = sys6(NR_openat, AT_FDCWD, (i64)path, O_CLOEXEC, 0, 0, 0)) < 0) return 1;
  if ((*err = parent = sys(NR_ioctl, user, NS_GET_PARENT, 0)) < 0) return 2;
  if ((*err = sys(NR_setns, parent, CLONE_NEWUSER, 0)) < 0) return 3;
  ns_path(path, pid, "mnt");
  if ((*err = mnt = sys6(NR_openat, AT_FDCWD, (i64)path, O_CLOEXEC, 0, 0, 0)) < 0) return 4;
  if ((*err = sys(NR_setns, mnt, CLONE_NEWNS, 0)) < 0) return 5;
  if ((*err = sys(NR_setns, user, CLONE_NEWUSER, 0)) < 0) return 6;
  sys(NR_close, user, 0, 0);
  sys(NR_close, parent, 0, 0);
  sys(NR_close, mnt, 0, 0);
  return 0;
}

static void answer(i64 fd, i64 err, i64 value) {
  int msg[2];
  msg[0] = (int)-err;
  msg[1] = (int)value;
  sys(NR_write, fd, (i64)msg, 8);
}

/* The next request, or clean_up() at end of file or a signal. */
static void request(i64 ctl, i64 *req) {
  struct pollfd p[2];
  p[0].fd = (int)ctl;
  p[0].events = POLLIN;
  p[1].fd = (int)sig;
  p[1].events = POLLIN;
  for (;;) {
    p[0].revents = p[1].revents = 0;
    i64 r = sys6(NR_ppoll, (i64)p, 2, 0, 0, 8, 0);
    if (r > 0) break;
    if (r != -EINTR) clean_up();
  }
  if (p[1].revents || sys(NR_read, ctl, (i64)req, 24) != 24) clean_up();
}

__attribute__((noreturn, used)) void holder_main(i64 *sp) {
  if (sp[0] < 8) quit(31);
  char **argv = (char **)(sp + 1);
  hold_ms = number(argv[2]);
  dir = number(argv[3]);
  i64 ctl = number(argv[4]), ans = number(argv[5]);
  lock_name = argv[6];
  shm_name = argv[7];

  /* Detach: ch-run reaps the intermediate at once; the holder outlives ch-run. */
  i64 child = sys(NR_clone, SIGCHLD, 0, 0);
  if (child != 0) quit(child > 0 ? 0 : 31);
  sys(NR_setsid, 0, 0, 0);
  unsigned long all = ~0UL;
  sys6(NR_rt_sigprocmask, 0 /* SIG_BLOCK */, (i64)&all, 0, 8, 0, 0);
  sys(NR_chdir, (i64) "/", 0, 0);
  i64 keep[3];
  keep[0] = dir;
  keep[1] = ctl;
  keep[2] = ans;
  close_others(keep, 3);
  sig = sys6(NR_signalfd4, -1, (i64)&all, 8, O_CLOEXEC, 0, 0);

  i64 req[3], err = 0;
  int step = 0;
  request(ctl, req);
  if (req[0] != CLAIM) quit(0);
  lock = sys6(NR_openat, dir, (i64)lock_name, O_RDWR | O_NOFOLLOW | O_CLOEXEC, 0, 0, 0);
  shm = sys6(NR_openat, dir, (i64)shm_name, O_RDWR | O_NOFOLLOW | O_CLOEXEC, 0, 0, 0);
  if ((err = lock) < 0) step = 1;
  else if ((err = shm) < 0) step = 2;
  else if (stat_word(lock, 1) != req[1] || stat_word(shm, 1) != req[2]) err = 0, step = 3;
  else if ((err = sys(NR_flock, shm, LOCK_SH, 0)) < 0) step = 4;
  answer(ans, err < 0 ? err : step ? -116 /* ESTALE */ : 0, step);
  if (step) quit(31); /* ch-run removes the files (it holds the lock) */

  for (request(ctl, req); req[0] == FUSE; request(ctl, req)) {
    if (fuse >= 0) sys(NR_close, fuse, 0, 0);
    fuse_pid = req[1];
    err = fuse = sys(NR_pidfd_open, fuse_pid, 0, 0);
    if (err == -38 /* ENOSYS */) err = 0;
    else if (err < 0) fuse_pid = 0; /* ch-run kills it (or it is gone: its PID may be another's) */
    answer(ans, err < 0 ? err : 0, err < 0 ? 1 : 0);
  }
  if (req[0] != HOLD) quit(0); /* ch-run removed them (a group of one) */
  if (fuse >= 0) sys(NR_close, fuse, 0, 0); /* the container is set up: no longer ours to end */
  fuse = -1;
  fuse_pid = 0;
  step = join(req[1], &err);
  answer(ans, step ? err : 0, step ? step : sys(NR_getpid, 0, 0, 0));
  if (step) quit(31); /* likewise */
  sys(NR_close, ans, 0, 0);
  sys(NR_close, ctl, 0, 0);

  /* Hold. */
  for (i64 deadline = now_ms() + hold_ms;;) {
    if (stat_word(shm, 0) == 0) quit(0);
    i64 left = deadline - now_ms();
    if (left <= 0 || signalled(left < POLL_MS ? left : POLL_MS)) break;
  }
  clean_up();
}

#if defined(__x86_64__)
__asm__(".globl _start\n_start:\n mov %rsp, %rdi\n and $-16, %rsp\n call holder_main\n hlt\n");
#elif defined(__aarch64__)
__asm__(".globl _start\n_start:\n mov x0, sp\n bl holder_main\n");
#endif
