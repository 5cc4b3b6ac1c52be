/* Times eh_run per frame for benchmarks/capi_overhead.py: prints one duration (ns) per line.
 *
 *   capi_overhead MODEL WIDTH HEIGHT FRAMES WARMUP THREADS
 */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "edgehaze_runtime.h"

static long long now_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (long long)t.tv_sec * 1000000000LL + t.tv_nsec;
}

int main(int argc, char **argv) {
  if (argc != 7) {
    fprintf(stderr, "usage: %s MODEL WIDTH HEIGHT FRAMES WARMUP THREADS\n", argv[0]);
    return 2;
  }
  const int w = atoi(argv[2]), h = atoi(argv[3]), n = atoi(argv[4]), warm = atoi(argv[5]);
  const size_t nbytes = (size_t)w * h * 3;
  uint8_t *frame = malloc(nbytes), *out = malloc(nbytes);
  srand(7);
  for (size_t i = 0; i < nbytes; i++) frame[i] = (uint8_t)(rand() & 0xff);
  eh_options opts;
  eh_handle *handle = NULL;
  if (eh_options_init(&opts) != EH_OK) goto fail;
  opts.threads = atoi(argv[6]);
  if (eh_create(argv[1], &opts, &handle) != EH_OK) goto fail;
  eh_image in = EH_IMAGE_INIT, o = EH_IMAGE_INIT;
  in.data = frame;
  o.data = out;
  in.width = o.width = w;
  in.height = o.height = h;
  for (int i = 0; i < warm + n; i++) {
    long long t0 = now_ns();
    if (eh_run(handle, &in, &o) != EH_OK) goto fail;
    long long dt = now_ns() - t0;
    if (i >= warm) printf("%lld\n", dt);
  }
  eh_close(&handle);
  free(frame);
  free(out);
  return 0;
fail:
  fprintf(stderr, "capi_overhead: %s\n", eh_last_error());
  return 1;
}
