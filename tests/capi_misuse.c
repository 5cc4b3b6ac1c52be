/* The C API misused the ways a host will (tests/test_capi.py compiles and runs it, under ASan where it can):
 *
 *   capi_misuse threads ARTIFACT FRAMES.raw WIDTH HEIGHT N   one handle, two threads, N frames each
 *   capi_misuse stale ARTIFACT CYCLES                         stale copies across CYCLES create/close cycles
 *   capi_misuse structs ARTIFACT WIDTH HEIGHT                 struct_size rules, option bounds, channel order -1
 *   capi_misuse open PATH                                     one eh_create: prints "status N: message"
 *
 * FRAMES.raw holds 2 frames (WIDTH x HEIGHT x 3 uint8). Prints one line per check and exits 1 when
 * any check failed.
 */
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "edgehaze_runtime.h"

static int failures = 0;

static void check(const char *name, int ok) {
  printf("%s %s\n", ok ? "ok" : "FAIL", name);
  if (!ok) failures++;
}

/* status must equal want; a failure must leave a message, a success none */
static void expect(const char *name, eh_status got, eh_status want) {
  const char *msg = eh_last_error();
  int ok = got == want && (want == EH_OK ? msg[0] == '\0' : msg[0] != '\0');
  printf("%s %s: status %d (want %d) last_error \"%s\"\n", ok ? "ok" : "FAIL", name, (int)got, (int)want, msg);
  if (!ok) failures++;
}

static eh_image image(uint8_t *data, int w, int h) {
  eh_image img = EH_IMAGE_INIT;
  img.data = data;
  img.width = w;
  img.height = h;
  return img;
}

static int finish(void) {
  printf("%s: %d failure(s)\n", failures ? "FAILED" : "PASSED", failures);
  return failures ? 1 : 0;
}

/* -- threads: two threads hammer one handle ---------------------------------------------------------- */

typedef struct {
  eh_handle *handle; /* each thread's own copy of the shared handle */
  const uint8_t *in;
  const uint8_t *want;
  int w, h, n;
  int ok, wrong, closed, other;
  int stop_when_closed; /* run until the first EH_CLOSED (at most n calls) */
} worker;

static void *hammer(void *arg) {
  worker *k = arg;
  size_t nbytes = (size_t)k->w * k->h * 3;
  uint8_t *out = malloc(nbytes);
  eh_image in = image((uint8_t *)k->in, k->w, k->h), o = image(out, k->w, k->h);
  for (int i = 0; i < k->n; i++) {
    memset(out, 0, nbytes);
    eh_status st = eh_run(k->handle, &in, &o);
    if (st == EH_OK) {
      if (memcmp(out, k->want, nbytes) == 0) __atomic_add_fetch(&k->ok, 1, __ATOMIC_RELAXED);
      else k->wrong++;
    } else if (st == EH_CLOSED) {
      k->closed++;
      if (k->stop_when_closed) break;
    } else {
      k->other++;
    }
  }
  free(out);
  return NULL;
}

static int run_threads(const char *art, const char *frames_path, int w, int ht, int n) {
  size_t nbytes = (size_t)w * ht * 3;
  uint8_t *frames = malloc(2 * nbytes), *want = malloc(2 * nbytes);
  FILE *f = fopen(frames_path, "rb");
  if (f == NULL || fread(frames, 1, 2 * nbytes, f) != 2 * nbytes) {
    fprintf(stderr, "capi_misuse: cannot read 2 frames from %s\n", frames_path);
    return 2;
  }
  fclose(f);
  eh_options opts;
  eh_options_init(&opts);
  opts.threads = 1;
  eh_handle *h = NULL;
  expect("create", eh_create(art, &opts, &h), EH_OK);
  for (int k = 0; k < 2; k++) {  /* what each frame gives on one thread */
    eh_image in = image(frames + k * nbytes, w, ht), o = image(want + k * nbytes, w, ht);
    expect("reference run", eh_run(h, &in, &o), EH_OK);
  }
  check("the two frames give different outputs", memcmp(want, want + nbytes, nbytes) != 0);

  worker jobs[2];
  pthread_t threads[2];
  for (int k = 0; k < 2; k++) {
    jobs[k] = (worker){h, frames + k * nbytes, want + k * nbytes, w, ht, n, 0, 0, 0, 0, 0};
    pthread_create(&threads[k], NULL, hammer, &jobs[k]);
  }
  for (int k = 0; k < 2; k++) pthread_join(threads[k], NULL);
  for (int k = 0; k < 2; k++) {
    printf("thread %d: %d ok, %d wrong, %d closed, %d other\n", k, jobs[k].ok, jobs[k].wrong, jobs[k].closed,
           jobs[k].other);
    check("shared handle: every frame EH_OK with its own bytes", jobs[k].ok == n && jobs[k].wrong == 0);
  }

  /* eh_close while the other thread runs: its calls finish (right bytes), then read EH_CLOSED */
  /* the worker keeps calling until it sees EH_CLOSED: on a loaded machine a mutex need not be fair, so the
     close may only get the handle after many more calls than n */
  jobs[0] = (worker){h, frames, want, w, ht, 1000000, 0, 0, 0, 0, 1};
  pthread_create(&threads[0], NULL, hammer, &jobs[0]);
  while (__atomic_load_n(&jobs[0].ok, __ATOMIC_RELAXED) < 5) sched_yield();
  expect("close while another thread runs on the handle", eh_close(&h), EH_OK);
  pthread_join(threads[0], NULL);
  printf("closed mid-run: %d ok, %d wrong, %d closed, %d other\n", jobs[0].ok, jobs[0].wrong, jobs[0].closed,
         jobs[0].other);
  check("close mid-run: no wrong bytes, the rest EH_CLOSED",
        jobs[0].wrong == 0 && jobs[0].other == 0 && jobs[0].ok >= 5 && jobs[0].closed == 1);
  free(frames);
  free(want);
  return finish();
}

