/* Raw system calls for the freestanding launcher and waiter: no libc, no globals. */
typedef long i64;

#if defined(__x86_64__)
static inline i64 sys6(i64 n, i64 a, i64 b, i64 c, i64 d, i64 e, i64 f) {
  i64 ret;
  register i64 r10 __asm__("r10") = d;
  register i64 r8 __asm__("r8") = e;
  register i64 r9 __asm__("r9") = f;
  __asm__ volatile("syscall"
                   : "=a"(ret)
                   : "a"(n), "D"(a), "S"(b), "d"(c), "r"(r10), "r"(r8), "r"(r9)
                   : "rcx", "r11", "memory");
  return ret;
}
#define NR_write 1
#define NR_close 3
#define NR_rt_sigprocmask 14
#define NR_getpid 39
#define NR_wait4 61
#define NR_kill 62
#define NR_rt_sigtimedwait 128
#define NR_exit_group 231
#define NR_close_range 436
#define NR_tgkill 234
#define NR_mmap 9
#define NR_rt_sigaction 13
#define NR_fcntl 72
#elif defined(__aarch64__)
static inline i64 sys6(i64 n, i64 a, i64 b, i64 c, i64 d, i64 e, i64 f) {
  register i64 x8 __asm__("x8") = n;
  register i64 x0 __asm__("x0") = a;
  register i64 x1 __asm__("x1") = b;
  register i64 x2 __asm__("x2") = c;
  register i64 x3 __asm__("x3") = d;
  register i64 x4 __asm__("x4") = e;
  register i64 x5 __asm__("x5") = f;
  __asm__ volatile("svc #0"
                   : "+r"(x0)
                   : "r"(x8), "r"(x1), "r"(x2), "r"(x3), "r"(x4), "r"(x5)
                   : "memory");
  return x0;
}
#define NR_write 64
#define NR_close 57
#define NR_rt_sigprocmask 135
#define NR_getpid 172
#define NR_wait4 260
#define NR_kill 129
#define NR_rt_sigtimedwait 137
#define NR_exit_group 94
#define NR_close_range 436
#define NR_tgkill 131
#define NR_mmap 222
#define NR_rt_sigaction 134
#define NR_fcntl 25
#else
#error "unsupported architecture"
#endif
