// One 2-d convolution (NHWC input, HWIO kernel, float32) by oneDNN, its three training
// passes timed: python -m aetl_jax.bench.onednn_library compiles this file against the
// system's oneDNN (Debian: apt-get install g++ libdnnl-dev) and compares it with XLA:CPU.
//
//   onednn_conv N H W CIN COUT K STRIDE PAD_LOW PAD_HIGH CALLS ROUNDS
//
// Prints one JSON line: the median over ROUNDS of the mean ms of CALLS calls of each pass
// (the kernel reordered from HWIO to oneDNN's preferred layout inside the timed call, as a
// train step would each time its kernel changes), and the implementation oneDNN chose.
#include <dnnl.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

using namespace dnnl;
using tag = memory::format_tag;
using dt = memory::data_type;

static double now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

template <typename F>
static double median_ms(F f, int calls, int rounds) {
  for (int i = 0; i < 3; i++) f();
  std::vector<double> t;
  for (int r = 0; r < rounds; r++) {
    double t0 = now();
    for (int i = 0; i < calls; i++) f();
    t.push_back((now() - t0) / calls * 1e3);
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

int main(int argc, char** argv) {
  if (argc != 12) {
    std::fprintf(stderr, "usage: %s N H W CIN COUT K STRIDE PAD_LOW PAD_HIGH CALLS ROUNDS\n",
                 argv[0]);
    return 2;
  }
  long a[11];
  for (int i = 0; i < 11; i++) a[i] = std::atol(argv[i + 1]);
  const long n = a[0], h = a[1], w = a[2], c = a[3], o = a[4], k = a[5], s = a[6];
  const long lo = a[7], hi = a[8];
  const int calls = int(a[9]), rounds = int(a[10]);
  const long oh = (h + lo + hi - k) / s + 1, ow = (w + lo + hi - k) / s + 1;
  engine eng(engine::kind::cpu, 0);
  stream st(eng);
  memory::dims src{n, c, h, w}, wei{o, c, k, k}, dst{n, o, oh, ow};
  memory::dims strides{s, s}, pad_l{lo, lo}, pad_r{hi, hi};
  auto src_md = memory::desc(src, dt::f32, tag::nhwc);
  auto dst_md = memory::desc(dst, dt::f32, tag::nhwc);
  auto any_w = memory::desc(wei, dt::f32, tag::any);
  auto hwio = memory::desc(wei, dt::f32, tag::hwio);
  auto fpd = convolution_forward::primitive_desc(
      convolution_forward::desc(prop_kind::forward_training, algorithm::convolution_direct,
                                src_md, any_w, dst_md, strides, pad_l, pad_r), eng);
  auto dpd = convolution_backward_data::primitive_desc(
      convolution_backward_data::desc(algorithm::convolution_direct, src_md, any_w, dst_md,
                                      strides, pad_l, pad_r), eng, fpd);
  auto wpd = convolution_backward_weights::primitive_desc(
      convolution_backward_weights::desc(algorithm::convolution_direct, src_md, any_w, dst_md,
                                         strides, pad_l, pad_r), eng, fpd);
  std::vector<float> x(n * h * w * c), kern(k * k * c * o), y(n * oh * ow * o);
  std::vector<float> dx(x.size()), dk(kern.size()), dy(y.size());
  std::mt19937 gen(0);
  std::normal_distribution<float> normal;
  for (auto& v : x) v = normal(gen);
  for (auto& v : kern) v = 0.05f * normal(gen);
  for (auto& v : dy) v = normal(gen);
  memory mx(src_md, eng, x.data()), my(dst_md, eng, y.data());
  memory mdx(src_md, eng, dx.data()), mdy(dst_md, eng, dy.data());
  memory mk(hwio, eng, kern.data()), mdk(hwio, eng, dk.data());
  memory kf(fpd.weights_desc(), eng), kd(dpd.weights_desc(), eng);
  memory dki(wpd.diff_weights_desc(), eng);
  auto fwd = convolution_forward(fpd);
  auto bwd_data = convolution_backward_data(dpd);
  auto bwd_weights = convolution_backward_weights(wpd);
  auto to_f = reorder(mk, kf), to_d = reorder(mk, kd), from_w = reorder(dki, mdk);
  double f = median_ms([&] {
    to_f.execute(st, mk, kf);
    fwd.execute(st, {{DNNL_ARG_SRC, mx}, {DNNL_ARG_WEIGHTS, kf}, {DNNL_ARG_DST, my}});
    st.wait();
  }, calls, rounds);
  double d = median_ms([&] {
    to_d.execute(st, mk, kd);
    bwd_data.execute(st, {{DNNL_ARG_DIFF_DST, mdy}, {DNNL_ARG_WEIGHTS, kd},
                          {DNNL_ARG_DIFF_SRC, mdx}});
    st.wait();
  }, calls, rounds);
  double g = median_ms([&] {
    bwd_weights.execute(st, {{DNNL_ARG_SRC, mx}, {DNNL_ARG_DIFF_DST, mdy},
                             {DNNL_ARG_DIFF_WEIGHTS, dki}});
    from_w.execute(st, dki, mdk);
    st.wait();
  }, calls, rounds);
  std::printf("{\"forward\": %.4f, \"input grad\": %.4f, \"kernel grad\": %.4f, "
              "\"impl\": \"%s / %s / %s\", \"version\": \"%d.%d.%d\"}\n",
              f, d, g, fpd.impl_info_str(), dpd.impl_info_str(), wpd.impl_info_str(),
              dnnl_version()->major, dnnl_version()->minor, dnnl_version()->patch);
  return 0;
}