/* -- stale: copies of closed handles stay EH_CLOSED --------------------------------------------------- */

static int run_stale(const char *art, int cycles) {
  static const int at[] = {0, 1, 2, 3, 100, 1000, 4095, 4097};  /* cycles whose handle is kept as a stale copy */
  enum { NSTALE = sizeof at / sizeof at[0] };
  eh_options opts;
  eh_options_init(&opts);
  opts.threads = 1;
  opts.graph_optimization = "disable";
  eh_handle *h = NULL, *stale[NSTALE];
  int taken = 0, not_closed = 0, closed_live = 0;
  eh_channel_order order;
  uint8_t px[8 * 8 * 3] = {0}, out[8 * 8 * 3];
  eh_image in = image(px, 8, 8), o = image(out, 8, 8);
  for (int i = 0; i <= cycles; i++) {
    eh_status st = eh_create(art, &opts, &h);
    if (st != EH_OK) {
      expect("create in the cycle", st, EH_OK);
      return finish();
    }
    /* right after each create: every stale copy is still EH_CLOSED, and closing a copy of it leaves the
       new handle open (an address scheme hands the new handle a stale copy's value) */
    for (int k = 0; k < taken; k++) {
      if (eh_get_channel_order(stale[k], &order) != EH_CLOSED) not_closed++;
      eh_handle *copy = stale[k];
      eh_close(&copy);
      if (eh_get_channel_order(h, &order) != EH_OK) closed_live++;
    }
    if (taken < NSTALE && i == at[taken]) stale[taken++] = h;
    if (i < cycles) eh_close(&h);
  }
  printf("%d cycles, %d stale copies: %d calls on a stale copy not EH_CLOSED, %d live handles closed through one\n",
         cycles, taken, not_closed, closed_live);
  check("stale copies stay EH_CLOSED through every create", not_closed == 0);
  check("closing a stale copy never closes the live handle", closed_live == 0);
  expect("the live handle runs", eh_run(h, &in, &o), EH_OK);
  const char *name = NULL;
  for (int k = 0; k < taken; k++) {
    char what[96];
    snprintf(what, sizeof what, "stale copy of cycle %d: run", at[k]);
    expect(what, eh_run(stale[k], &in, &o), EH_CLOSED);
    snprintf(what, sizeof what, "stale copy of cycle %d: backend name", at[k]);
    expect(what, eh_get_backend_name(stale[k], &name), EH_CLOSED);
    snprintf(what, sizeof what, "stale copy of cycle %d: close (idempotent, nulls it)", at[k]);
    expect(what, eh_close(&stale[k]), EH_OK);
    check("close nulls the stale copy", stale[k] == NULL);
  }
  expect("the live handle still runs", eh_run(h, &in, &o), EH_OK);
  eh_handle *forged = (eh_handle *)((uintptr_t)h + ((uintptr_t)1 << 36));  /* a serial never issued */
  expect("a handle with a serial never issued", eh_run(forged, &in, &o), EH_BAD_ARGUMENT);
  expect("an address that is no handle", eh_run((eh_handle *)px, &in, &o), EH_BAD_ARGUMENT);
  expect("close", eh_close(&h), EH_OK);
  return finish();
}

/* -- structs: struct_size rules, option bounds ----------------------------------------------------- */

