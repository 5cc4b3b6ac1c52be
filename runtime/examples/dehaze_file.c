/* dehaze_file: read one raw frame, dehaze it with an edgehaze artifact, write the raw result.
 *
 *   dehaze_file MODEL.onnx IN.raw OUT.raw WIDTH HEIGHT
 *
 * IN.raw is WIDTH*HEIGHT*3 bytes, rows top to bottom, 3 interleaved uint8 channels in the
 * artifact's channel order (the program prints it); OUT.raw is written the same way.
 * Build (after `python runtime/capi/build.py --out DIR`):
 *   gcc -O2 runtime/examples/dehaze_file.c -IDIR/include -LDIR -ledgehaze_runtime -Wl,-rpath,DIR -o dehaze_file
 */
#include <stdio.h>
#include <stdlib.h>

#include "edgehaze_runtime.h"

static int fail(const char *what, eh_status status) {
  fprintf(stderr, "dehaze_file: %s failed with status %d: %s\n", what, (int)status, eh_last_error());
  return 1;
}

int main(int argc, char **argv) {
  if (argc != 6) {
    fprintf(stderr, "usage: %s MODEL IN.raw OUT.raw WIDTH HEIGHT\n", argv[0]);
    return 2;
  }
  if (eh_abi_version() != EH_ABI_VERSION) {
    fprintf(stderr, "dehaze_file: library ABI %u, header %u: rebuild against the library's header\n",
            eh_abi_version(), EH_ABI_VERSION);
    return 1;
  }
  const int width = atoi(argv[4]), height = atoi(argv[5]);
  if (width < 1 || height < 1) {
    fprintf(stderr, "dehaze_file: WIDTH and HEIGHT must be positive, got %s %s\n", argv[4], argv[5]);
    return 2;
  }
  const size_t nbytes = (size_t)width * (size_t)height * 3;
  uint8_t *frame = malloc(nbytes), *result = malloc(nbytes);
  if (frame == NULL || result == NULL) {
    fprintf(stderr, "dehaze_file: out of memory for a %dx%d frame\n", width, height);
    return 1;
  }
  FILE *f = fopen(argv[2], "rb");
  if (f == NULL || fread(frame, 1, nbytes, f) != nbytes) {
    fprintf(stderr, "dehaze_file: %s: cannot read %zu bytes (a %dx%d raw frame)\n", argv[2], nbytes, width, height);
    return 1;
  }
  fclose(f);

  eh_options opts;
  eh_status st = eh_options_init(&opts);  /* the Python runtime's defaults */
  if (st != EH_OK) return fail("eh_options_init", st);
  opts.threads = 2;

  eh_handle *handle = NULL;
  st = eh_create(argv[1], &opts, &handle);
  if (st != EH_OK) return fail("eh_create", st);

  const char *backend = NULL;
  eh_channel_order order = EH_CHANNELS_ARTIFACT;
  if ((st = eh_get_backend_name(handle, &backend)) != EH_OK) return fail("eh_get_backend_name", st);
  if ((st = eh_get_channel_order(handle, &order)) != EH_OK) return fail("eh_get_channel_order", st);
  printf("backend %s, channel order %s\n", backend, order == EH_CHANNELS_BGR ? "BGR" : "RGB");

  eh_image in = EH_IMAGE_INIT, out = EH_IMAGE_INIT;
  in.data = frame;
  out.data = result;
  in.width = out.width = width;
  in.height = out.height = height;
  in.row_stride = out.row_stride = (int64_t)width * 3;
  st = eh_run(handle, &in, &out);
  if (st != EH_OK) return fail("eh_run", st);
  eh_close(&handle);  /* frees the handle and sets it to NULL */

  f = fopen(argv[3], "wb");
  if (f == NULL || fwrite(result, 1, nbytes, f) != nbytes || fclose(f) != 0) {
    fprintf(stderr, "dehaze_file: %s: cannot write the result\n", argv[3]);
    return 1;
  }
  free(frame);
  free(result);
  return 0;
}
