/*
 * test_errors.c: drives libflowar's error paths from C and checks codes and messages,
 * then runs two pipelines on two threads at once. Run by capi/tests/c_api.rs (also under
 * valgrind). Usage: test_errors MODEL_DIR [--light] [--edit EDIT_MODEL_DIR]
 *
 * MODEL_DIR has no VAE encoder (edits on it are refused); EDIT_MODEL_DIR has one: with
 * --edit, the edit errors that need a model that can edit are checked there, and an
 * in-painting runs (composited: the unmasked pixels must be the source's).
 *
 * --light (used under valgrind, where the 256x256 VAE decode alone takes minutes) never
 * decodes: the runs that complete natively are cancelled at the last step of the third
 * scale instead, and the checks on finished pixels are skipped. Every error path, the
 * callback and two concurrent pipelines still run; the in-painting encodes its image and
 * is cancelled at its first step.
 *
 * Exits 0 when every check passes; prints "N passed, N failed" at the end.
 */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "flowar.h"

static int passed = 0, failed = 0;

#define CHECK(cond, ...)                                     \
  do {                                                       \
    if (cond) {                                              \
      passed++;                                              \
    } else {                                                 \
      failed++;                                              \
      fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);   \
      fprintf(stderr, __VA_ARGS__);                          \
      fputc('\n', stderr);                                   \
    }                                                        \
  } while (0)

/* Checks that `st` failed with `code` and a message containing `needle`; frees it. */
static void expect_err_at(FlowarStatus *st, FlowarCode code, const char *needle,
                          const char *expr, int line) {
  if (st == NULL) {
    failed++;
    fprintf(stderr, "FAIL line %d: %s succeeded, expected code %d\n", line, expr, (int)code);
    return;
  }
  const char *msg = flowar_status_message(st);
  int ok = flowar_status_code(st) == code && msg != NULL && strstr(msg, needle) != NULL;
  if (ok) {
    passed++;
  } else {
    failed++;
    fprintf(stderr, "FAIL line %d: %s gave code %d \"%s\", expected code %d containing \"%s\"\n",
            line, expr, (int)flowar_status_code(st), msg ? msg : "(null)", (int)code, needle);
  }
  flowar_status_destroy(&st);
  CHECK(st == NULL, "flowar_status_destroy must null the pointer");
}
#define EXPECT_ERR(call, code, needle) expect_err_at((call), (code), (needle), #call, __LINE__)

/* Checks success; on failure prints the message and frees the status. */
static int expect_ok_at(FlowarStatus *st, const char *expr, int line) {
  if (st == NULL) {
    passed++;
    return 1;
  }
  failed++;
  fprintf(stderr, "FAIL line %d: %s: [%d] %s\n", line, expr, (int)flowar_status_code(st),
          flowar_status_message(st));
  flowar_status_destroy(&st);
  return 0;
}
#define EXPECT_OK(call) expect_ok_at((call), #call, __LINE__)

typedef struct {
  int calls;
  int cancel_at_scale; /* cancel at step 1 of this scale; -1 never */
  int cancel_at_end;   /* cancel at the last step of this scale; -1 never */
  int last_scale, last_step, last_total;
  int bad_order;
} Progress;

static int on_progress(int scale, int step, int total_steps, void *user_data) {
  Progress *p = (Progress *)user_data;
  p->calls++;
  if (step < 1 || step > total_steps || scale < p->last_scale) p->bad_order = 1;
  p->last_scale = scale;
  p->last_step = step;
  p->last_total = total_steps;
  return (scale == p->cancel_at_scale && step == 1) ||
         (scale == p->cancel_at_end && step == total_steps);
}

static FlowarPipeline *load(const char *dir) {
  FlowarOptions *opts = NULL;
  FlowarPipeline *pipe = NULL;
  EXPECT_OK(flowar_options_create(&opts));
  EXPECT_OK(flowar_options_set(opts, "provider", "tract"));
  EXPECT_OK(flowar_pipeline_create(dir, opts, &pipe));
  flowar_options_destroy(&opts);
  return pipe;
}

