/*
 * edit.c: in-paint an image with libflowar. Loads a model folder that has a VAE encoder,
 * makes (or reads) a source image and a mask, regenerates what the mask marks, and writes
 * the source, the mask and each edit as binary PPM / PGM files (no dependencies).
 *
 * Build (from the repository root, after `cargo build --release -p flowar-capi`):
 *     cc examples/c/edit.c -Iinclude -Ltarget/release -lflowar \
 *        -Wl,-rpath,"$PWD/target/release" -o edit
 * Run:
 *     ./edit MODEL_DIR [OUT_DIR] [--provider P] [--steps N] [--seed N] [--cfg X]
 *            [--class N | --unconditional] [--image IN.ppm] [--mask IN.pgm] [--count N]
 *            [--keep-scales K] [--invert-mask] [--composite]
 * MODEL_DIR is a folder made by `flowar convert` with a VAE checkpoint that holds its
 * encoder. Without --image the source is a synthetic image of the model's size (a colour
 * gradient with a disc); without --mask the mask is a centred square over the middle half
 * (white = regenerate). Images of another size are fitted to the model's by the library;
 * a mask must be its image's size. OUT_DIR (default ".") receives source.ppm, mask.pgm
 * and edit-<j>.ppm for each of the --count edits (default 1) of class --class (default 0).
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "flowar.h"

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

/* Writes a binary PPM (channels 3) or PGM (channels 1). */
static int write_pnm(const char *path, const uint8_t *pixels, size_t width, size_t height,
                     int channels) {
  FILE *f = fopen(path, "wb");
  if (f == NULL) {
    fprintf(stderr, "error: cannot create %s: %s\n", path, strerror(errno));
    return 1;
  }
  fprintf(f, "P%d\n%zu %zu\n255\n", channels == 3 ? 6 : 5, width, height);
  size_t n = width * height * (size_t)channels;
  int bad = fwrite(pixels, 1, n, f) != n;
  bad |= fclose(f) != 0;
  if (bad) fprintf(stderr, "error: writing %s failed\n", path);
  return bad;
}

/* Reads one header number of a PNM file, skipping whitespace and # comments. */
static int pnm_number(FILE *f, size_t *out) {
  int c = fgetc(f);
  for (;;) {
    while (c == ' ' || c == '\t' || c == '\r' || c == '\n') c = fgetc(f);
    if (c != '#') break;
    while (c != '\n' && c != EOF) c = fgetc(f);
  }
  if (c < '0' || c > '9') return 1;
  size_t v = 0;
  while (c >= '0' && c <= '9') {
    if (v > 1000000) return 1;
    v = v * 10 + (size_t)(c - '0');
    c = fgetc(f);
  }
  *out = v;
  return 0; /* the single whitespace after the number is consumed */
}

/* Reads a binary PPM (channels 3, "P6") or PGM (channels 1, "P5") with maxval 255. */
static uint8_t *read_pnm(const char *path, int channels, size_t *width, size_t *height) {
  FILE *f = fopen(path, "rb");
  if (f == NULL) {
    fprintf(stderr, "error: cannot open %s: %s\n", path, strerror(errno));
    return NULL;
  }
  uint8_t *pixels = NULL;
  char magic[3] = {0};
  size_t maxval = 0;
  if (fread(magic, 1, 2, f) != 2 || magic[0] != 'P' || magic[1] != (channels == 3 ? '6' : '5') ||
      pnm_number(f, width) || pnm_number(f, height) || pnm_number(f, &maxval) ||
      maxval != 255 || *width == 0 || *height == 0) {
    fprintf(stderr, "error: %s is not a binary %s with maxval 255\n", path,
            channels == 3 ? "PPM (P6)" : "PGM (P5)");
    goto done;
  }
  size_t n = *width * *height * (size_t)channels;
  pixels = malloc(n);
  if (pixels == NULL || fread(pixels, 1, n, f) != n) {
    fprintf(stderr, "error: %s: truncated pixel data\n", path);
    free(pixels);
    pixels = NULL;
  }
done:
  fclose(f);
  return pixels;
}

/* A synthetic source: a colour gradient with a dark disc in the middle. */
static uint8_t *synthetic_image(size_t w, size_t h) {
  uint8_t *rgb = malloc(w * h * 3);
  if (rgb == NULL) return NULL;
  for (size_t y = 0; y < h; y++) {
    for (size_t x = 0; x < w; x++) {
      uint8_t *p = rgb + (y * w + x) * 3;
      long dx = (long)x - (long)w / 2, dy = (long)y - (long)h / 2;
      long r = (long)(w < h ? w : h) / 4;
      int in_disc = dx * dx + dy * dy <= r * r;
      p[0] = in_disc ? 40 : (uint8_t)(255 * x / w);
      p[1] = in_disc ? 30 : (uint8_t)(255 * y / h);
      p[2] = in_disc ? 60 : 160;
    }
  }
  return rgb;
}

/* A centred square over the middle half: 255 (regenerate) inside, 0 (keep) outside. */
static uint8_t *square_mask(size_t w, size_t h) {
  uint8_t *m = malloc(w * h);
  if (m == NULL) return NULL;
  for (size_t y = 0; y < h; y++)
    for (size_t x = 0; x < w; x++)
      m[y * w + x] = (x >= w / 4 && x < 3 * w / 4 && y >= h / 4 && y < 3 * h / 4) ? 255 : 0;
  return m;
}

static int usage(void) {
  fprintf(stderr,
          "usage: edit MODEL_DIR [OUT_DIR] [--provider P] [--steps N] [--seed N] [--cfg X] "
          "[--class N | --unconditional] [--image IN.ppm] [--mask IN.pgm] [--count N] "
          "[--keep-scales K] [--invert-mask] [--composite]\n");
  return 2;
}

