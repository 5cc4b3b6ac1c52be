/* C half of libedgehaze_runtime.so (build.py hands this file to cffi as the set_source preamble).
 *
 * The public eh_* functions live here, in C, so these never need Python: the ABI version, the
 * thread-local last-error message, a clear INTERNAL status when the embedded interpreter cannot
 * start (cffi alone would return 0 == EH_OK from a call whose Python never ran), and the handle
 * table. Everything else is forwarded to the static extern "Python" functions of bridge.py.
 *
 * Handles are not addresses: an eh_handle* is a number, TAG | serial << SLOT_BITS | slot, into a
 * table of slots. Every create takes a new serial, so a stale copy of a closed handle never matches
 * the slot's current serial, however many creates later (EH_CLOSED, never someone else's handle),
 * and the value is never dereferenced (a wild pointer is EH_BAD_ARGUMENT, not a crash). Each slot has
 * a mutex held for the length of every call on that handle: calls on one handle from several
 * threads run one after another (a camera host's capture and worker threads may share one handle
 * and get each call's own frame back), different handles still run in parallel.
 *
 * build.py defines, before this text: eh__build_python (the interpreter whose environment --
 * numpy, onnxruntime, cffi -- the embedded Python uses unless EDGEHAZE_PYTHON is set).
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "edgehaze_runtime.h"

#define EH_EXPORT __attribute__((visibility("default")))

/* bridge.py's @ffi.def_extern functions (cffi defines them below this text; static, not exported).
   `state` is the bridge's per-handle object (a cffi handle) that a table slot holds. */
static int eh__py_options_init(eh_options *opts);
static int eh__py_create(const char *path, const eh_options *opts, void **state);
static int eh__py_run(void *state, const eh_image *in, eh_image *out);
static int eh__py_close(void *state);
static int eh__py_backend_name(void *state, const char **name);
static int eh__py_channel_order(void *state, eh_channel_order *order);

static __thread char eh__error[2048];
static pthread_once_t eh__interpreter_once = PTHREAD_ONCE_INIT;
static char eh__interpreter_failure[1024];
static char eh__startup_failure[1024];  /* set by the init code (build.py) when the runtime did not import */

/* Called by bridge.py (through cffi) on the failing thread. */
static void eh__set_error(const char *message) {
  snprintf(eh__error, sizeof eh__error, "%s", message ? message : "");
}

/* Called by the library's init code (once, before any extern "Python" function is attached). */
static void eh__startup_failed(const char *message) {
  snprintf(eh__startup_failure, sizeof eh__startup_failure, "%s", message ? message : "unknown failure");
}

/* The interpreter to embed: EDGEHAZE_PYTHON, else the one that built the library; NULL (and the
   failure set) when it is not an executable file, so the message names the variable, not a module. */
static const char *eh__python(void) {
  const char *python = getenv("EDGEHAZE_PYTHON");
  int from_env = python != NULL && python[0] != '\0';
  if (!from_env) python = eh__build_python;
  if (access(python, X_OK) == 0) return python;
  if (from_env)
    snprintf(eh__interpreter_failure, sizeof eh__interpreter_failure,
             "EDGEHAZE_PYTHON=%s is not an executable python (%s); point it at a python with numpy, onnxruntime "
             "and cffi (pip install -r runtime/requirements-device.txt), or unset it to use %s, the one that built "
             "this library", python, strerror(errno), eh__build_python);
  else
    snprintf(eh__interpreter_failure, sizeof eh__interpreter_failure,
             "%s, the python that built this library, is gone (%s); set EDGEHAZE_PYTHON to a python with numpy, "
             "onnxruntime and cffi (pip install -r runtime/requirements-device.txt), or rebuild the library with "
             "python runtime/capi/build.py", python, strerror(errno));
  return NULL;
}

/* Start CPython once per process, configured as the chosen interpreter (so its venv's site-packages
   are on sys.path), without signal handlers (the host owns them), check that cffi's _cffi_backend is
   importable there (the library needs it at every start, not only at build time), then release the
   GIL so cffi can take it from any thread. A host that already runs Python keeps its own interpreter. */
static void eh__start_interpreter(void) {
  if (Py_IsInitialized()) return;
  const char *python = eh__python();
  if (python == NULL) return;
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
             "python that has numpy, onnxruntime and cffi (see runtime/README.md)",
             status.err_msg ? status.err_msg : "unknown error", python);
    return;
  }
  PyObject *backend = PyImport_ImportModule("_cffi_backend");
  if (backend == NULL) {
    PyErr_Clear();
    snprintf(eh__interpreter_failure, sizeof eh__interpreter_failure,
             "the embedded Python (%s) has no cffi, which this library needs at run time too (its "
             "_cffi_backend module): pip install cffi into that environment (runtime/requirements-device.txt), "
             "or set EDGEHAZE_PYTHON to a python that has numpy, onnxruntime and cffi", python);
  } else {
    Py_DECREF(backend);
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
                  "with numpy, onnxruntime and cffi (see runtime/README.md)");
    return -1;
  }
  if (eh__startup_failure[0] != '\0') {
    eh__set_error(eh__startup_failure);
    return -1;
  }
  return 0;
}