/* A small, fast request: one or two images, 2 steps, no guidance. */
static FlowarRequest *small_request(const int32_t *classes, size_t n, int64_t seed) {
  FlowarRequest *req = NULL;
  EXPECT_OK(flowar_request_create(&req));
  EXPECT_OK(flowar_request_set_classes(req, classes, n));
  EXPECT_OK(flowar_request_set_int(req, "seed", seed));
  EXPECT_OK(flowar_request_set(req, "steps", "2"));
  EXPECT_OK(flowar_request_set_float(req, "cfg", 1.0));
  return req;
}

typedef struct {
  FlowarPipeline *pipe;
  FlowarRequest *req;
  uint8_t *buf;
  size_t len;
  FlowarStatus *status;
  Progress progress;
} Job;

static void *run_job(void *arg) {
  Job *j = (Job *)arg;
  j->status = flowar_pipeline_generate(j->pipe, j->req, j->buf, j->len, on_progress,
                                       &j->progress);
  return NULL;
}

/* Edits on a model folder with a VAE encoder: the errors that need one, then an
 * in-painting of a synthetic image (cancelled at its first step in light mode). */
static void edit_checks(const char *dir, int light) {
  FlowarPipeline *pipe = load(dir);
  if (pipe == NULL) return;
  size_t w = 0, h = 0, scales = 0, len = 0;
  EXPECT_OK(flowar_pipeline_image_width(pipe, &w));
  EXPECT_OK(flowar_pipeline_image_height(pipe, &h));
  EXPECT_OK(flowar_pipeline_num_scales(pipe, &scales));
  EXPECT_OK(flowar_pipeline_buffer_size(pipe, 1, &len));
  uint8_t *src = malloc(w * h * 3), *mask = calloc(w * h, 1), *out = malloc(2 * len);
  for (size_t i = 0; i < w * h * 3; i++) src[i] = (uint8_t)(i * 31 / 7);
  for (size_t y = h / 4; y < h / 2; y++)
    for (size_t x = w / 8; x < w / 2; x++) mask[y * w + x] = 200;
  memset(out, 0xAB, 2 * len);
  int32_t one[1] = {3}, three[3] = {1, 2, 3};

  FlowarRequest *req = NULL;
  EXPECT_OK(flowar_request_create(&req));
  EXPECT_OK(flowar_request_set(req, "steps", "2"));
  /* A mask neither its image's size nor the model's. */
  EXPECT_OK(flowar_request_add_edit_image(req, src, w * h * 3, w, h, 3, mask, 12, 4, 3));
  EXPECT_OK(flowar_request_set_classes(req, one, 1));
  EXPECT_ERR(flowar_pipeline_generate(pipe, req, out, len, NULL, NULL),
             FLOWAR_CODE_BAD_ARGUMENT, "edit image 0: the mask is 4x3");
  EXPECT_OK(flowar_request_clear_edit(req));
  EXPECT_OK(flowar_request_add_edit_image(req, src, w * h * 3, w, h, 3, mask, w * h, w, h));
  EXPECT_OK(flowar_request_add_edit_image(req, src, w * h * 3, w, h, 3, NULL, 0, 0, 0));
  EXPECT_OK(flowar_request_set_classes(req, three, 3));
  EXPECT_ERR(flowar_pipeline_generate(pipe, req, out, 2 * len, NULL, NULL),
             FLOWAR_CODE_BAD_ARGUMENT, "3 classes for 2 edit images");
  EXPECT_OK(flowar_request_set_classes(req, one, 1));
  EXPECT_OK(flowar_request_set_int(req, "keep_scales", (int64_t)scales + 1));
  EXPECT_ERR(flowar_pipeline_generate(pipe, req, out, 2 * len, NULL, NULL),
             FLOWAR_CODE_BAD_ARGUMENT, "`keep_scales`");
  EXPECT_OK(flowar_request_set_int(req, "keep_scales", 0));
  EXPECT_OK(flowar_request_set_int(req, "composite", 1));
  EXPECT_ERR(flowar_pipeline_generate(pipe, req, out, 2 * len, NULL, NULL),
             FLOWAR_CODE_BAD_ARGUMENT, "edit image 1 has no mask");
  int untouched = 1;
  for (size_t i = 0; i < 2 * len; i++) untouched &= out[i] == 0xAB;
  CHECK(untouched, "a failed edit must not write the buffer");

  /* An in-painting, composited. */
  EXPECT_OK(flowar_request_clear_edit(req));
  EXPECT_OK(flowar_request_add_edit_image(req, src, w * h * 3, w, h, 3, mask, w * h, w, h));
  EXPECT_OK(flowar_request_set_int(req, "composite", 1));
  Progress prog = {0, light ? 0 : -1, -1, 0, 0, 0, 0};
  FlowarStatus *st = flowar_pipeline_generate(pipe, req, out, len, on_progress, &prog);
  if (light) {
    EXPECT_ERR(st, FLOWAR_CODE_CANCELLED, "cancelled");
    CHECK(prog.calls == 1, "cancelled at the first step (%d calls)", prog.calls);
  } else {
    EXPECT_OK(st);
    CHECK(prog.calls > 0 && !prog.bad_order, "edit progress in order (%d calls)", prog.calls);
    size_t kept = 0, changed = 0, regenerated = 0;
    for (size_t p = 0; p < w * h; p++) {
      int same = memcmp(out + p * 3, src + p * 3, 3) == 0;
      if (mask[p] == 0) {
        kept++;
        changed += !same;
      } else {
        regenerated += !same;
      }
    }
    CHECK(changed == 0 && kept > 0, "%zu of %zu unmasked pixels changed", changed, kept);
    CHECK(regenerated > 0, "the masked region is regenerated");
    CHECK(out[len] == 0xAB, "an edit writes no more than one image");
  }
  flowar_request_destroy(&req);
  free(src);
  free(mask);
  free(out);
  flowar_pipeline_destroy(&pipe);
}