int main(int argc, char **argv) {
  const char *model_dir = NULL, *out_dir = ".", *provider = "auto";
  const char *steps = NULL, *seed = "0", *cfg = NULL, *class_id = "0";
  const char *image_path = NULL, *mask_path = NULL, *count_text = "1", *keep = NULL;
  int unconditional = 0, invert = 0, composite = 0;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    const char **opt = strcmp(a, "--provider") == 0      ? &provider
                       : strcmp(a, "--steps") == 0       ? &steps
                       : strcmp(a, "--seed") == 0        ? &seed
                       : strcmp(a, "--cfg") == 0         ? &cfg
                       : strcmp(a, "--class") == 0       ? &class_id
                       : strcmp(a, "--image") == 0       ? &image_path
                       : strcmp(a, "--mask") == 0        ? &mask_path
                       : strcmp(a, "--count") == 0       ? &count_text
                       : strcmp(a, "--keep-scales") == 0 ? &keep
                                                         : NULL;
    if (opt != NULL) {
      if (++i == argc) return usage();
      *opt = argv[i];
    } else if (strcmp(a, "--unconditional") == 0) {
      unconditional = 1;
    } else if (strcmp(a, "--invert-mask") == 0) {
      invert = 1;
    } else if (strcmp(a, "--composite") == 0) {
      composite = 1;
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
  uint8_t *source = NULL, *mask = NULL, *rgb = NULL;
  int rc = 1;

  if (report(flowar_options_create(&opts), "options")) goto done;
  if (report(flowar_options_set(opts, "provider", provider), "provider")) goto done;
  if (report(flowar_pipeline_create(model_dir, opts, &pipe), "loading the model")) goto done;

  size_t width = 0, height = 0, num_scales = 0;
  const char *used = NULL;
  if (report(flowar_pipeline_image_width(pipe, &width), "width") ||
      report(flowar_pipeline_image_height(pipe, &height), "height") ||
      report(flowar_pipeline_num_scales(pipe, &num_scales), "scales") ||
      report(flowar_pipeline_provider(pipe, &used), "provider"))
    goto done;
  printf("model %s: %zux%zu images, %zu scales, provider %s\n", model_dir, width, height,
         num_scales, used);

  /* The source image and its mask: read, or made here at the model's size. */
  size_t sw = width, sh = height, mw = 0, mh = 0;
  source = image_path ? read_pnm(image_path, 3, &sw, &sh) : synthetic_image(sw, sh);
  if (source == NULL) goto done;
  if (mask_path != NULL) {
    mask = read_pnm(mask_path, 1, &mw, &mh);
  } else {
    mw = sw;
    mh = sh;
    mask = square_mask(mw, mh);
  }
  if (mask == NULL) goto done;
  char path[4096];
  snprintf(path, sizeof path, "%s/source.ppm", out_dir);
  if (write_pnm(path, source, sw, sh, 3) != 0) goto done;
  snprintf(path, sizeof path, "%s/mask.pgm", out_dir);
  if (write_pnm(path, mask, mw, mh, 1) != 0) goto done;

  /* The request: the image (copied by the library) plus the edit settings. */
  if (report(flowar_request_create(&req), "request") ||
      report(flowar_request_add_edit_image(req, source, sw * sh * 3, sw, sh, 3, mask, mw * mh,
                                           mw, mh),
             "edit image") ||
      report(flowar_request_set(req, "seed", seed), "seed") ||
      report(flowar_request_set(req, "count", count_text), "count") ||
      (steps && report(flowar_request_set(req, "steps", steps), "steps")) ||
      (cfg && report(flowar_request_set(req, "cfg", cfg), "cfg")) ||
      (keep && report(flowar_request_set(req, "keep_scales", keep), "keep_scales")) ||
      report(flowar_request_set_int(req, "invert_mask", invert), "invert_mask") ||
      report(flowar_request_set_int(req, "composite", composite), "composite"))
    goto done;
  if (unconditional) {
    if (report(flowar_request_set_int(req, "unconditional", 1), "unconditional")) goto done;
  } else {
    char *end = NULL;
    long v = strtol(class_id, &end, 10);
    if (end == class_id || *end != '\0') {
      rc = usage();
      goto done;
    }
    int32_t classes[1] = {(int32_t)v};
    if (report(flowar_request_set_classes(req, classes, 1), "class")) goto done;
  }

  size_t count = 0, len = 0;
  if (report(flowar_request_image_count(req, &count), "image count") ||
      report(flowar_pipeline_buffer_size(pipe, count, &len), "buffer size"))
    goto done;
  rgb = malloc(len);
  if (rgb == NULL) {
    fprintf(stderr, "error: out of memory\n");
    goto done;
  }
  printf("editing a %zux%zu image: %zu edit(s)%s%s\n", sw, sh, count,
         invert ? ", mask inverted" : "", composite ? ", composited" : "");
  fflush(stdout);
  if (report(flowar_pipeline_generate(pipe, req, rgb, len, on_progress, &num_scales),
             "editing"))
    goto done;

  rc = 0;
  for (size_t j = 0; j < count; j++) {
    snprintf(path, sizeof path, "%s/edit-%zu.ppm", out_dir, j);
    if (write_pnm(path, rgb + j * width * height * 3, width, height, 3) != 0) {
      rc = 1;
      break;
    }
    printf("wrote %s\n", path);
  }

done:
  free(rgb);
  free(mask);
  free(source);
  flowar_request_destroy(&req);
  flowar_pipeline_destroy(&pipe);
  flowar_options_destroy(&opts);
  return rc;
}