static int run_structs(const char *art, int w, int h_) {
  size_t nbytes = (size_t)w * h_ * 3;
  uint8_t *px = calloc(nbytes, 1), *out = malloc(nbytes), *want = malloc(nbytes);
  eh_handle *h = NULL;
  eh_options opts;

  eh_options_init(&opts);
  opts.struct_size = 1;
  expect("eh_options.struct_size 1 (smaller than the field)", eh_create(art, &opts, &h), EH_BAD_ARGUMENT);
  eh_options_init(&opts);
  opts.threads = 100000;
  expect("threads 100000", eh_create(art, &opts, &h), EH_BAD_ARGUMENT);
  check("the message names threads and the bound", strstr(eh_last_error(), "threads") != NULL &&
                                                      strstr(eh_last_error(), "100000") != NULL);
  eh_options_init(&opts);
  opts.inter_op_threads = -5;
  expect("inter_op_threads -5", eh_create(art, &opts, &h), EH_BAD_ARGUMENT);
  eh_options_init(&opts);
  opts.threads = -1;
  expect("threads -1", eh_create(art, &opts, &h), EH_BAD_ARGUMENT);
  eh_options_init(&opts);
  opts.bypass = 2;
  expect("bypass 2 (flags are 0 or 1)", eh_create(art, &opts, &h), EH_BAD_ARGUMENT);

  /* an older caller's smaller eh_options (without bypass): defaults for what it does not reach */
  eh_options_init(&opts);
  opts.struct_size = offsetof(eh_options, bypass);
  opts.bypass = 7;  /* past struct_size: never read */
  opts.threads = 1;
  expect("older (smaller) eh_options", eh_create(art, &opts, &h), EH_OK);
  eh_close(&h);
  /* a newer caller's larger eh_options: fine while the fields this library lacks are zero */
  struct {
    eh_options base;
    int64_t future[2];
  } big;
  memset(&big, 0, sizeof big);
  eh_options_init(&big.base);
  big.base.struct_size = sizeof big;
  big.base.threads = 1;
  expect("newer (larger) eh_options, new fields zero", eh_create(art, &big.base, &h), EH_OK);
  eh_close(&h);
  big.future[1] = 1;
  expect("newer eh_options with a new field set", eh_create(art, &big.base, &h), EH_BAD_ARGUMENT);

  eh_options_init(&opts);
  opts.threads = 1;
  expect("create", eh_create(art, &opts, &h), EH_OK);
  eh_image in = image(px, w, h_), o = image(want, w, h_);
  expect("run (today's eh_image)", eh_run(h, &in, &o), EH_OK);
  o = image(out, w, h_);

  eh_image bad = in;
  bad.struct_size = 1;
  expect("eh_image.struct_size 1", eh_run(h, &bad, &o), EH_BAD_ARGUMENT);
  bad.struct_size = 0;
  expect("eh_image.struct_size 0", eh_run(h, &bad, &o), EH_BAD_ARGUMENT);
  bad.struct_size = offsetof(eh_image, width);
  expect("eh_image.struct_size ending before width", eh_run(h, &bad, &o), EH_BAD_ARGUMENT);
  check("the message names the missing field", strstr(eh_last_error(), "width") != NULL);

  eh_image older = in;  /* an older caller's eh_image without channel_order: EH_CHANNELS_ARTIFACT */
  older.struct_size = offsetof(eh_image, channel_order);
  older.channel_order = (eh_channel_order)77;  /* past struct_size: never read */
  memset(out, 0, nbytes);
  expect("older (smaller) eh_image", eh_run(h, &older, &o), EH_OK);
  check("older eh_image: same bytes", memcmp(out, want, nbytes) == 0);

  struct {
    eh_image base;
    int64_t future[2];
  } bigimg;
  memset(&bigimg, 0, sizeof bigimg);
  bigimg.base = in;
  bigimg.base.struct_size = sizeof bigimg;
  memset(out, 0, nbytes);
  expect("newer (larger) eh_image, new fields zero", eh_run(h, &bigimg.base, &o), EH_OK);
  check("newer eh_image: same bytes", memcmp(out, want, nbytes) == 0);
  bigimg.future[0] = 5;
  expect("newer eh_image with a new field set", eh_run(h, &bigimg.base, &o), EH_BAD_ARGUMENT);

  bad = in;
  bad.channel_order = (eh_channel_order)-1;
  expect("channel_order -1", eh_run(h, &bad, &o), EH_BAD_ARGUMENT);
  check("-1 is printed as -1", strstr(eh_last_error(), "is -1") != NULL &&
                                   strstr(eh_last_error(), "4294967295") == NULL);
  expect("close", eh_close(&h), EH_OK);
  free(px);
  free(out);
  free(want);
  return finish();
}

int main(int argc, char **argv) {
  if (argc == 7 && strcmp(argv[1], "threads") == 0)
    return run_threads(argv[2], argv[3], atoi(argv[4]), atoi(argv[5]), atoi(argv[6]));
  if (argc == 4 && strcmp(argv[1], "stale") == 0) return run_stale(argv[2], atoi(argv[3]));
  if (argc == 5 && strcmp(argv[1], "structs") == 0) return run_structs(argv[2], atoi(argv[3]), atoi(argv[4]));
  if (argc == 3 && strcmp(argv[1], "open") == 0) {
    eh_handle *h = NULL;
    eh_status st = eh_create(argv[2], NULL, &h);
    printf("status %d: %s\n", (int)st, eh_last_error());
    if (st == EH_OK) {
      const char *name = NULL;
      eh_get_backend_name(h, &name);
      printf("backend %s\n", name);
      eh_close(&h);
    }
    return st == EH_OK ? 0 : 1;
  }
  fprintf(stderr, "usage: capi_misuse threads ART FRAMES.raw W H N | stale ART CYCLES | "
                  "structs ART W H | open PATH\n");
  return 2;
}
