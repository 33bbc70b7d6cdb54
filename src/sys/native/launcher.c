/* Launcher: entry point of the clone(2) child. It runs a list of system calls prepared by the
   TypeScript side (src/sys/program.ts; format in prog.h) and nothing else: no libc, no globals, no
   JavaScript. nr -1 is no system call: it runs the program at address a0 (a second stage that
   ch-run plans once the namespaces exist, mapped in by an earlier op). On failure the child writes
   {op index, errno} to report_fd and exits. */
#include "syscall.h"
#include "prog.h"

__attribute__((noreturn)) void launch(struct prog *p) {
  i64 reg[15];
  for (i64 i = 0; i < p->nops; i++) {
    struct op *o = &p->ops[i];
    i64 a[6], err;
    op_args(o, reg, a);
    if (o->nr == -1) launch((struct prog *)a[0]);
    if (op_call(o, reg, a, &err)) {
      if (OP_SOFT(o)) continue;
      if ((o->flags >> 30) & 1) {
        i64 *t = (i64 *)o->expect;
        while (t[0] && t[0] != err) t += 3;
        sys6(NR_write, 2, t[1], t[2], 0, 0, 0);
      }
      i64 msg[2] = {p->index_base + i, err};
      sys6(NR_write, p->report_fd, (i64)msg, sizeof msg, 0, 0, 0);
      i64 code = OP_STATUS(o);
      sys6(NR_exit_group, code ? code : 31, 0, 0, 0, 0, 0);
    }
  }
  sys6(NR_exit_group, 31, 0, 0, 0, 0, 0);
  __builtin_unreachable();
}

/* Signal handler ch-run installs for the signals it forwards, from just before clone(2) until it
   becomes the waiter. The main thread blocks those signals; one that the kernel gives to another
   of Node's threads lands here and is sent on to the main thread (whose TID is the PID), where it
   stays pending across the execve(2) into the waiter, which then forwards it. */
void forward_to_main(int sig) {
  i64 pid = sys6(NR_getpid, 0, 0, 0, 0, 0, 0);
  sys6(NR_tgkill, pid, pid, sig, 0, 0, 0);
}
