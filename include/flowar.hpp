// flowar.hpp: a header-only C++17 RAII wrapper over flowar.h.
//
// Errors become flowar::Error exceptions (with the FlowarCode); handles are move-only
// objects that free themselves. Thread safety is that of the C API (see flowar.h): one
// Pipeline per thread for parallel work.
//
//     flowar::Pipeline pipe("models/my-model", flowar::Options().set("provider", "tract"));
//     flowar::Request req;
//     req.classes({3, 7}).set("seed", 42).set("steps", 8);
//     std::vector<uint8_t> rgb = pipe.generate(req, [](int scale, int step, int total) {
//       return true;  // false cancels (flowar::Error with FLOWAR_CODE_CANCELLED)
//     });
//     // image i: rgb.data() + i * pipe.width() * pipe.height() * pipe.channels()
//
//     // In-painting (a model folder with a VAE encoder): regenerate where mask > 0.
//     flowar::Request edit;
//     edit.edit_image(rgb_pixels, w, h, 3, mask_pixels, w, h).classes({3}).set("composite", true);
//     std::vector<uint8_t> edited = pipe.generate(edit);
#ifndef FLOWAR_HPP
#define FLOWAR_HPP

#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <initializer_list>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "flowar.h"

namespace flowar {

/// A failed call: the status's code and message.
class Error : public std::runtime_error {
 public:
  Error(FlowarCode code, const std::string& message) : std::runtime_error(message), code_(code) {}
  FlowarCode code() const noexcept { return code_; }

 private:
  FlowarCode code_;
};

/// Throws (and frees) a non-NULL status.
inline void check(FlowarStatus* status) {
  if (status == nullptr) return;
  Error e(flowar_status_code(status), flowar_status_message(status));
  flowar_status_destroy(&status);
  throw e;
}

inline std::string version() { return flowar_version(); }

namespace detail {
// A move-only owner of a C handle with a destroy(T**) function.
template <typename T, void (*Destroy)(T**)>
class Handle {
 public:
  Handle() = default;
  explicit Handle(T* p) : p_(p) {}
  Handle(const Handle&) = delete;
  Handle& operator=(const Handle&) = delete;
  Handle(Handle&& o) noexcept : p_(std::exchange(o.p_, nullptr)) {}
  Handle& operator=(Handle&& o) noexcept {
    if (this != &o) {
      Destroy(&p_);
      p_ = std::exchange(o.p_, nullptr);
    }
    return *this;
  }
  ~Handle() { Destroy(&p_); }
  T* get() const noexcept { return p_; }
  T** out() noexcept { return &p_; }

 private:
  T* p_ = nullptr;
};
}  // namespace detail

/// Pipeline options set by name ("provider", "threads", "device_id", "ort_lib").
class Options {
 public:
  Options() { check(flowar_options_create(h_.out())); }
  Options& set(const char* name, const char* value) {
    check(flowar_options_set(h_.get(), name, value));
    return *this;
  }
  Options& set(const char* name, const std::string& value) { return set(name, value.c_str()); }
  Options& set(const char* name, int64_t value) {
    check(flowar_options_set_int(h_.get(), name, value));
    return *this;
  }
  Options& set(const char* name, int value) { return set(name, static_cast<int64_t>(value)); }
  const FlowarOptions* get() const noexcept { return h_.get(); }

 private:
  detail::Handle<FlowarOptions, flowar_options_destroy> h_;
};

/// What to generate: classes plus settings by name ("seed", "first_index", "cfg",
/// "guidance", "steps", "solver"), and for an edit source images with optional masks plus
/// the edit settings ("count", "keep_scales", "invert_mask", "composite", "unconditional").
class Request {
 public:
  Request() { check(flowar_request_create(h_.out())); }
  Request& classes(const std::vector<int32_t>& ids) {
    check(flowar_request_set_classes(h_.get(), ids.data(), ids.size()));
    return *this;
  }
  Request& classes(std::initializer_list<int32_t> ids) {
    return classes(std::vector<int32_t>(ids));
  }
  Request& set(const char* name, const char* value) {
    check(flowar_request_set(h_.get(), name, value));
    return *this;
  }
  Request& set(const char* name, const std::string& value) { return set(name, value.c_str()); }
  Request& set(const char* name, int64_t value) {
    check(flowar_request_set_int(h_.get(), name, value));
    return *this;
  }
  Request& set(const char* name, int value) { return set(name, static_cast<int64_t>(value)); }
  Request& set(const char* name, bool value) { return set(name, static_cast<int64_t>(value)); }
  Request& set(const char* name, double value) {
    check(flowar_request_set_float(h_.get(), name, value));
    return *this;
  }

