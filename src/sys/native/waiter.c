/* Waiter: ch-run replaces itself with this tiny static program once the container's command is
   running, so that no Node heap stays resident per container. argv[1] is the child's PID.

   It blocks every signal and waits for them synchronously. A signal sent to ch-run by a process
   is forwarded to the child; one the kernel sent to the whole foreground process group (terminal
   keys, SIGWINCH) reached the child already and is not sent twice. When the child stops, the
   waiter stops too, so the shell's job control sees the job as stopped; when it ends, the waiter
   exits with its status, or 128+N if signal N killed it.

   argv[2] is the write end of the child's gate: the child execs the command only once the waiter
   has blocked every signal and written one byte there, so that no signal meant for the command
   can reach ch-run's Node process. */
#include "syscall.h"

#define SIGCHLD 17
#define SIGSTOP 19
#define SI_KERNEL 0x80
#define WNOHANG 1
#define WUNTRACED 2

struct siginfo {
  int signo, errno_, code, pad;
  char rest[112];
};

__attribute__((noreturn, used)) void waiter_main(i64 *sp) {
  i64 child = 0, gate = 0, self = sys6(NR_getpid, 0, 0, 0, 0, 0, 0);
  char *arg = sp[0] > 1 ? (char *)sp[2] : 0;
  while (arg && *arg >= '0' && *arg <= '9') child = child * 10 + (*arg++ - '0');
  arg = sp[0] > 2 ? (char *)sp[3] : 0;
  while (arg && *arg >= '0' && *arg <= '9') gate = gate * 10 + (*arg++ - '0');
  unsigned long all = ~0UL;
  sys6(NR_rt_sigprocmask, 0 /* SIG_BLOCK */, (i64)&all, 0, 8, 0, 0);
  char go = 'g';
  if (gate > 0) sys6(NR_write, gate, (i64)&go, 1, 0, 0, 0);
  sys6(NR_close_range, 0, ~0U, 0, 0, 0, 0);
  if (child <= 0) sys6(NR_exit_group, 31, 0, 0, 0, 0, 0);
  for (;;) {
    /* Reap first: the child may have ended before this program started, and its SIGCHLD was
       then delivered to ch-run's earlier self. */
    int st = 0;
    i64 r;
    while ((r = sys6(NR_wait4, child, (i64)&st, WNOHANG | WUNTRACED, 0, 0, 0)) > 0) {
      if ((st & 0xff) == 0x7f) { /* stopped: stop too, so the shell sees the job stopped */
        sys6(NR_kill, self, SIGSTOP, 0, 0, 0, 0);
      } else if (st & 0x7f) {
        sys6(NR_exit_group, 128 + (st & 0x7f), 0, 0, 0, 0, 0);
      } else {
        sys6(NR_exit_group, (st >> 8) & 0xff, 0, 0, 0, 0, 0);
      }
    }
    if (r < 0 && r != -4 /* EINTR */) sys6(NR_exit_group, 31, 0, 0, 0, 0, 0);
    struct siginfo si;
    i64 s = sys6(NR_rt_sigtimedwait, (i64)&all, (i64)&si, 0, 8, 0, 0);
    if (s > 0 && s != SIGCHLD && si.code != SI_KERNEL) sys6(NR_kill, child, s, 0, 0, 0, 0);
  }
}

#if defined(__x86_64__)
__asm__(".globl _start\n_start:\n mov %rsp, %rdi\n and $-16, %rsp\n call waiter_main\n hlt\n");
#elif defined(__aarch64__)
__asm__(".globl _start\n_start:\n mov x0, sp\n bl waiter_main\n");
#endif
