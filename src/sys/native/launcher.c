/* Launcher: entry point of the clone(2) child. It runs a list of system calls prepared by the
   TypeScript side (src/container/program.ts) and nothing else: no libc, no globals, no JavaScript.

   Program layout (little-endian 64-bit words):
     header: nops, report_fd, index_base (added to op indices in reports)
     op:     nr, a0..a5, flags, ok_errno, expect
   nr -1 is no system call: it runs the program at address a0 (a second stage that ch-run plans
   once the namespaces exist, mapped in by an earlier op).
   flags: bits 4j..4j+3 (j = 0..5): 0 = argument j is the immediate a[j]; k = register k-1.
          bits 24..27: k = store the result in register k-1 (0: don't).
          bit 28: the result must equal `expect`, else the op fails with errno 0.
          bit 29: soft: a failure is not reported; execution goes on with the next op.
          bit 30: on failure, first write a message to stderr, from the table at address `expect`:
                  entries {errno, text, length}, the last one with errno 0 for any other.
          bits 32..39: exit status on failure (0 means 31).
   On failure the child writes {op index, errno} to report_fd and exits. */
#include "syscall.h"

struct op {
  i64 nr, a[6], flags, ok_errno, expect;
};
struct prog {
  i64 nops, report_fd, index_base;
  struct op ops[];
};

__attribute__((noreturn)) void launch(struct prog *p) {
  i64 reg[15];
  for (i64 i = 0; i < p->nops; i++) {
    struct op *o = &p->ops[i];
    i64 a[6], fl = o->flags;
    for (int j = 0; j < 6; j++) {
      i64 src = (fl >> (4 * j)) & 15;
      a[j] = src ? reg[src - 1] : o->a[j];
    }
    if (o->nr == -1) launch((struct prog *)a[0]);
    i64 r = sys6(o->nr, a[0], a[1], a[2], a[3], a[4], a[5]);
    i64 dst = (fl >> 24) & 15;
    if (dst) reg[dst - 1] = r;
    i64 err = 0, failed = 0;
    if (r < 0 && r > -4096 && -r != o->ok_errno) {
      failed = 1;
      err = -r;
    } else if ((fl >> 28) & 1 && r != o->expect) {
      failed = 1;
    }
    if (failed) {
      if ((fl >> 29) & 1) continue;
      if ((fl >> 30) & 1) {
        i64 *t = (i64 *)o->expect;
        while (t[0] && t[0] != err) t += 3;
        sys6(NR_write, 2, t[1], t[2], 0, 0, 0);
      }
      i64 msg[2] = {p->index_base + i, err};
      sys6(NR_write, p->report_fd, (i64)msg, sizeof msg, 0, 0, 0);
      i64 code = (fl >> 32) & 255;
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