/* -- the handle table ------------------------------------------------------------------------------ */

#define EH__CHUNK 64 /* slots are allocated 64 at a time and never freed or moved (their mutex stays put) */
#if UINTPTR_MAX > 0xFFFFFFFFu
#define EH__TAG ((uintptr_t)0xE4u << 56) /* top byte: never a user-space address on x86-64 / aarch64 */
#define EH__TAG_MASK ((uintptr_t)0xFFu << 56)
#define EH__SLOT_BITS 16                  /* 65536 handles open at once */
#define EH__SERIAL_BITS 40                /* 1.1e12 creates before a serial comes round again */
#else
#define EH__TAG ((uintptr_t)1u << 31)
#define EH__TAG_MASK ((uintptr_t)1u << 31)
#define EH__SLOT_BITS 11
#define EH__SERIAL_BITS 20
#endif
#define EH__MAX_SLOTS ((size_t)1 << EH__SLOT_BITS)
#define EH__SERIAL_MASK (((uint64_t)1 << EH__SERIAL_BITS) - 1)

typedef struct eh__slot {
  pthread_mutex_t lock; /* held for the length of every call on the handle in this slot */
  uint64_t serial;      /* 0: free; else (the low EH__SERIAL_BITS of) the serial of the open handle */
  void *state;          /* bridge.py's per-handle object */
  size_t next_free;     /* free list link (EH__MAX_SLOTS: end) */
} eh__slot;

static pthread_mutex_t eh__table_lock = PTHREAD_MUTEX_INITIALIZER;  /* guards allocation and the free list */
static eh__slot *eh__chunks[EH__MAX_SLOTS / EH__CHUNK];
static size_t eh__slots_made;              /* read without the table lock (atomic acquire) */
static size_t eh__free_head = EH__MAX_SLOTS;
static uint64_t eh__serials;               /* serials issued (atomic) */

static eh__slot *eh__slot_at(size_t index) { return &eh__chunks[index / EH__CHUNK][index % EH__CHUNK]; }

/* A free slot (its lock not held), or NULL when EH__MAX_SLOTS handles are open. */
static eh__slot *eh__take_slot(size_t *index) {
  eh__slot *slot = NULL;
  pthread_mutex_lock(&eh__table_lock);
  if (eh__free_head != EH__MAX_SLOTS) {
    *index = eh__free_head;
    slot = eh__slot_at(*index);
    eh__free_head = slot->next_free;
  } else if (eh__slots_made < EH__MAX_SLOTS) {
    size_t made = eh__slots_made;
    if (made % EH__CHUNK == 0) {
      eh__slot *chunk = calloc(EH__CHUNK, sizeof *chunk);
      if (chunk != NULL) {
        for (size_t i = 0; i < EH__CHUNK; i++) pthread_mutex_init(&chunk[i].lock, NULL);
        eh__chunks[made / EH__CHUNK] = chunk;
      }
    }
    if (eh__chunks[made / EH__CHUNK] != NULL) {
      *index = made;
      slot = eh__slot_at(made);
      __atomic_store_n(&eh__slots_made, made + 1, __ATOMIC_RELEASE);
    }
  }
  pthread_mutex_unlock(&eh__table_lock);
  return slot;
}

static void eh__give_back_slot(eh__slot *slot, size_t index) {
  pthread_mutex_lock(&eh__table_lock);
  slot->next_free = eh__free_head;
  eh__free_head = index;
  pthread_mutex_unlock(&eh__table_lock);
}

