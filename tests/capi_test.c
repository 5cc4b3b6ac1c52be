/* The C API driven from C: every status path, outputs for byte comparison, two handles in two threads.
 *
 *   capi_test ARTIFACT.onnx FRAMES.raw WIDTH HEIGHT OUTDIR
 *
 * FRAMES.raw holds 3 frames (WIDTH x HEIGHT x 3 uint8). Writes OUTDIR/single.raw (frame 0, default
 * options), OUTDIR/thread0.raw and thread1.raw (frames 1 and 2, one handle per thread, 20 runs each),
 * OUTDIR/sequence.raw (frames 0,1,2 with depth_every=2, graph_optimization="basic", threads=1). Prints one line per
 * check; exits 1 when any check fails. tests/test_capi.py compiles it (with ASan) and compares bytes.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "edgehaze_runtime.h"

static int failures = 0;
static int W, H;
static size_t NBYTES;
static uint8_t *frames;
static const char *artifact;

/* status must equal want; a failure must leave a message, a success must leave none */
static void expect(const char *name, eh_status got, eh_status want) {
  const char *msg = eh_last_error();
  int ok = got == want && (want == EH_OK ? msg[0] == '\0' : msg[0] != '\0');
  printf("%s %s: status %d (want %d) last_error \"%s\"\n", ok ? "ok" : "FAIL", name, (int)got, (int)want, msg);
  if (!ok) failures++;
}

static void check(const char *name, int ok) {
  printf("%s %s\n", ok ? "ok" : "FAIL", name);
  if (!ok) failures++;
}

static eh_image image(uint8_t *data, int w, int h) {
  eh_image img = EH_IMAGE_INIT;
  img.data = data;
  img.width = w;
  img.height = h;
  img.row_stride = (int64_t)w * 3;
  return img;
}

static int write_file(const char *dir, const char *name, const uint8_t *data, size_t n) {
  char path[4096];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  FILE *f = fopen(path, "wb");
  if (f == NULL) return -1;
  size_t done = fwrite(data, 1, n, f);
  return fclose(f) == 0 && done == n ? 0 : -1;
}

typedef struct {
  int index;
  uint8_t *out;
  eh_status status;
  int stable;
} job;

static void *thread_main(void *arg) {
  job *j = arg;
  eh_options opts;
  eh_handle *h = NULL;
  j->stable = 1;
  if ((j->status = eh_options_init(&opts)) != EH_OK) return NULL;
  opts.threads = 1;
  if ((j->status = eh_create(artifact, &opts, &h)) != EH_OK) return NULL;
  uint8_t *first = malloc(NBYTES);
  eh_image in = image(frames + (size_t)(1 + j->index) * NBYTES, W, H), out = image(j->out, W, H);
  for (int i = 0; i < 20 && j->status == EH_OK; i++) {
    j->status = eh_run(h, &in, &out);
    if (i == 0) memcpy(first, j->out, NBYTES);
    else if (memcmp(first, j->out, NBYTES) != 0) j->stable = 0;
  }
  free(first);
  eh_status c = eh_close(&h);
  if (j->status == EH_OK) j->status = c;
  return NULL;
}

