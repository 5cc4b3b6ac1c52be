/* edgehaze_runtime.h -- the C API of the edgehaze runtime (libedgehaze_runtime.so).
 *
 * Same calls, same artifacts, same status numbers as runtime/api.py: the library
 * embeds that Python runtime (numpy + onnxruntime + cffi, at build time and at every
 * start), so a C host and a Python host give byte-identical output on the same artifact.
 * Build the library with
 *     python runtime/capi/build.py --out DIR
 * and link with  -IDIR/include -LDIR -ledgehaze_runtime -Wl,-rpath,DIR  (see runtime/README.md;
 * on a device: pip install -r runtime/requirements-device.txt, apt install gcc python3-dev).
 *
 * Rules, in the manner of the ONNX Runtime C API:
 *  - every call returns an eh_status (0 = EH_OK) except eh_abi_version and eh_last_error;
 *  - after a non-OK status, eh_last_error() holds a one-line message for this thread
 *    (any call that starts clears it);
 *  - every struct starts with struct_size: set it to sizeof(the struct) (eh_options_init
 *    and EH_IMAGE_INIT do) so later versions can add fields at the end. The library takes,
 *    for eh_options and eh_image alike: an older caller's smaller struct (fields it does not
 *    reach get their defaults), a newer caller's larger one whose fields unknown to this
 *    library are all zero (their "as before" value; a set one is EH_BAD_ARGUMENT), and
 *    refuses a struct_size smaller than the struct_size field itself (EH_BAD_ARGUMENT);
 *  - buffers are used in place, never copied: one uint8 image, batch 1, 3 interleaved
 *    channels, rows row_stride bytes apart;
 *  - threads: calls on one handle are serialised (a per-handle mutex held for the whole call),
 *    so a capture thread and a worker thread may share a handle and each call gets its own
 *    frame back, complete; they take turns, so for parallel inference give each thread its
 *    own handle: different handles run in different threads at once. eh_close from another
 *    thread waits for the call running on the handle, later calls on it are EH_CLOSED;
 *  - handles are not addresses: an eh_handle* is a table slot and a generation serial, never
 *    dereferenced. A stale copy of a closed handle is EH_CLOSED however many handles were
 *    created since (it never reaches a newer handle that took its slot); a value that never
 *    came from eh_create is EH_BAD_ARGUMENT.
 */
#ifndef EDGEHAZE_RUNTIME_H
#define EDGEHAZE_RUNTIME_H

#include <stddef.h>
#include <stdint.h>

#define EH_ABI_VERSION 1u