int main(int argc, char **argv) {
  int light = 0;
  const char *edit_model = NULL;
  for (int i = 2; i < argc; i++) {
    if (strcmp(argv[i], "--light") == 0) {
      light = 1;
    } else if (strcmp(argv[i], "--edit") == 0 && i + 1 < argc) {
      edit_model = argv[++i];
    } else {
      argc = 0;
    }
  }
  if (argc < 2) {
    fprintf(stderr, "usage: test_errors MODEL_DIR [--light] [--edit EDIT_MODEL_DIR]\n");
    return 2;
  }
  const char *model = argv[1];

  /* Version and NULL statuses. */
  CHECK(flowar_version() != NULL && strlen(flowar_version()) > 0, "version");
  CHECK(flowar_status_code(NULL) == FLOWAR_CODE_OK, "NULL status is OK");
  CHECK(strcmp(flowar_status_message(NULL), "ok") == 0, "NULL status message");

  /* Destroy accepts NULL and a pointer to NULL. */
  flowar_status_destroy(NULL);
  flowar_options_destroy(NULL);
  flowar_request_destroy(NULL);
  flowar_pipeline_destroy(NULL);
  {
    FlowarStatus *s = NULL;
    FlowarOptions *o = NULL;
    FlowarRequest *r = NULL;
    FlowarPipeline *p = NULL;
    flowar_status_destroy(&s);
    flowar_options_destroy(&o);
    flowar_request_destroy(&r);
    flowar_pipeline_destroy(&p);
  }

  /* Options. */
  FlowarOptions *opts = NULL;
  EXPECT_ERR(flowar_options_create(NULL), FLOWAR_CODE_BAD_ARGUMENT, "NULL");
  EXPECT_OK(flowar_options_create(&opts));
  EXPECT_ERR(flowar_options_set(NULL, "provider", "tract"), FLOWAR_CODE_BAD_ARGUMENT,
             "`options` is NULL");
  EXPECT_ERR(flowar_options_set(opts, NULL, "tract"), FLOWAR_CODE_BAD_ARGUMENT,
             "`name` is NULL");
  EXPECT_ERR(flowar_options_set(opts, "provider", NULL), FLOWAR_CODE_BAD_ARGUMENT,
             "`value` is NULL");
  EXPECT_ERR(flowar_options_set(opts, "colour", "red"), FLOWAR_CODE_BAD_ARGUMENT,
             "unknown option `colour`");
  EXPECT_ERR(flowar_options_set(opts, "provider", "gpu"), FLOWAR_CODE_BAD_ARGUMENT,
             "unknown provider `gpu`");
  EXPECT_ERR(flowar_options_set(opts, "provider", "tr\xff\xfe"), FLOWAR_CODE_BAD_ARGUMENT,
             "not valid UTF-8");
  EXPECT_ERR(flowar_options_set(opts, "threads", "-1"), FLOWAR_CODE_BAD_ARGUMENT,
             "non-negative integer");
  EXPECT_ERR(flowar_options_set_int(opts, "device_id", -1), FLOWAR_CODE_BAD_ARGUMENT,
             "device_id");
  EXPECT_ERR(flowar_options_set_int(opts, "provider", 3), FLOWAR_CODE_BAD_ARGUMENT,
             "takes a string");
  EXPECT_OK(flowar_options_set(opts, "threads", "auto"));
  EXPECT_OK(flowar_options_set_int(opts, "threads", 2));
  EXPECT_OK(flowar_options_set(opts, "device_id", "0"));

  /* Pipeline creation failures leave *out NULL. */
  FlowarPipeline *pipe = (FlowarPipeline *)&passed; /* a non-NULL sentinel */
  EXPECT_ERR(flowar_pipeline_create(model, opts, NULL), FLOWAR_CODE_BAD_ARGUMENT, "NULL");
  EXPECT_ERR(flowar_pipeline_create(NULL, opts, &pipe), FLOWAR_CODE_BAD_ARGUMENT,
             "`model_dir` is NULL");
  CHECK(pipe == NULL, "failed create must set *out to NULL");
  EXPECT_ERR(flowar_pipeline_create("", opts, &pipe), FLOWAR_CODE_BAD_ARGUMENT, "empty");
  EXPECT_ERR(flowar_pipeline_create("/model\xff", opts, &pipe), FLOWAR_CODE_BAD_ARGUMENT,
             "not valid UTF-8");
  EXPECT_OK(flowar_options_set(opts, "provider", "tract"));
  EXPECT_ERR(flowar_pipeline_create("/nonexistent/flowar-model", opts, &pipe),
             FLOWAR_CODE_MODEL, "/nonexistent/flowar-model");
  CHECK(pipe == NULL, "missing model leaves no pipeline");

  /* An unavailable provider. This machine has no GPU: "cuda" cannot be used. */
  EXPECT_OK(flowar_options_set(opts, "provider", "cuda"));
  EXPECT_ERR(flowar_pipeline_create(model, opts, &pipe), FLOWAR_CODE_PROVIDER_UNAVAILABLE,
             "cuda");
  CHECK(pipe == NULL, "unavailable provider leaves no pipeline");
  /* ... and deterministically so, whatever onnxruntime is installed. */
  EXPECT_OK(flowar_options_set(opts, "ort_lib", "/nonexistent/libonnxruntime.so"));
  EXPECT_ERR(flowar_pipeline_create(model, opts, &pipe), FLOWAR_CODE_PROVIDER_UNAVAILABLE,
             "provider `cuda` is unavailable");
  flowar_options_destroy(&opts);
  CHECK(opts == NULL, "flowar_options_destroy must null the pointer");

  /* A good pipeline (NULL options = defaults would pick onnxruntime if present; use tract). */
  pipe = load(model);
  if (pipe == NULL) {
    fprintf(stderr, "cannot continue without a pipeline\n");
    printf("%d passed, %d failed\n", passed, failed);
    return 1;
  }

  size_t width = 0, height = 0, channels = 0, classes = 0, scales = 0, len = 0;
  const char *provider = NULL;
  EXPECT_OK(flowar_pipeline_image_width(pipe, &width));
  EXPECT_OK(flowar_pipeline_image_height(pipe, &height));
  EXPECT_OK(flowar_pipeline_image_channels(pipe, &channels));
  EXPECT_OK(flowar_pipeline_num_classes(pipe, &classes));
  EXPECT_OK(flowar_pipeline_num_scales(pipe, &scales));
  EXPECT_OK(flowar_pipeline_provider(pipe, &provider));
  CHECK(width > 0 && height > 0 && channels == 3 && classes > 1 && scales > 0,
        "pipeline properties %zux%zux%zu, %zu classes, %zu scales", width, height, channels,
        classes, scales);
  CHECK(provider != NULL && strcmp(provider, "tract") == 0, "provider is tract");
  EXPECT_ERR(flowar_pipeline_image_width(NULL, &width), FLOWAR_CODE_BAD_ARGUMENT,
             "`pipeline` is NULL");
  EXPECT_ERR(flowar_pipeline_num_classes(pipe, NULL), FLOWAR_CODE_BAD_ARGUMENT,
             "`out` is NULL");
  EXPECT_ERR(flowar_pipeline_buffer_size(pipe, 0, &len), FLOWAR_CODE_BAD_ARGUMENT, "0");
  EXPECT_ERR(flowar_pipeline_buffer_size(pipe, SIZE_MAX / 2, &len), FLOWAR_CODE_BAD_ARGUMENT,
             "do not fit");
  EXPECT_OK(flowar_pipeline_buffer_size(pipe, 1, &len));
  CHECK(len == width * height * 3, "buffer size for one image");

  /* Requests. */
  FlowarRequest *req = NULL;
  int32_t one[1] = {3};
  int32_t negative[2] = {1, -4};
  EXPECT_ERR(flowar_request_create(NULL), FLOWAR_CODE_BAD_ARGUMENT, "NULL");
  EXPECT_OK(flowar_request_create(&req));
  EXPECT_ERR(flowar_request_set_classes(NULL, one, 1), FLOWAR_CODE_BAD_ARGUMENT,
             "`request` is NULL");
  EXPECT_ERR(flowar_request_set_classes(req, NULL, 1), FLOWAR_CODE_BAD_ARGUMENT,
             "`class_ids` is NULL");
  EXPECT_ERR(flowar_request_set_classes(req, one, 0), FLOWAR_CODE_BAD_ARGUMENT,
             "`count` is 0");
  EXPECT_ERR(flowar_request_set_classes(req, negative, 2), FLOWAR_CODE_BAD_ARGUMENT,
             "class_ids[1] = -4 is negative");
  EXPECT_ERR(flowar_request_set(req, "temperature", "1"), FLOWAR_CODE_BAD_ARGUMENT,
             "unknown request setting `temperature`");
  EXPECT_ERR(flowar_request_set(req, "steps", "many"), FLOWAR_CODE_BAD_ARGUMENT,
             "`steps` must be a non-negative integer");
  EXPECT_ERR(flowar_request_set_float(req, "steps", 2.5), FLOWAR_CODE_BAD_ARGUMENT,
             "must be an integer");
  EXPECT_ERR(flowar_request_set_int(req, "seed", -1), FLOWAR_CODE_BAD_ARGUMENT,
             "non-negative");
  EXPECT_ERR(flowar_request_set(req, "cfg", "nan"), FLOWAR_CODE_BAD_ARGUMENT, "finite");
  EXPECT_ERR(flowar_request_set(req, "solver", "rk4"), FLOWAR_CODE_BAD_ARGUMENT,
             "unknown solver `rk4`");
  EXPECT_OK(flowar_request_set(req, "seed", "18446744073709551615"));
  EXPECT_OK(flowar_request_set(req, "solver", "heun"));
  EXPECT_OK(flowar_request_set(req, "solver", "euler"));

  uint8_t *buf = malloc(2 * len);
  memset(buf, 0xAB, 2 * len);

  /* Generation errors; each leaves the buffer untouched. */
  EXPECT_ERR(flowar_pipeline_generate(pipe, req, buf, len, NULL, NULL),
             FLOWAR_CODE_BAD_ARGUMENT, "no classes");
  EXPECT_OK(flowar_request_set_classes(req, one, 1));
  EXPECT_OK(flowar_request_set(req, "steps", "2"));
  EXPECT_ERR(flowar_pipeline_generate(NULL, req, buf, len, NULL, NULL),
             FLOWAR_CODE_BAD_ARGUMENT, "`pipeline` is NULL");
  EXPECT_ERR(flowar_pipeline_generate(pipe, NULL, buf, len, NULL, NULL),
             FLOWAR_CODE_BAD_ARGUMENT, "`request` is NULL");
  EXPECT_ERR(flowar_pipeline_generate(pipe, req, NULL, len, NULL, NULL),
             FLOWAR_CODE_BAD_ARGUMENT, "`out_rgb` is NULL");
  EXPECT_ERR(flowar_pipeline_generate(pipe, req, buf, len - 1, NULL, NULL),
             FLOWAR_CODE_BAD_ARGUMENT, "too small");
  int32_t out_of_range[1] = {(int32_t)classes};
  EXPECT_OK(flowar_request_set_classes(req, out_of_range, 1));
  EXPECT_ERR(flowar_pipeline_generate(pipe, req, buf, len, NULL, NULL),
             FLOWAR_CODE_BAD_ARGUMENT, "out of range");
  EXPECT_OK(flowar_request_set_classes(req, one, 1));
  EXPECT_OK(flowar_request_set_float(req, "cfg", 0.5));
  EXPECT_ERR(flowar_pipeline_generate(pipe, req, buf, len, NULL, NULL),
             FLOWAR_CODE_BAD_ARGUMENT, "cfg");
  EXPECT_OK(flowar_request_set_float(req, "cfg", 1.0));
  EXPECT_OK(flowar_request_set_float(req, "guidance", 1.5));
  EXPECT_ERR(flowar_pipeline_generate(pipe, req, buf, len, NULL, NULL),
             FLOWAR_CODE_BAD_ARGUMENT, "guidance");
  EXPECT_OK(flowar_request_set_float(req, "guidance", 0.9));
  EXPECT_OK(flowar_request_set_int(req, "steps", 1));
  EXPECT_ERR(flowar_pipeline_generate(pipe, req, buf, len, NULL, NULL),
             FLOWAR_CODE_BAD_ARGUMENT, "steps");
  EXPECT_OK(flowar_request_set_int(req, "steps", 2));

  /* Edit requests: buffers and settings are checked when given; generating checks the
   * buffer against the image count first, then that the model can edit (this one has no
   * VAE encoder). */
  {
    uint8_t px[4 * 4 * 4], mk[4 * 4];
    memset(px, 100, sizeof px);
    memset(mk, 0, sizeof mk);
    mk[5] = 255;
    FlowarRequest *er = NULL;
    size_t n = 99;
    EXPECT_OK(flowar_request_create(&er));
    EXPECT_OK(flowar_request_image_count(er, &n));
    CHECK(n == 0, "a new request makes 0 images, not %zu", n);
    EXPECT_ERR(flowar_request_image_count(NULL, &n), FLOWAR_CODE_BAD_ARGUMENT,
               "`request` is NULL");
    EXPECT_ERR(flowar_request_image_count(er, NULL), FLOWAR_CODE_BAD_ARGUMENT, "`out` is NULL");
    EXPECT_ERR(flowar_request_add_edit_image(NULL, px, 48, 4, 4, 3, NULL, 0, 0, 0),
               FLOWAR_CODE_BAD_ARGUMENT, "`request` is NULL");
    EXPECT_ERR(flowar_request_add_edit_image(er, NULL, 48, 4, 4, 3, NULL, 0, 0, 0),
               FLOWAR_CODE_BAD_ARGUMENT, "`pixels` is NULL");
    EXPECT_ERR(flowar_request_add_edit_image(er, px, 48, 4, 4, 5, NULL, 0, 0, 0),
               FLOWAR_CODE_BAD_ARGUMENT, "`channels` is 5");
    EXPECT_ERR(flowar_request_add_edit_image(er, px, 47, 4, 4, 3, NULL, 0, 0, 0),
               FLOWAR_CODE_BAD_ARGUMENT, "`pixels_len` is 47");
    EXPECT_ERR(flowar_request_add_edit_image(er, px, 64, 4, 4, 4, mk, 15, 4, 4),
               FLOWAR_CODE_BAD_ARGUMENT, "`mask_len` is 15");
    EXPECT_ERR(flowar_request_add_edit_image(er, px, 48, 4, 4, 3, NULL, 16, 4, 4),
               FLOWAR_CODE_BAD_ARGUMENT, "pass 0");
    EXPECT_ERR(flowar_request_add_edit_image(er, px, SIZE_MAX, SIZE_MAX / 2, 4, 3, NULL, 0, 0, 0),
               FLOWAR_CODE_BAD_ARGUMENT, "too large");
    EXPECT_ERR(flowar_request_set_int(er, "count", 0), FLOWAR_CODE_BAD_ARGUMENT, "at least 1");
    EXPECT_ERR(flowar_request_set(er, "composite", "maybe"), FLOWAR_CODE_BAD_ARGUMENT,
               "is a switch");
    EXPECT_OK(flowar_request_image_count(er, &n));
    CHECK(n == 0, "failed adds add nothing (%zu images)", n);
    EXPECT_OK(flowar_request_add_edit_image(er, px, 64, 4, 4, 4, mk, 16, 4, 4));
    EXPECT_OK(flowar_request_add_edit_image(er, px, 48, 4, 4, 3, NULL, 0, 0, 0));
    EXPECT_OK(flowar_request_set_int(er, "count", 3));
    EXPECT_OK(flowar_request_image_count(er, &n));
    CHECK(n == 6, "2 edit images x count 3 make 6 images, not %zu", n);
    EXPECT_OK(flowar_request_set_classes(er, one, 1));
    EXPECT_ERR(flowar_pipeline_generate(pipe, er, buf, 2 * len, NULL, NULL),
               FLOWAR_CODE_BAD_ARGUMENT, "too small for 6 images");
    EXPECT_OK(flowar_request_set(er, "count", "1"));
    EXPECT_ERR(flowar_pipeline_generate(pipe, er, buf, 2 * len, NULL, NULL), FLOWAR_CODE_MODEL,
               "no VAE encoder");
    EXPECT_OK(flowar_request_clear_edit(er));
    EXPECT_OK(flowar_request_image_count(er, &n));
    CHECK(n == 1, "after clear_edit the request makes its 1 class's image, not %zu", n);
    EXPECT_OK(flowar_request_set_int(er, "keep_scales", 1));
    EXPECT_ERR(flowar_pipeline_generate(pipe, er, buf, len, NULL, NULL),
               FLOWAR_CODE_BAD_ARGUMENT, "`keep_scales` is an edit setting");
    EXPECT_ERR(flowar_request_clear_edit(NULL), FLOWAR_CODE_BAD_ARGUMENT, "`request` is NULL");
    flowar_request_destroy(&er);
  }

  int untouched = 1;
  for (size_t i = 0; i < 2 * len; i++) untouched &= buf[i] == 0xAB;
  CHECK(untouched, "a failed generate must not write the buffer");

  /* Cancellation from the callback, at the first step of the second scale. */
  Progress cancel = {0, scales > 1 ? 1 : 0, -1, 0, 0, 0, 0};
  EXPECT_ERR(flowar_pipeline_generate(pipe, req, buf, len, on_progress, &cancel),
             FLOWAR_CODE_CANCELLED, "cancelled");
  CHECK(cancel.last_scale == cancel.cancel_at_scale && cancel.last_step == 1,
        "no callback after cancelling (last: scale %d step %d)", cancel.last_scale,
        cancel.last_step);
  untouched = 1;
  for (size_t i = 0; i < len; i++) untouched &= buf[i] == 0xAB;
  CHECK(untouched, "a cancelled generate must not write the buffer");

  /* The pipeline still works after errors and cancellation. */
  int end = light ? (scales > 2 ? 2 : (int)scales - 1) : -1;
  Progress prog = {0, -1, end, 0, 0, 0, 0};
  FlowarStatus *st = flowar_pipeline_generate(pipe, req, buf, len, on_progress, &prog);
  CHECK(prog.calls > 0 && !prog.bad_order, "progress called in order (%d calls)", prog.calls);
  CHECK(prog.last_step == prog.last_total, "the last call is at the last step of a scale");
  if (light) {
    EXPECT_ERR(st, FLOWAR_CODE_CANCELLED, "cancelled");
    CHECK(prog.last_scale == end, "stopped at scale %d", end);
  } else {
    EXPECT_OK(st);
    CHECK(prog.last_scale == (int)scales - 1, "the last call is in the last scale");
    CHECK(buf[len] == 0xAB, "generate writes no more than one image");
    int varied = 0;
    for (size_t i = 1; i < len; i++) varied |= buf[i] != buf[0];
    CHECK(varied, "the image is not constant");
  }

  /* Two pipelines on two threads at once give the single-threaded result (in light
   * mode: both run at once up to the same cancellation point). */
  FlowarPipeline *pipe2 = load(model);
  Job jobs[2] = {{pipe, req, malloc(len), len, NULL, {0, -1, end, 0, 0, 0, 0}},
                 {pipe2, req, malloc(len), len, NULL, {0, -1, end, 0, 0, 0, 0}}};
  pthread_t threads[2];
  for (int t = 0; t < 2; t++)
    CHECK(pthread_create(&threads[t], NULL, run_job, &jobs[t]) == 0, "spawn");
  for (int t = 0; t < 2; t++) pthread_join(threads[t], NULL);
  for (int t = 0; t < 2; t++) {
    if (light) {
      EXPECT_ERR(jobs[t].status, FLOWAR_CODE_CANCELLED, "cancelled");
      CHECK(jobs[t].progress.last_scale == end, "thread %d reached scale %d", t, end);
    } else {
      EXPECT_OK(jobs[t].status);
      CHECK(memcmp(jobs[t].buf, buf, len) == 0, "thread %d image equals the serial one", t);
    }
    free(jobs[t].buf);
  }

  if (!light) {
    /* Another seed gives another image. */
    FlowarRequest *other = small_request(one, 1, 7);
    uint8_t *buf2 = malloc(len);
    EXPECT_OK(flowar_pipeline_generate(pipe2, other, buf2, len, NULL, NULL));
    CHECK(memcmp(buf, buf2, len) != 0, "another seed gives another image");
    flowar_request_destroy(&other);
    free(buf2);
  }

  if (edit_model != NULL) edit_checks(edit_model, light);

  free(buf);
  flowar_request_destroy(&req);
  CHECK(req == NULL, "flowar_request_destroy must null the pointer");
  flowar_pipeline_destroy(&pipe2);
  flowar_pipeline_destroy(&pipe);
  CHECK(pipe == NULL, "flowar_pipeline_destroy must null the pointer");

  printf("%d passed, %d failed\n", passed, failed);
  return failed == 0 ? 0 : 1;
}
