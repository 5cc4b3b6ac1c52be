/* C half of libedgehaze_runtime.so (build.py hands this file to cffi as the set_source preamble).
 *
 * The public eh_* functions live here, in C, so three things never need Python: the ABI version,
 * the thread-local last-error message, and a clear INTERNAL status when the embedded interpreter
 * cannot start (cffi alone would return 0 == EH_OK from a call whose Python never ran). Everything
 * else is forwarded to the static extern "Python" functions of bridge.py.
 *
 * build.py defines, before this text: eh__build_python (the interpreter whose environment --
 * numpy, onnxruntime -- the embedded Python uses unless EDGEHAZE_PYTHON is set).
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "edgehaze_runtime.h"

#define EH_EXPORT __attribute__((visibility("default")))

/* bridge.py's @ffi.def_extern functions (cffi defines them below this text; static, not exported) */
static int eh__py_options_init(eh_options *opts);
static int eh__py_create(const char *path, const eh_options *opts, eh_handle **out);
static int eh__py_run(eh_handle *handle, const eh_image *in, eh_image *out);
static int eh__py_close(eh_handle **handle);
static int eh__py_backend_name(const eh_handle *handle, const char **name);
static int eh__py_channel_order(const eh_handle *handle, eh_channel_order *order);

static __thread char eh__error[2048];
static pthread_once_t eh__interpreter_once = PTHREAD_ONCE_INIT;
static char eh__interpreter_failure[1024];

/* Called by bridge.py (through cffi) on the failing thread. */
static void eh__set_error(const char *message) {
  snprintf(eh__error, sizeof eh__error, "%s", message ? message : "");
}

/* Start CPython once per process, configured as the build interpreter (so its venv's site-packages
   are on sys.path), without signal handlers (the host owns them), then release the GIL so cffi can
   take it from any thread. A host that already runs Python keeps its own interpreter. */
static void eh__start_interpreter(void) {
  if (Py_IsInitialized()) return;
  const char *python = getenv("EDGEHAZE_PYTHON");
  if (python == NULL || python[0] == '\0') python = eh__build_python;
  PyConfig config;
  PyConfig_InitPythonConfig(&config);
  config.install_signal_handlers = 0;
  config.parse_argv = 0;
  PyStatus status = PyConfig_SetBytesString(&config, &config.executable, python);
  if (!PyStatus_Exception(status)) status = Py_InitializeFromConfig(&config);
  PyConfig_Clear(&config);
  if (PyStatus_Exception(status)) {
    snprintf(eh__interpreter_failure, sizeof eh__interpreter_failure,
             "the embedded Python did not start (%s) with interpreter %s; set EDGEHAZE_PYTHON to a "
             "python that has numpy and onnxruntime (see runtime/README.md)",
             status.err_msg ? status.err_msg : "unknown error", python);
    return;
  }
  PyEval_SaveThread();
}

/* Clear this thread's error and make sure the Python side is ready; 0 when it is. */
static int eh__enter(void) {
  eh__error[0] = '\0';
  pthread_once(&eh__interpreter_once, eh__start_interpreter);
  if (eh__interpreter_failure[0] != '\0') {
    eh__set_error(eh__interpreter_failure);
    return -1;
  }
  if (cffi_start_python() != 0) {
    eh__set_error("the edgehaze runtime did not load in the embedded Python (traceback on stderr); "
                  "set EDGEHAZE_RUNTIME_DIR to the runtime/ folder and EDGEHAZE_PYTHON to a python "
                  "with numpy and onnxruntime (see runtime/README.md)");
    return -1;
  }
  return 0;
}

EH_EXPORT uint32_t eh_abi_version(void) { return EH_ABI_VERSION; }

EH_EXPORT const char *eh_last_error(void) { return eh__error; }

EH_EXPORT eh_status eh_options_init(eh_options *opts) {
  if (eh__enter() != 0) return EH_INTERNAL;
  return (eh_status)eh__py_options_init(opts);
}

EH_EXPORT eh_status eh_create(const char *path, const eh_options *opts, eh_handle **out) {
  if (out != NULL) *out = NULL;
  if (eh__enter() != 0) return EH_INTERNAL;
  return (eh_status)eh__py_create(path, opts, out);
}

EH_EXPORT eh_status eh_run(eh_handle *handle, const eh_image *in, eh_image *out) {
  if (eh__enter() != 0) return EH_INTERNAL;
  return (eh_status)eh__py_run(handle, in, out);
}

EH_EXPORT eh_status eh_close(eh_handle **handle) {
  if (handle != NULL && *handle == NULL) {  /* already closed: nothing to free, no Python needed */
    eh__error[0] = '\0';
    return EH_OK;
  }
  if (eh__enter() != 0) return EH_INTERNAL;
  return (eh_status)eh__py_close(handle);
}

EH_EXPORT eh_status eh_get_backend_name(const eh_handle *handle, const char **name) {
  if (eh__enter() != 0) return EH_INTERNAL;
  return (eh_status)eh__py_backend_name(handle, name);
}

EH_EXPORT eh_status eh_get_channel_order(const eh_handle *handle, eh_channel_order *order) {
  if (eh__enter() != 0) return EH_INTERNAL;
  return (eh_status)eh__py_channel_order(handle, order);
}