#ifdef __cplusplus
extern "C" {
#endif

/* EH_API_BEGIN (build.py hands the text between these markers to cffi: no preprocessor lines inside) */

typedef enum eh_status {
  EH_OK = 0,
  EH_BAD_ARGUMENT = 1,        /* wrong buffer, option value, NULL pointer, struct_size */
  EH_BAD_ARTIFACT = 2,        /* file missing, not ONNX, wrong I/O contract, bad sidecar */
  EH_BACKEND_UNAVAILABLE = 3, /* provider / onnxruntime / tensorrt / CUDA not usable */
  EH_SHAPE = 4,               /* frame size outside what the artifact accepts; out of another size */
  EH_UNSUPPORTED = 5,         /* valid request this backend cannot do (GPU buffer on ORT-CPU) */
  EH_IO = 6,                  /* a file cannot be read or written */
  EH_CLOSED = 7,              /* the handle was closed: NULL (eh_close nulls it) or a stale copy */
  EH_INTERNAL = 8             /* the backend or the embedded Python failed */
} eh_status;

typedef enum eh_channel_order {
  EH_CHANNELS_ARTIFACT = 0,   /* whatever the artifact's sidecar says (query with eh_get_channel_order) */
  EH_CHANNELS_RGB = 1,
  EH_CHANNELS_BGR = 2
} eh_channel_order;

/* Every field of the Python runtime.Options, same names; eh_options_init fills its defaults.
   Strings are read during eh_create only; NULL means the default. Flags are 0 or 1. Values are
   checked as the Python API checks them, with the same messages (EH_BAD_ARGUMENT). */
typedef struct eh_options {
  size_t struct_size;               /* sizeof(eh_options) */
  const char *provider;             /* "auto" (TensorRT > CUDA > CPU) | "trt" | "cuda" | "cpu" | ORT name */
  int32_t threads;                  /* ORT intra-op threads in [0, 4 x cores] (0 = ORT default); default 2 */
  int32_t inter_op_threads;         /* in [0, 4 x cores]; default 1 */
  int32_t spin;                     /* flag: ORT workers busy-wait between ops; default 0 */
  const char *graph_optimization;   /* "disable" | "basic" | "extended" | "all" (default) */
  const char *optimized_model_path; /* save ORT's optimised graph here; NULL = do not */
  int32_t depth_every;              /* refresh depth features every N frames (N > 1: two-graph export) */
  int32_t device_id;                /* GPU index; default 0 */
  const char *trt_cache_dir;        /* ORT TensorRT provider cache; NULL = ARTIFACT_DIR/trt_cache */
  double temporal;                  /* video smoothing strength in [0, 1); 0 = off (bit-exact) */
  int32_t bypass;                   /* flag: pass clear frames through unchanged; default 0 */
} eh_options;

/* One uint8 image [height][width][3]. Exactly one of data (host memory) and device_data
   (CUDA device memory, for the ORT CUDA/TensorRT providers and .engine files) is non-NULL.
   A struct_size that ends before height is EH_BAD_ARGUMENT; row_stride and channel_order past it
   default to 0. */
typedef struct eh_image {
  size_t struct_size;               /* sizeof(eh_image) */
  uint8_t *data;                    /* host pointer, or NULL */
  void *device_data;                /* CUDA device pointer, or NULL */
  int32_t width;
  int32_t height;
  int64_t row_stride;               /* bytes from one row to the next; 0 = width * 3 (the only layout
                                       the ORT backends bind without a copy) */
  eh_channel_order channel_order;   /* must match the artifact (no hidden conversion) */
} eh_image;

typedef struct eh_handle eh_handle;   /* opaque: a slot and a generation, never an address */

/* The ABI version of the library; compare with EH_ABI_VERSION from this header. Never fails. */
uint32_t eh_abi_version(void);

/* The message of the last non-OK status returned on this thread ("" if none). The pointer stays
   valid until the next eh_* call on this thread. Never NULL, never fails. */
const char *eh_last_error(void);

/* Fill *opts with the defaults of runtime.Options (and struct_size). */
eh_status eh_options_init(eh_options *opts);

/* Open NAME.onnx | NAME.engine | NAME.json | a stem | a folder, or a shipped model by name
   ("edgehaze-s": runtime/models/, files checked by sha256, variant chosen by each frame's size;
   "edgehaze-s@1080" pins one). opts NULL = defaults. On success *out is a new handle; on failure
   *out is NULL. */
eh_status eh_create(const char *path, const eh_options *opts, eh_handle **out);

/* Dehaze in into out (same width/height, caller memory, written in place). The backend binds
   out by pointer once and re-binds only when its address or the size changes. Calls on one
   handle from several threads run one after another (each waits for the one running). */
eh_status eh_run(eh_handle *handle, const eh_image *in, eh_image *out);

/* Free *handle and set it to NULL, after the call running on it (if any) returns. Idempotent:
   a NULL *handle, or a stale copy of a closed one, is EH_OK (set to NULL, nothing else closed). */
eh_status eh_close(eh_handle **handle);

/* "onnxruntime/CPUExecutionProvider", "tensorrt", ...; valid while the handle is open. */
eh_status eh_get_backend_name(const eh_handle *handle, const char **name);

/* The channel order the artifact wants (EH_CHANNELS_RGB or EH_CHANNELS_BGR). */
eh_status eh_get_channel_order(const eh_handle *handle, eh_channel_order *order);

/* EH_API_END */

#ifdef __cplusplus
}
#endif

/* An eh_image with struct_size set and everything else zero: eh_image img = EH_IMAGE_INIT; */
#define EH_IMAGE_INIT {sizeof(eh_image), NULL, NULL, 0, 0, 0, EH_CHANNELS_ARTIFACT}

#endif /* EDGEHAZE_RUNTIME_H */
