// oneDNN's 2-d convolution as three XLA FFI handlers (forward, input gradient, kernel
// gradient) for aetl_jax.models.onednn, which compiles this file against oneDNN 3 (the
// Python environment's, from PyPI's onednn-devel-cpu-gomp) or 2 (Debian/Ubuntu's libdnnl-dev)
// the first time its convolutions are traced. Input and output NHWC, kernel HWIO, float32, as
// XLA passes them; the kernel is reordered to (and its gradient from) the layout oneDNN picks
// for the shape. Primitives are built once per shape and thread (thread_local: XLA may run two
// custom calls at once).
#include <cstdint>
#include <exception>
#include <string>
#include <map>
#include <memory>
#include <tuple>
#include <dnnl.hpp>
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using namespace dnnl;
using tag = memory::format_tag;
using dt = memory::data_type;

namespace {

engine& cpu() { static engine e(engine::kind::cpu, 0); return e; }
stream& strm() { thread_local stream s(cpu()); return s; }

using Key = std::tuple<int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t,
                       int64_t, int64_t, int64_t, int64_t, int64_t>;

struct Conv {
  convolution_forward::primitive_desc fpd;
  convolution_backward_data::primitive_desc dpd;
  convolution_backward_weights::primitive_desc wpd;
  convolution_forward fwd;
  convolution_backward_data bwd_data;
  convolution_backward_weights bwd_weights;
  memory::desc src, dst, hwio;
  memory kf, kd, dk;  // the kernel (gradient) in each primitive's layout
  reorder to_f, to_d, from_w;  // HWIO to each primitive's layout, and back
};

Conv& get(int64_t n, int64_t h, int64_t w, int64_t c, int64_t o, int64_t kh, int64_t kw,
          int64_t sh, int64_t sw, int64_t pt, int64_t pb, int64_t pl, int64_t pr) {
  thread_local std::map<Key, std::unique_ptr<Conv>> cache;
  Key key{n, h, w, c, o, kh, kw, sh, sw, pt, pb, pl, pr};
  auto it = cache.find(key);
  if (it != cache.end()) return *it->second;
  int64_t oh = (h + pt + pb - kh) / sh + 1, ow = (w + pl + pr - kw) / sw + 1;
  memory::desc src({n, c, h, w}, dt::f32, tag::nhwc), dst({n, o, oh, ow}, dt::f32, tag::nhwc);
  memory::desc any_w({o, c, kh, kw}, dt::f32, tag::any), hwio({o, c, kh, kw}, dt::f32, tag::hwio);
  memory::dims strides{sh, sw}, pad_l{pt, pl}, pad_r{pb, pr};
  const auto direct = algorithm::convolution_direct;
#if DNNL_VERSION_MAJOR >= 3  // oneDNN 3 builds primitive descriptors from the shapes directly
  auto fpd = convolution_forward::primitive_desc(cpu(), prop_kind::forward_training, direct,
                                                 src, any_w, dst, strides, pad_l, pad_r);
  auto dpd = convolution_backward_data::primitive_desc(cpu(), direct, src, any_w, dst, strides,
                                                       pad_l, pad_r, fpd);
  auto wpd = convolution_backward_weights::primitive_desc(cpu(), direct, src, any_w, dst,
                                                          strides, pad_l, pad_r, fpd);
#else  // oneDNN 2 (Debian/Ubuntu's libdnnl-dev) through operation descriptors
  auto fpd = convolution_forward::primitive_desc(
      convolution_forward::desc(prop_kind::forward_training, direct, src, any_w, dst, strides,
                                pad_l, pad_r), cpu());
  auto dpd = convolution_backward_data::primitive_desc(
      convolution_backward_data::desc(direct, src, any_w, dst, strides, pad_l, pad_r), cpu(),
      fpd);
  auto wpd = convolution_backward_weights::primitive_desc(
      convolution_backward_weights::desc(direct, src, any_w, dst, strides, pad_l, pad_r), cpu(),
      fpd);
#endif
  memory kf(fpd.weights_desc(), cpu()), kd(dpd.weights_desc(), cpu());
  memory dk(wpd.diff_weights_desc(), cpu());
  auto conv = std::unique_ptr<Conv>(new Conv{
      fpd, dpd, wpd, convolution_forward(fpd), convolution_backward_data(dpd),
      convolution_backward_weights(wpd), src, dst, hwio, kf, kd, dk,
      reorder(reorder::primitive_desc(cpu(), hwio, cpu(), fpd.weights_desc())),
      reorder(reorder::primitive_desc(cpu(), hwio, cpu(), dpd.weights_desc())),
      reorder(reorder::primitive_desc(cpu(), wpd.diff_weights_desc(), cpu(), hwio))});
  return *(cache[key] = std::move(conv));
}

// A oneDNN exception becomes an XLA error (an exception must not cross the FFI boundary).
template <typename F>
ffi::Error guarded(F body) {
  try {
    body();
  } catch (const std::exception& err) {
    return ffi::Error(ffi::ErrorCode::kInternal, std::string("oneDNN convolution: ") + err.what());
  }
  return ffi::Error::Success();
}

// The convolution's primitives from its input's and kernel's shapes (the gradients' handlers
// read them from the buffer they write: a transposed convolution has no such input to pass).
#define GEOMETRY(xd, kd)                                                            \
  Conv& cv = get(xd[0], xd[1], xd[2], xd[3], kd[3], kd[0], kd[1], sh, sw, pt, pb, pl, pr);

ffi::Error Forward(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> k,
                   ffi::ResultBuffer<ffi::F32> y, int64_t sh, int64_t sw, int64_t pt,
                   int64_t pb, int64_t pl, int64_t pr) {
  return guarded([&] {
    GEOMETRY(x.dimensions(), k.dimensions())
    memory mx(cv.src, cpu(), x.typed_data()), mk(cv.hwio, cpu(), k.typed_data());
    memory my(cv.dst, cpu(), y->typed_data());
    cv.to_f.execute(strm(), mk, cv.kf);
    cv.fwd.execute(strm(), {{DNNL_ARG_SRC, mx}, {DNNL_ARG_WEIGHTS, cv.kf}, {DNNL_ARG_DST, my}});
    strm().wait();
  });
}

ffi::Error InputGrad(ffi::Buffer<ffi::F32> k, ffi::Buffer<ffi::F32> dy,
                     ffi::ResultBuffer<ffi::F32> dx, int64_t sh, int64_t sw, int64_t pt,
                     int64_t pb, int64_t pl, int64_t pr) {
  return guarded([&] {
    GEOMETRY(dx->dimensions(), k.dimensions())
    memory mk(cv.hwio, cpu(), k.typed_data()), mdy(cv.dst, cpu(), dy.typed_data());
    memory mdx(cv.src, cpu(), dx->typed_data());
    cv.to_d.execute(strm(), mk, cv.kd);
    cv.bwd_data.execute(strm(), {{DNNL_ARG_DIFF_DST, mdy}, {DNNL_ARG_WEIGHTS, cv.kd},
                                 {DNNL_ARG_DIFF_SRC, mdx}});
    strm().wait();
  });
}

ffi::Error KernelGrad(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> dy,
                      ffi::ResultBuffer<ffi::F32> dk, int64_t sh, int64_t sw, int64_t pt,
                      int64_t pb, int64_t pl, int64_t pr) {
  return guarded([&] {
    GEOMETRY(x.dimensions(), dk->dimensions())
    memory mx(cv.src, cpu(), x.typed_data()), mdy(cv.dst, cpu(), dy.typed_data());
    memory mdk(cv.hwio, cpu(), dk->typed_data());
    cv.bwd_weights.execute(strm(), {{DNNL_ARG_SRC, mx}, {DNNL_ARG_DIFF_DST, mdy},
                                    {DNNL_ARG_DIFF_WEIGHTS, cv.dk}});
    cv.from_w.execute(strm(), cv.dk, mdk);
    strm().wait();
  });
}

}  // namespace

