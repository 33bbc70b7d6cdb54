/* ch-run's descriptor helper: a Node-API module of two functions. keepOnExec(fd) clears
   FD_CLOEXEC on fd (fcntl F_SETFD 0) and returns 0 or the errno. keepInherited() finds the
   descriptors ch-run inherited, by the rule of fds.ts's pickInherited() (the same rule, for the
   same reasons: see there), clears FD_CLOEXEC on each and returns them sorted; on failure, it
   returns { errno, fd } instead (fd -1: listing /proc/self/fd failed; else clearing fd's flag).
   Node marks the descriptors a process inherits close-on-exec at start-up; ch-run's fast path
   must keep them (an MPI launcher's PMI socket, say) across its process.execve() into the
   launcher, and JavaScript has no fcntl(2); listing them here takes about 0.1 ms, fds.ts's
   listFds() 1 to 2 ms at start-up (a third of the system calls: no fdinfo file to open, read and
   close for each). Loaded with process.dlopen() instead of koffi (about 10 ms less). Freestanding: no libc, only the Node-API functions that the Node
   executable itself exports. */
#include "syscall.h"

typedef struct napi_env__ *napi_env;
typedef struct napi_value__ *napi_value;
typedef struct napi_callback_info__ *napi_callback_info;
typedef int napi_status;
typedef napi_value (*napi_callback)(napi_env, napi_callback_info);
typedef unsigned long size_t;
typedef unsigned long u64;

extern napi_status napi_get_cb_info(napi_env, napi_callback_info, size_t *, napi_value *, napi_value *, void **);
extern napi_status napi_get_value_int32(napi_env, napi_value, int *);
extern napi_status napi_create_int32(napi_env, int, napi_value *);
extern napi_status napi_create_function(napi_env, const char *, size_t, napi_callback, void *, napi_value *);
extern napi_status napi_set_named_property(napi_env, napi_value, const char *, napi_value);
extern napi_status napi_set_element(napi_env, napi_value, unsigned int, napi_value);
extern napi_status napi_create_array_with_length(napi_env, size_t, napi_value *);
extern napi_status napi_create_object(napi_env, napi_value *);

/* Only this module's: syscall.h is shared with the launcher's blobs. */
#if defined(__x86_64__)
#define NR_munmap 11
#define NR_getdents64 217
#define NR_openat 257
#define NR_readlinkat 267
#define O_DIRECTORY 0200000
#elif defined(__aarch64__)
#define NR_munmap 215
#define NR_getdents64 61
#define NR_openat 56
#define NR_readlinkat 78
#define O_DIRECTORY 040000
#endif
#define AT_FDCWD (-100)
#define O_CLOEXEC 02000000
#define F_GETFD 1
#define F_SETFD 2
#define FD_CLOEXEC 1
#define EBADF 9
#define ENOMEM 12
#define PROT_RW 3
#define MAP_PRIVATE_ANON 0x22

static napi_value keep_on_exec(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  int fd = -1;
  napi_value out = 0;
  if (napi_get_cb_info(env, info, &argc, argv, 0, 0) != 0 || argc < 1 || napi_get_value_int32(env, argv[0], &fd) != 0) fd = -1;
  i64 r = fd < 0 ? -EBADF : sys6(NR_fcntl, fd, F_SETFD, 0, 0, 0, 0);
  napi_create_int32(env, r < 0 ? (int)-r : 0, &out);
  return out;
}

/* One open descriptor: its number, what its link says (the kinds that matter), and the pipe's
   inode for a pipe (its link is "pipe:[INODE]"). */
enum { CLOEXEC = 1, NODES = 2, PIPE = 4, SHARED = 8 };
struct ent {
  u64 key; /* the pipe's inode (pipes after the rest), later the descriptor */
  int fd;
  int kind;
};

/* Whether x sorts after y: pipes after everything else, then by key. */
static int after(const struct ent *x, const struct ent *y) {
  int px = x->kind & PIPE, py = y->kind & PIPE;
  return px != py ? px > py : x->key > y->key;
}

/* Heapsort (no libc, no recursion, O(n log n) even for a process of 100,000 descriptors). */
static void sift(struct ent *a, long root, long n) {
  for (;;) {
    long c = 2 * root + 1;
    if (c >= n) return;
    if (c + 1 < n && after(&a[c + 1], &a[c])) c++;
    if (!after(&a[c], &a[root])) return;
    struct ent t = a[root];
    a[root] = a[c];
    a[c] = t;
    root = c;
  }
}
static void sort(struct ent *a, long n) {
  for (long i = n / 2 - 1; i >= 0; i--) sift(a, i, n);
  for (long i = n - 1; i > 0; i--) {
    struct ent t = a[0];
    a[0] = a[i];
    a[i] = t;
    sift(a, 0, i);
  }
}

static int prefix(const char *s, long n, const char *p) {
  long i = 0;
  for (; p[i]; i++)
    if (i >= n || s[i] != p[i]) return 0;
  return 1;
}

/* What descriptor fd (a name in /proc/self/fd, dir) is: its kind bits and the pipe's inode; -1 if
   it is gone (closed since the listing: skipped, as listFds() skips what it can't read). */