/* Decode a handle and lock its slot. EH_OK: *slot is locked and open (the caller unlocks). */
static eh_status eh__acquire(const eh_handle *handle, const char *call, eh__slot **slot) {
  uintptr_t value = (uintptr_t)handle;
  if (handle == NULL) {
    snprintf(eh__error, sizeof eh__error, "[CLOSED] %s: handle is NULL (eh_close set it to NULL, or eh_create "
             "failed)", call);
    return EH_CLOSED;
  }
  size_t index = (size_t)(value & (EH__MAX_SLOTS - 1));
  uint64_t serial = (uint64_t)((value & ~EH__TAG_MASK) >> EH__SLOT_BITS);
  uint64_t issued = __atomic_load_n(&eh__serials, __ATOMIC_ACQUIRE);
  if ((value & EH__TAG_MASK) != EH__TAG || serial == 0 || serial > EH__SERIAL_MASK ||
      index >= __atomic_load_n(&eh__slots_made, __ATOMIC_ACQUIRE) ||
      (issued <= EH__SERIAL_MASK && serial > issued)) {
    snprintf(eh__error, sizeof eh__error, "[BAD_ARGUMENT] %s: handle did not come from eh_create", call);
    return EH_BAD_ARGUMENT;
  }
  eh__slot *s = eh__slot_at(index);
  pthread_mutex_lock(&s->lock);
  if (s->serial != serial) {
    pthread_mutex_unlock(&s->lock);
    snprintf(eh__error, sizeof eh__error, "[CLOSED] %s: handle was closed by eh_close (a stale copy)", call);
    return EH_CLOSED;
  }
  *slot = s;
  return EH_OK;
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
  if (out == NULL) {
    eh__set_error("[BAD_ARGUMENT] eh_create: out is NULL (pass &handle)");
    return EH_BAD_ARGUMENT;
  }
  void *state = NULL;
  eh_status st = (eh_status)eh__py_create(path, opts, &state);
  if (st != EH_OK) return st;
  size_t index = 0;
  eh__slot *slot = eh__take_slot(&index);
  if (slot == NULL) {
    eh__py_close(state);
    snprintf(eh__error, sizeof eh__error, "[INTERNAL] eh_create: %zu handles are open, the most this library "
             "holds at once (or out of memory); close some", (size_t)EH__MAX_SLOTS);
    return EH_INTERNAL;
  }
  uint64_t serial = __atomic_add_fetch(&eh__serials, 1, __ATOMIC_ACQ_REL) & EH__SERIAL_MASK;
  if (serial == 0) serial = __atomic_add_fetch(&eh__serials, 1, __ATOMIC_ACQ_REL) & EH__SERIAL_MASK;
  pthread_mutex_lock(&slot->lock);  /* a stale copy may be checking this slot's serial right now */
  slot->serial = serial;
  slot->state = state;
  pthread_mutex_unlock(&slot->lock);
  *out = (eh_handle *)(EH__TAG | (uintptr_t)(serial << EH__SLOT_BITS) | (uintptr_t)index);
  return EH_OK;
}

EH_EXPORT eh_status eh_run(eh_handle *handle, const eh_image *in, eh_image *out) {
  if (eh__enter() != 0) return EH_INTERNAL;
  eh__slot *slot;
  eh_status st = eh__acquire(handle, "eh_run", &slot);
  if (st != EH_OK) return st;
  st = (eh_status)eh__py_run(slot->state, in, out);
  pthread_mutex_unlock(&slot->lock);
  return st;
}

EH_EXPORT eh_status eh_close(eh_handle **handle) {
  eh__error[0] = '\0';
  if (handle == NULL) {
    eh__set_error("[BAD_ARGUMENT] eh_close: pass &handle, not NULL");
    return EH_BAD_ARGUMENT;
  }
  if (*handle == NULL) return EH_OK;  /* already closed: nothing to free, no Python needed */
  eh__slot *slot;
  eh_status st = eh__acquire(*handle, "eh_close", &slot);  /* waits for a call running on it */
  if (st == EH_CLOSED) {  /* a stale copy: idempotent, and it closes nobody else's handle */
    eh__error[0] = '\0';
    *handle = NULL;
    return EH_OK;
  }
  if (st != EH_OK) return st;
  if (eh__enter() != 0) {
    pthread_mutex_unlock(&slot->lock);
    return EH_INTERNAL;
  }
  st = (eh_status)eh__py_close(slot->state);
  slot->serial = 0;
  slot->state = NULL;
  pthread_mutex_unlock(&slot->lock);
  eh__give_back_slot(slot, (size_t)((uintptr_t)*handle & (EH__MAX_SLOTS - 1)));
  *handle = NULL;
  return st;
}

EH_EXPORT eh_status eh_get_backend_name(const eh_handle *handle, const char **name) {
  if (eh__enter() != 0) return EH_INTERNAL;
  eh__slot *slot;
  eh_status st = eh__acquire(handle, "eh_get_backend_name", &slot);
  if (st != EH_OK) return st;
  st = (eh_status)eh__py_backend_name(slot->state, name);
  pthread_mutex_unlock(&slot->lock);
  return st;
}

EH_EXPORT eh_status eh_get_channel_order(const eh_handle *handle, eh_channel_order *order) {
  if (eh__enter() != 0) return EH_INTERNAL;
  eh__slot *slot;
  eh_status st = eh__acquire(handle, "eh_get_channel_order", &slot);
  if (st != EH_OK) return st;
  st = (eh_status)eh__py_channel_order(slot->state, order);
  pthread_mutex_unlock(&slot->lock);
  return st;
}