  /// Adds a source image to edit (see flowar_request_add_edit_image; the buffers are
  /// copied): `pixels` is height * width * channels bytes (channels 3: RGB, 4: RGBA), `mask`
  /// (nullptr: none) mask_height * mask_width grey bytes, above 0 = regenerate.
  Request& edit_image(const uint8_t* pixels, size_t pixels_len, size_t width, size_t height,
                      size_t channels, const uint8_t* mask = nullptr, size_t mask_len = 0,
                      size_t mask_width = 0, size_t mask_height = 0) {
    check(flowar_request_add_edit_image(h_.get(), pixels, pixels_len, width, height, channels,
                                        mask, mask_len, mask_width, mask_height));
    return *this;
  }
  /// An image to edit without a mask (an RGBA image's transparency is its mask).
  Request& edit_image(const std::vector<uint8_t>& pixels, size_t width, size_t height,
                      size_t channels) {
    return edit_image(pixels.data(), pixels.size(), width, height, channels);
  }
  /// An image to edit and its mask.
  Request& edit_image(const std::vector<uint8_t>& pixels, size_t width, size_t height,
                      size_t channels, const std::vector<uint8_t>& mask, size_t mask_width,
                      size_t mask_height) {
    return edit_image(pixels.data(), pixels.size(), width, height, channels, mask.data(),
                      mask.size(), mask_width, mask_height);
  }
  /// Removes the edit images and resets the edit settings: generate from scratch again.
  Request& clear_edit() {
    check(flowar_request_clear_edit(h_.get()));
    return *this;
  }

  /// Number of images a generate call makes: the classes, or edit images * "count" (0
  /// until classes() or edit_image() is called).
  size_t count() const {
    size_t n = 0;
    check(flowar_request_image_count(h_.get(), &n));
    return n;
  }
  const FlowarRequest* get() const noexcept { return h_.get(); }

 private:
  detail::Handle<FlowarRequest, flowar_request_destroy> h_;
};

/// Progress: (scale, step, total_steps) -> keep going? Returning false cancels.
using Progress = std::function<bool(int scale, int step, int total_steps)>;

/// A loaded model. Move-only; use one per thread for parallel generation.
class Pipeline {
 public:
  explicit Pipeline(const std::string& model_dir) {
    check(flowar_pipeline_create(model_dir.c_str(), nullptr, h_.out()));
  }
  Pipeline(const std::string& model_dir, const Options& options) {
    check(flowar_pipeline_create(model_dir.c_str(), options.get(), h_.out()));
  }

  size_t width() const { return query(flowar_pipeline_image_width); }
  size_t height() const { return query(flowar_pipeline_image_height); }
  size_t channels() const { return query(flowar_pipeline_image_channels); }
  size_t num_classes() const { return query(flowar_pipeline_num_classes); }
  size_t num_scales() const { return query(flowar_pipeline_num_scales); }
  std::string provider() const {
    const char* p = nullptr;
    check(flowar_pipeline_provider(h_.get(), &p));
    return p;
  }
  size_t buffer_size(size_t count) const {
    size_t n = 0;
    check(flowar_pipeline_buffer_size(h_.get(), count, &n));
    return n;
  }

  /// Generates into a caller buffer of `len` bytes (see flowar_pipeline_generate).
  void generate_into(const Request& request, uint8_t* out, size_t len,
                     const Progress& progress = nullptr) {
    Callback cb{&progress, nullptr};
    FlowarStatus* st = flowar_pipeline_generate(h_.get(), request.get(), out, len,
                                                progress ? &Callback::call : nullptr, &cb);
    if (cb.error) {
      flowar_status_destroy(&st);
      std::rethrow_exception(cb.error);
    }
    check(st);
  }

  /// Generates the request's images (or edits): count * height * width * 3 bytes, image
  /// after image; edit j of source image i is image i * count + j.
  std::vector<uint8_t> generate(const Request& request, const Progress& progress = nullptr) {
    std::vector<uint8_t> out(buffer_size(request.count()));
    generate_into(request, out.data(), out.size(), progress);
    return out;
  }

  FlowarPipeline* get() const noexcept { return h_.get(); }

 private:
  // Carries the std::function through the C callback; an exception thrown by it cancels
  // the run and is rethrown after flowar_pipeline_generate returns (never through C).
  struct Callback {
    const Progress* fn;
    std::exception_ptr error;
    static int call(int scale, int step, int total, void* user) noexcept {
      auto* self = static_cast<Callback*>(user);
      try {
        return (*self->fn)(scale, step, total) ? 0 : 1;
      } catch (...) {
        self->error = std::current_exception();
        return 1;
      }
    }
  };

  size_t query(FlowarStatus* (*fn)(const FlowarPipeline*, size_t*)) const {
    size_t n = 0;
    check(fn(h_.get(), &n));
    return n;
  }

  detail::Handle<FlowarPipeline, flowar_pipeline_destroy> h_;
};

}  // namespace flowar

#endif  // FLOWAR_HPP
