/* ch-run's descriptor helper: a Node-API module of one function, keepOnExec(fd), which clears
   FD_CLOEXEC on fd (fcntl F_SETFD 0) and returns 0 or the errno. Node marks the descriptors a
   process inherits close-on-exec at start-up; ch-run's fast path must keep them (an MPI
   launcher's PMI socket, say) across its process.execve() into the launcher, and JavaScript has
   no fcntl(2). Loaded with process.dlopen() instead of koffi (about 10 ms less). Freestanding: no
   libc, only the Node-API functions that the Node executable itself exports. */
#include "syscall.h"

typedef struct napi_env__ *napi_env;
typedef struct napi_value__ *napi_value;
typedef struct napi_callback_info__ *napi_callback_info;
typedef int napi_status;
typedef napi_value (*napi_callback)(napi_env, napi_callback_info);
typedef unsigned long size_t;

extern napi_status napi_get_cb_info(napi_env, napi_callback_info, size_t *, napi_value *, napi_value *, void **);
extern napi_status napi_get_value_int32(napi_env, napi_value, int *);
extern napi_status napi_create_int32(napi_env, int, napi_value *);
extern napi_status napi_create_function(napi_env, const char *, size_t, napi_callback, void *, napi_value *);
extern napi_status napi_set_named_property(napi_env, napi_value, const char *, napi_value);

#define F_SETFD 2
#define EBADF 9

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

__attribute__((visibility("default"))) napi_value napi_register_module_v1(napi_env env, napi_value exports) {
  napi_value f;
  if (napi_create_function(env, "keepOnExec", 10, keep_on_exec, 0, &f) == 0) napi_set_named_property(env, exports, "keepOnExec", f);
  return exports;
}

__attribute__((visibility("default"))) int node_api_module_get_api_version_v1(void) { return 8; }