static void status_paths(uint8_t *out_buf) {
  eh_handle *h = NULL;
  eh_options opts;
  expect("missing file", eh_create("/nonexistent/edgehaze/model.onnx", NULL, &h), EH_BAD_ARTIFACT);
  check("failed create leaves the handle NULL", h == NULL);
  expect("NULL path", eh_create(NULL, NULL, &h), EH_BAD_ARGUMENT);
  expect("NULL out handle", eh_create(artifact, NULL, NULL), EH_BAD_ARGUMENT);
  expect("options_init(NULL)", eh_options_init(NULL), EH_BAD_ARGUMENT);

  memset(&opts, 0, sizeof opts);
  expect("struct_size 0", eh_create(artifact, &opts, &h), EH_BAD_ARGUMENT);
  expect("options_init", eh_options_init(&opts), EH_OK);
  check("options_init sets struct_size", opts.struct_size == sizeof(eh_options));
  check("options_init defaults (threads 2, depth_every 1, provider auto)",
        opts.threads == 2 && opts.depth_every == 1 && opts.provider && strcmp(opts.provider, "auto") == 0);
  opts.depth_every = 0;
  expect("depth_every 0", eh_create(artifact, &opts, &h), EH_BAD_ARGUMENT);
  eh_options_init(&opts);
  opts.provider = "no-such-provider";
  eh_status st = eh_create(artifact, &opts, &h);
  check("unknown provider is BAD_ARGUMENT or BACKEND_UNAVAILABLE",
        (st == EH_BAD_ARGUMENT || st == EH_BACKEND_UNAVAILABLE) && eh_last_error()[0] != '\0');
  eh_options_init(&opts);
  opts.spin = 7;
  expect("flag not 0/1", eh_create(artifact, &opts, &h), EH_BAD_ARGUMENT);
  eh_options_init(&opts);
  opts.temporal = 1.5;
  expect("temporal out of range", eh_create(artifact, &opts, &h), EH_BAD_ARGUMENT);
  check("the double reached the runtime", strstr(eh_last_error(), "1.5") != NULL);

  eh_options_init(&opts);
  opts.threads = 1;
  expect("create", eh_create(artifact, &opts, &h), EH_OK);
  eh_image in = image(frames, W, H), out = image(out_buf, W, H);

  eh_image tiny_in = image(frames, 4, 4), tiny_out = image(out_buf, 4, 4);
  expect("frame below the artifact's minimum size", eh_run(h, &tiny_in, &tiny_out), EH_SHAPE);
  eh_image small_out = image(out_buf, W - 1, H);
  expect("out of another size", eh_run(h, &in, &small_out), EH_SHAPE);
  eh_image bad = in;
  bad.row_stride = (int64_t)W * 3 - 1;
  expect("row stride below width*3", eh_run(h, &bad, &out), EH_BAD_ARGUMENT);
  bad.row_stride = (int64_t)W * 3 + 16;
  bad.height = H - 1;
  expect("padded row stride", eh_run(h, &bad, &out), EH_BAD_ARGUMENT);
  bad = in;
  bad.struct_size = 8;
  expect("image struct_size", eh_run(h, &bad, &out), EH_BAD_ARGUMENT);
  bad = in;
  bad.data = NULL;
  expect("no data pointer", eh_run(h, &bad, &out), EH_BAD_ARGUMENT);
  bad = in;
  bad.device_data = frames;
  expect("both host and device pointers", eh_run(h, &bad, &out), EH_BAD_ARGUMENT);
  bad = in;
  bad.data = NULL;
  bad.device_data = (void *)frames;  /* never dereferenced: the CPU backend refuses device memory */
  expect("device pointer on the CPU backend", eh_run(h, &bad, &out), EH_UNSUPPORTED);
  eh_channel_order order;
  expect("get channel order", eh_get_channel_order(h, &order), EH_OK);
  bad = in;
  bad.channel_order = order == EH_CHANNELS_RGB ? EH_CHANNELS_BGR : EH_CHANNELS_RGB;
  expect("channel order other than the artifact's", eh_run(h, &bad, &out), EH_BAD_ARGUMENT);
  expect("NULL in", eh_run(h, NULL, &out), EH_BAD_ARGUMENT);
  in.channel_order = order;
  expect("run (after failures, same handle)", eh_run(h, &in, &out), EH_OK);
  const char *name = NULL;
  expect("backend name", eh_get_backend_name(h, &name), EH_OK);
  check("backend name is onnxruntime's", name != NULL && strstr(name, "onnxruntime") != NULL);
  expect("not a handle", eh_run((eh_handle *)out_buf, &in, &out), EH_BAD_ARGUMENT);

  eh_handle *stale = h;
  expect("close", eh_close(&h), EH_OK);
  check("close sets the handle to NULL", h == NULL);
  expect("close again (idempotent)", eh_close(&h), EH_OK);
  expect("close a stale copy", eh_close(&stale), EH_OK);
  stale = NULL;
  expect("close(NULL)", eh_close(NULL), EH_BAD_ARGUMENT);
  expect("run after close (NULL handle)", eh_run(h, &in, &out), EH_CLOSED);
  expect("backend name after close", eh_get_backend_name(h, &name), EH_CLOSED);
}

int main(int argc, char **argv) {
  if (argc != 6) {
    fprintf(stderr, "usage: %s ARTIFACT FRAMES.raw WIDTH HEIGHT OUTDIR\n", argv[0]);
    return 2;
  }
  artifact = argv[1];
  W = atoi(argv[3]);
  H = atoi(argv[4]);
  const char *outdir = argv[5];
  NBYTES = (size_t)W * H * 3;
  frames = malloc(3 * NBYTES);
  FILE *f = fopen(argv[2], "rb");
  if (f == NULL || fread(frames, 1, 3 * NBYTES, f) != 3 * NBYTES) {
    fprintf(stderr, "capi_test: cannot read 3 frames from %s\n", argv[2]);
    return 2;
  }
  fclose(f);
  check("abi version matches the header", eh_abi_version() == EH_ABI_VERSION);
  check("no error before any call", eh_last_error()[0] == '\0');

  uint8_t *out = malloc(NBYTES);
  status_paths(out);

  eh_handle *h = NULL;
  eh_image in = image(frames, W, H), o = image(out, W, H);
  expect("create (defaults)", eh_create(artifact, NULL, &h), EH_OK);
  expect("run frame 0", eh_run(h, &in, &o), EH_OK);
  check("write single.raw", write_file(outdir, "single.raw", out, NBYTES) == 0);
  eh_close(&h);

  eh_options opts;
  eh_options_init(&opts);
  opts.threads = 1;
  opts.depth_every = 2;
  opts.graph_optimization = "basic";
  expect("create (depth_every 2, graph_optimization basic)", eh_create(artifact, &opts, &h), EH_OK);
  uint8_t *seq = malloc(3 * NBYTES);
  for (int i = 0; i < 3; i++) {
    eh_image fi = image(frames + (size_t)i * NBYTES, W, H), fo = image(seq + (size_t)i * NBYTES, W, H);
    expect("run sequence frame", eh_run(h, &fi, &fo), EH_OK);
  }
  check("write sequence.raw", write_file(outdir, "sequence.raw", seq, 3 * NBYTES) == 0);
  eh_close(&h);

  pthread_t threads[2];
  job jobs[2];
  for (int k = 0; k < 2; k++) {
    jobs[k].index = k;
    jobs[k].out = malloc(NBYTES);
    pthread_create(&threads[k], NULL, thread_main, &jobs[k]);
  }
  for (int k = 0; k < 2; k++) {
    pthread_join(threads[k], NULL);
    char name[32];
    snprintf(name, sizeof name, "thread%d.raw", k);
    check("thread ran 20 frames", jobs[k].status == EH_OK);
    check("thread output stable over 20 runs", jobs[k].stable);
    check("write thread output", write_file(outdir, name, jobs[k].out, NBYTES) == 0);
    free(jobs[k].out);
  }
  free(seq);
  free(out);
  free(frames);
  printf("%s: %d failure(s)\n", failures ? "FAILED" : "PASSED", failures);
  return failures ? 1 : 0;
}
