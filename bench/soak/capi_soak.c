/*
 * capi_soak.c: libflowar under concurrent load and repeated create/destroy, as an app
 * embedding it would run it. Not a timed test: it counts and measures.
 *
 *   capi_soak MODEL_DIR THREADS REQUESTS CYCLES [PROVIDER]
 *
 * 1. One pipeline makes every request (thread t, request r) in turn: the expected images.
 * 2. THREADS threads each make their REQUESTS requests on that shared pipeline and again on
 *    a pipeline of their own; every image must equal the expected one byte for byte.
 * 3. CYCLES times: create a pipeline, generate once, destroy it. Resident memory is read
 *    after the first 5 cycles (warm) and at the end.
 * Prints one JSON line (the generate calls that returned images in steps 2 and 3, counted as
 * they return, mismatches, errors, resident memory in kB at each point, growth over the
 * cycles) and exits 1 on any mismatch or error.
 *
 * Build: see bench/soak/README.md (capi/tests/c_api.rs builds and runs a short one).
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "flowar.h"

static const char *g_model, *g_provider;
static int g_threads, g_requests;
static size_t g_image_bytes;
static uint8_t *g_expected; /* [threads][requests][2 images] */
static FlowarPipeline *g_shared;
static int g_mismatches, g_errors;
static pthread_mutex_t g_count = PTHREAD_MUTEX_INITIALIZER;
/* flowar_pipeline_generate calls that returned images, from every thread. */
static atomic_int g_calls;

static long rss_kb(void) {
  FILE *f = fopen("/proc/self/status", "r");
  char line[256];
  long kb = -1;
  if (f == NULL) return -1;
  while (fgets(line, sizeof line, f) != NULL)
    if (strncmp(line, "VmRSS:", 6) == 0) kb = strtol(line + 6, NULL, 10);
  fclose(f);
  return kb;
}

/* Reports a failed status on stderr, frees it, and returns 1 (0 for success). */
static int failed(FlowarStatus *st, const char *what) {
  if (st == NULL) return 0;
  fprintf(stderr, "capi_soak: %s: %s\n", what, flowar_status_message(st));
  flowar_status_destroy(&st);
  return 1;
}

static FlowarPipeline *open_pipeline(void) {
  FlowarOptions *opts = NULL;
  FlowarPipeline *p = NULL;
  if (failed(flowar_options_create(&opts), "options") ||
      failed(flowar_options_set(opts, "provider", g_provider), "provider") ||
      failed(flowar_options_set_int(opts, "threads", 1), "threads") ||
      failed(flowar_pipeline_create(g_model, opts, &p), "pipeline")) {
    p = NULL;
  }
  flowar_options_destroy(&opts);
  return p;
}

/* Request (t, r): two classes and a seed of its own, 3 steps. Counts the call in g_calls
   when it returns images. */
static int generate(FlowarPipeline *p, int t, int r, uint8_t *out) {
  FlowarRequest *req = NULL;
  int32_t classes[2] = {(t + r) % 10, (3 * t + r + 1) % 10};
  int bad = failed(flowar_request_create(&req), "request") ||
            failed(flowar_request_set_classes(req, classes, 2), "classes") ||
            failed(flowar_request_set_int(req, "seed", 1000 * t + r), "seed") ||
            failed(flowar_request_set_int(req, "steps", 3), "steps") ||
            failed(flowar_pipeline_generate(p, req, out, 2 * g_image_bytes, NULL, NULL),
                   "generate");
  flowar_request_destroy(&req);
  if (!bad) atomic_fetch_add(&g_calls, 1);
  return bad;
}