static int classify(int dir, const char *name, int fd, u64 *inode) {
  char t[64]; /* longer targets are truncated: none of the kinds that matter is that long */
  i64 n = sys6(NR_readlinkat, dir, (i64)name, (i64)t, sizeof t, 0, 0);
  if (n < 0) return -1;
  i64 f = sys6(NR_fcntl, fd, F_GETFD, 0, 0, 0, 0);
  if (f < 0) return -1;
  int kind = (f & FD_CLOEXEC) ? CLOEXEC : 0;
  *inode = 0;
  if (prefix(t, n, "anon_inode:") || (n == 9 && prefix(t, n, "/dev/null")))
    kind |= NODES;
  else if (n < (i64)sizeof t && prefix(t, n, "pipe:[") && t[n - 1] == ']' && n > 7) {
    u64 v = 0;
    long i = 6;
    for (; i < n - 1 && t[i] >= '0' && t[i] <= '9'; i++) v = v * 10 + (u64)(t[i] - '0');
    if (i == n - 1) {
      kind |= PIPE;
      *inode = v;
    }
  }
  return kind;
}

static napi_value failure(napi_env env, int err, int fd) {
  napi_value o = 0, e, f;
  if (napi_create_object(env, &o) != 0) return o;
  napi_create_int32(env, err, &e);
  napi_create_int32(env, fd, &f);
  napi_set_named_property(env, o, "errno", e);
  napi_set_named_property(env, o, "fd", f);
  return o;
}

static napi_value keep_inherited(napi_env env, napi_callback_info info) {
  (void)info;
  struct ent stack[256];
  struct ent *a = stack;
  long n = 0, cap = sizeof stack / sizeof stack[0];
  int err = 0;
  napi_value out = 0;
  int dir = (int)sys6(NR_openat, AT_FDCWD, (i64) "/proc/self/fd", O_DIRECTORY | O_CLOEXEC, 0, 0, 0);
  if (dir < 0) return failure(env, -dir, -1);
  /* The listing: every descriptor but the directory's own. */
  u64 buf[512];
  for (;;) {
    i64 got = sys6(NR_getdents64, dir, (i64)buf, sizeof buf, 0, 0, 0);
    if (got < 0) err = (int)-got;
    if (got <= 0) break;
    for (i64 off = 0; off < got;) {
      const char *d = (const char *)buf + off;
      off += *(const unsigned short *)(d + 16);
      const char *name = d + 19;
      long fd = 0;
      int i = 0;
      for (; name[i] >= '0' && name[i] <= '9' && i < 10; i++) fd = fd * 10 + (name[i] - '0');
      if (i == 0 || name[i] || fd > 0x7fffffff || fd == dir) continue; /* ".", ".." */
      u64 inode;
      int kind = classify(dir, name, (int)fd, &inode);
      if (kind < 0) continue;
      if (n == cap) {
        /* More than fit on the stack: a bigger array, twice as big each time. */
        long ncap = cap * 2;
        i64 m = sys6(NR_mmap, 0, ncap * (long)sizeof *a, PROT_RW, MAP_PRIVATE_ANON, -1, 0);
        if (m < 0 && m > -4096) {
          err = ENOMEM;
          break;
        }
        struct ent *b = (struct ent *)m;
        for (long j = 0; j < n; j++) b[j] = a[j];
        if (a != stack) sys6(NR_munmap, (i64)a, cap * (long)sizeof *a, 0, 0, 0, 0);
        a = b;
        cap = ncap;
      }
      a[n].key = inode;
      a[n].fd = (int)fd;
      a[n].kind = kind;
      n++;
    }
    if (err) break;
  }
  sys6(NR_close, dir, 0, 0, 0, 0, 0);
  if (err) {
    out = failure(env, err, -1);
    goto done;
  }
  /* A pipe whose link appears on more than one descriptor (both ends of one pipe: Node's own
     pairs) is shared: pipes sorted by inode, neighbours compared. */
  sort(a, n);
  for (long i = 0; i + 1 < n; i++)
    if ((a[i].kind & PIPE) && (a[i + 1].kind & PIPE) && a[i].key == a[i + 1].key) {
      a[i].kind |= SHARED;
      a[i + 1].kind |= SHARED;
    }
  /* pickInherited(): above 2, and without close-on-exec or not one of Node's kinds. */
  long k = 0;
  for (long i = 0; i < n; i++) {
    int kind = a[i].kind;
    if (a[i].fd <= 2) continue;
    if ((kind & CLOEXEC) && ((kind & NODES) || (kind & SHARED))) continue;
    a[k].key = (u64)a[i].fd;
    a[k].fd = a[i].fd;
    a[k].kind = kind & CLOEXEC; /* sorted by descriptor alone */
    k++;
  }
  sort(a, k);
  for (long i = 0; i < k; i++)
    if (a[i].kind & CLOEXEC) {
      i64 r = sys6(NR_fcntl, a[i].fd, F_SETFD, 0, 0, 0, 0);
      if (r < 0) {
        out = failure(env, (int)-r, a[i].fd);
        goto done;
      }
    }
  if (napi_create_array_with_length(env, (size_t)k, &out) != 0) {
    out = 0;
    goto done;
  }
  for (long i = 0; i < k; i++) {
    napi_value v;
    if (napi_create_int32(env, a[i].fd, &v) != 0 || napi_set_element(env, out, (unsigned int)i, v) != 0) {
      out = 0;
      break;
    }
  }
done:
  if (a != stack) sys6(NR_munmap, (i64)a, cap * (long)sizeof *a, 0, 0, 0, 0);
  return out;
}

__attribute__((visibility("default"))) napi_value napi_register_module_v1(napi_env env, napi_value exports) {
  napi_value f;
  if (napi_create_function(env, "keepOnExec", 10, keep_on_exec, 0, &f) == 0) napi_set_named_property(env, exports, "keepOnExec", f);
  if (napi_create_function(env, "keepInherited", 13, keep_inherited, 0, &f) == 0)
    napi_set_named_property(env, exports, "keepInherited", f);
  return exports;
}

__attribute__((visibility("default"))) int node_api_module_get_api_version_v1(void) { return 8; }
