/* The program format the TypeScript side lays out (src/sys/program.ts), and the step both of its
   interpreters share: launcher.c (the clone(2) child) and exec.c (the executable ch-run
   execve(2)s into). Needs syscall.h. nr OP_SUPERVISE (-2) is no system call but supervise()
   (supervise.h: root emulation's seccomp(2) filter with its supervisor), with the same result
   convention.

   Program layout (little-endian 64-bit words):
     header: nops, report_fd, index_base (added to op indices in reports)
     op:     nr, a0..a5, flags, ok_errno, expect
   flags: bits 4j..4j+3 (j = 0..5): 0 = argument j is the immediate a[j]; k = register k-1.
          bits 24..27: k = store the result in register k-1 (0: don't).
          bit 28: the result must equal `expect`, else the op fails with errno 0.
          bit 29: soft: a failure is not reported; execution goes on with the next op.
          bit 30: on failure, first write a message to stderr, from the table at address `expect`:
                  entries {errno, text, length}, the last one with errno 0 for any other.
          bits 32..39: exit status on failure (0 means 31). */
#include "supervise.h"

struct op {
  i64 nr, a[6], flags, ok_errno, expect;
};
struct prog {
  i64 nops, report_fd, index_base;
  struct op ops[];
};

/* Registers the launcher executable (exec.c) fills before the program runs. */
#define REG_LOG_LEN0 11
#define REG_ENVP 12
#define REG_LOG 13
#define REG_LOG_LEN 14

#define OP_SOFT(o) (((o)->flags >> 29) & 1)
#define OP_STATUS(o) (((o)->flags >> 32) & 255)

/* The op's arguments: immediates, or registers as its flags say. */
static inline void op_args(const struct op *o, const i64 *reg, i64 *a) {
  for (int j = 0; j < 6; j++) {
    i64 src = (o->flags >> (4 * j)) & 15;
    a[j] = src ? reg[src - 1] : o->a[j];
  }
}

/* Makes the op's system call with arguments a, keeps the result in a register if asked, and
   returns whether it failed (soft or not), with its errno in *err (0 if the result was only
   not the one expected). */
static inline int op_call(const struct op *o, i64 *reg, const i64 *a, i64 *err) {
  i64 r = o->nr == OP_SUPERVISE ? supervise(a) : sys6(o->nr, a[0], a[1], a[2], a[3], a[4], a[5]);
  i64 dst = (o->flags >> 24) & 15;
  if (dst) reg[dst - 1] = r;
  *err = 0;
  if (r < 0 && r > -4096 && -r != o->ok_errno) {
    *err = -r;
    return 1;
  }
  return (o->flags >> 28) & 1 && r != o->expect;
}
