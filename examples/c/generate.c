/*
 * generate.c: load a FlowAR model folder with libflowar, generate one image per class
 * with a progress printout, and write each image as a binary PPM file (no dependencies).
 *
 * Build (from the repository root, after `cargo build --release -p flowar-capi`):
 *     cc examples/c/generate.c -Iinclude -Ltarget/release -lflowar \
 *        -Wl,-rpath,"$PWD/target/release" -o generate
 * Run:
 *     ./generate MODEL_DIR [OUT_DIR] [--provider P] [--steps N] [--seed N] [--cfg X]
 *                [--classes A,B,C]
 * MODEL_DIR is a folder made by `flowar convert`; OUT_DIR (default ".") receives
 * class-<id>.ppm per image. Without --classes, the first 4 classes are generated.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "flowar.h"

#define MAX_CLASSES 64

/* Prints a failed status, frees it, and returns 1 (0 for success). */
static int report(FlowarStatus *st, const char *what) {
  if (st == NULL) return 0;
  fprintf(stderr, "error: %s: [code %d] %s\n", what, (int)flowar_status_code(st),
          flowar_status_message(st));
  flowar_status_destroy(&st);
  return 1;
}

/* The progress callback: one line per scale, a dot per step. Returning 0 continues. */
static int on_progress(int scale, int step, int total_steps, void *user_data) {
  const size_t *num_scales = (const size_t *)user_data;
  if (step == 1) fprintf(stderr, "  scale %d/%zu ", scale + 1, *num_scales);
  fputc('.', stderr);
  if (step == total_steps) fputc('\n', stderr);
  return 0;
}

static int write_ppm(const char *path, const uint8_t *rgb, size_t width, size_t height) {
  FILE *f = fopen(path, "wb");
  if (f == NULL) {
    fprintf(stderr, "error: cannot create %s: %s\n", path, strerror(errno));
    return 1;
  }
  fprintf(f, "P6\n%zu %zu\n255\n", width, height);
  size_t n = width * height * 3;
  int bad = fwrite(rgb, 1, n, f) != n;
  bad |= fclose(f) != 0;
  if (bad) fprintf(stderr, "error: writing %s failed\n", path);
  return bad;
}

static int usage(void) {
  fprintf(stderr,
          "usage: generate MODEL_DIR [OUT_DIR] [--provider P] [--steps N] [--seed N] "
          "[--cfg X] [--classes A,B,C]\n");
  return 2;
}

int main(int argc, char **argv) {
  const char *model_dir = NULL, *out_dir = ".", *provider = "auto";
  const char *steps = NULL, *seed = "0", *cfg = NULL, *class_list = NULL;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    const char **opt = strcmp(a, "--provider") == 0 ? &provider
                       : strcmp(a, "--steps") == 0  ? &steps
                       : strcmp(a, "--seed") == 0   ? &seed
                       : strcmp(a, "--cfg") == 0    ? &cfg
                       : strcmp(a, "--classes") == 0 ? &class_list
                                                    : NULL;
    if (opt != NULL) {
      if (++i == argc) return usage();
      *opt = argv[i];
    } else if (a[0] == '-') {
      return usage();
    } else if (model_dir == NULL) {
      model_dir = a;
    } else {
      out_dir = a;
    }
  }
  if (model_dir == NULL) return usage();
  printf("libflowar %s\n", flowar_version());

  FlowarOptions *opts = NULL;
  FlowarPipeline *pipe = NULL;
  FlowarRequest *req = NULL;
  uint8_t *rgb = NULL;
  int rc = 1;

  if (report(flowar_options_create(&opts), "options")) goto done;
  if (report(flowar_options_set(opts, "provider", provider), "provider")) goto done;
  if (report(flowar_pipeline_create(model_dir, opts, &pipe), "loading the model")) goto done;

  size_t width = 0, height = 0, num_classes = 0, num_scales = 0;
  const char *used = NULL;
  if (report(flowar_pipeline_image_width(pipe, &width), "width") ||
      report(flowar_pipeline_image_height(pipe, &height), "height") ||
      report(flowar_pipeline_num_classes(pipe, &num_classes), "classes") ||
      report(flowar_pipeline_num_scales(pipe, &num_scales), "scales") ||
      report(flowar_pipeline_provider(pipe, &used), "provider"))
    goto done;
  printf("model %s: %zux%zu images, %zu classes, %zu scales, provider %s\n", model_dir,
         width, height, num_classes, num_scales, used);

  int32_t classes[MAX_CLASSES];
  size_t count = 0;
  if (class_list != NULL) {
    const char *p = class_list;
    while (*p != '\0' && count < MAX_CLASSES) {
      char *end = NULL;
      long v = strtol(p, &end, 10);
      if (end == p) {
        rc = usage();
        goto done;
      }
      classes[count++] = (int32_t)v;
      p = *end == ',' ? end + 1 : end;
    }
  } else {
    for (; count < 4 && count < num_classes; count++) classes[count] = (int32_t)count;
  }

  if (report(flowar_request_create(&req), "request") ||
      report(flowar_request_set_classes(req, classes, count), "classes") ||
      report(flowar_request_set(req, "seed", seed), "seed") ||
      (steps && report(flowar_request_set(req, "steps", steps), "steps")) ||
      (cfg && report(flowar_request_set(req, "cfg", cfg), "cfg")))
    goto done;

  size_t len = 0;
  if (report(flowar_pipeline_buffer_size(pipe, count, &len), "buffer size")) goto done;
  rgb = malloc(len);
  if (rgb == NULL) {
    fprintf(stderr, "error: out of memory\n");
    goto done;
  }
  printf("generating %zu images\n", count);
  fflush(stdout);
  if (report(flowar_pipeline_generate(pipe, req, rgb, len, on_progress, &num_scales),
             "generating"))
    goto done;

  rc = 0;
  for (size_t i = 0; i < count; i++) {
    char path[4096];
    snprintf(path, sizeof path, "%s/class-%d.ppm", out_dir, (int)classes[i]);
    if (write_ppm(path, rgb + i * width * height * 3, width, height) != 0) {
      rc = 1;
      break;
    }
    printf("wrote %s\n", path);
  }

done:
  free(rgb);
  flowar_request_destroy(&req);
  flowar_pipeline_destroy(&pipe);
  flowar_options_destroy(&opts);
  return rc;
}