#define ATTRS .Attr<int64_t>("sh").Attr<int64_t>("sw").Attr<int64_t>("pt").Attr<int64_t>("pb") \
              .Attr<int64_t>("pl").Attr<int64_t>("pr")

XLA_FFI_DEFINE_HANDLER_SYMBOL(AetlOnednnConvForward, Forward,
    ffi::Ffi::Bind().Arg<ffi::Buffer<ffi::F32>>().Arg<ffi::Buffer<ffi::F32>>()
        .Ret<ffi::Buffer<ffi::F32>>() ATTRS);
// Both gradients take two buffers and write the third.
XLA_FFI_DEFINE_HANDLER_SYMBOL(AetlOnednnConvInputGrad, InputGrad,
    ffi::Ffi::Bind().Arg<ffi::Buffer<ffi::F32>>().Arg<ffi::Buffer<ffi::F32>>()
        .Ret<ffi::Buffer<ffi::F32>>() ATTRS);
XLA_FFI_DEFINE_HANDLER_SYMBOL(AetlOnednnConvKernelGrad, KernelGrad,
    ffi::Ffi::Bind().Arg<ffi::Buffer<ffi::F32>>().Arg<ffi::Buffer<ffi::F32>>()
        .Ret<ffi::Buffer<ffi::F32>>() ATTRS);