static void *worker(void *arg) {
  int t = (int)(intptr_t)arg, mism = 0, errs = 0;
  uint8_t *buf = malloc(2 * g_image_bytes);
  FlowarPipeline *own = open_pipeline();
  if (buf == NULL || own == NULL) errs++;
  for (int r = 0; r < g_requests && errs == 0; r++) {
    const uint8_t *want = g_expected + ((size_t)t * g_requests + r) * 2 * g_image_bytes;
    FlowarPipeline *pipes[2] = {g_shared, own};
    for (int k = 0; k < 2; k++) {
      if (generate(pipes[k], t, r, buf)) {
        errs++;
        break;
      }
      mism += memcmp(buf, want, 2 * g_image_bytes) != 0;
    }
  }
  flowar_pipeline_destroy(&own);
  free(buf);
  pthread_mutex_lock(&g_count);
  g_mismatches += mism;
  g_errors += errs;
  pthread_mutex_unlock(&g_count);
  return NULL;
}

int main(int argc, char **argv) {
  if (argc < 5 || argc > 6) {
    fprintf(stderr, "usage: capi_soak MODEL_DIR THREADS REQUESTS CYCLES [PROVIDER]\n");
    return 2;
  }
  g_model = argv[1];
  g_threads = atoi(argv[2]);
  g_requests = atoi(argv[3]);
  int cycles = atoi(argv[4]);
  g_provider = argc == 6 ? argv[5] : "tract";
  if (g_threads < 1 || g_requests < 1 || cycles < 6) {
    fprintf(stderr, "capi_soak: THREADS and REQUESTS >= 1, CYCLES >= 6\n");
    return 2;
  }
  g_shared = open_pipeline();
  if (g_shared == NULL ||
      failed(flowar_pipeline_buffer_size(g_shared, 1, &g_image_bytes), "buffer size"))
    return 1;
  g_expected = malloc((size_t)g_threads * g_requests * 2 * g_image_bytes);
  if (g_expected == NULL) return 1;
  for (int t = 0; t < g_threads; t++)
    for (int r = 0; r < g_requests; r++)
      if (generate(g_shared, t, r,
                   g_expected + ((size_t)t * g_requests + r) * 2 * g_image_bytes))
        return 1;
  long rss_warm = rss_kb();
  int sequential_calls = atomic_load(&g_calls);

  pthread_t *ids = calloc((size_t)g_threads, sizeof *ids);
  if (ids == NULL) return 1;
  for (int t = 0; t < g_threads; t++)
    if (pthread_create(&ids[t], NULL, worker, (void *)(intptr_t)t) != 0) return 1;
  for (int t = 0; t < g_threads; t++) pthread_join(ids[t], NULL);
  free(ids);
  long rss_threads = rss_kb();

  long rss_cycles_warm = -1;
  uint8_t *buf = malloc(2 * g_image_bytes);
  for (int c = 0; c < cycles && buf != NULL; c++) {
    FlowarPipeline *p = open_pipeline();
    if (p == NULL || generate(p, 0, 0, buf)) g_errors++;
    else g_mismatches += memcmp(buf, g_expected, 2 * g_image_bytes) != 0;
    flowar_pipeline_destroy(&p);
    if (c == 4) rss_cycles_warm = rss_kb();
  }
  free(buf);
  long rss_end = rss_kb();
  flowar_pipeline_destroy(&g_shared);
  free(g_expected);
  int calls = atomic_load(&g_calls) - sequential_calls;
  printf("{\"provider\": \"%s\", \"threads\": %d, \"requests_per_thread\": %d, "
         "\"calls\": %d, \"mismatches\": %d, \"errors\": %d, \"cycles\": %d, "
         "\"rss_kb_after_warmup\": %ld, \"rss_kb_after_threads\": %ld, "
         "\"rss_kb_after_5_cycles\": %ld, \"rss_kb_end\": %ld, \"cycle_growth_kb\": %ld}\n",
         g_provider, g_threads, g_requests, calls, g_mismatches,
         g_errors, cycles, rss_warm, rss_threads, rss_cycles_warm, rss_end,
         rss_end - rss_cycles_warm);
  return g_mismatches != 0 || g_errors != 0;
}
