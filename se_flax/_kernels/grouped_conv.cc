// Grouped and depthwise 2-D convolutions for XLA's CPU backend, as XLA FFI handlers: the
// forward pass and both gradients of an NHWC x HWIO convolution with G groups, any strides,
// dilations and non-negative explicit pads, in float32 and float64. Behind
// se_flax.conv_general_dilated (se_flax/_grouped.py); XLA's own grouped convolution and its
// gradients run 3-700x slower on CPUs (measurements in README's performance findings).
//
// Layouts: x (N, H, W, C), kernel (KH, KW, Cg, O), y (N, Ho, Wo, O), C = G * Cg, O = G * Og.
// Output channel o belongs to group o / Og and reads input channels [g * Cg, (g + 1) * Cg).
//
// Each handler splits its work into rows (an output row for the forward pass, an input row
// for the input gradient, a fixed range of output rows for the kernel gradient), computed on
// XLA's intra-op thread pool. Every output element is summed in one fixed order, whatever the
// threads do, so results are deterministic. The caller thread takes rows too and only waits
// for rows other threads have started, so a busy pool cannot deadlock it.

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include <Python.h>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

struct Geometry {
  int64_t n, h, w, c;    // input
  int64_t kh, kw, cg;    // kernel (kh, kw, cg, o)
  int64_t ho, wo, o;     // output
  int64_t groups, og;    // o = groups * og, c = groups * cg
  int64_t sh, sw, pt, pl, dh, dw;
};

// ---------------------------------------------------------------------------------------
// Running rows on the pool.

struct Job {
  std::function<void(int64_t)> row;
  int64_t rows;
  std::atomic<int64_t> next{0};
  std::atomic<int64_t> done{0};
  std::mutex mutex;
  std::condition_variable finished;

  void Work() {
    int64_t k;
    while ((k = next.fetch_add(1)) < rows) {
      row(k);
      if (done.fetch_add(1) + 1 == rows) {
        std::lock_guard<std::mutex> lock(mutex);
        finished.notify_all();
      }
    }
  }
};

// Calls row(k) for k in [0, rows), on up to the pool's threads and the caller's.
void ParallelRows(ffi::ThreadPool& pool, int64_t rows, std::function<void(int64_t)> row) {
  if (rows <= 0) return;
  // The caller and num_threads - 1 helpers: as many workers as the pool has threads.
  int64_t helpers = std::min<int64_t>(pool.num_threads() - 1, rows - 1);
  if (helpers <= 0) {
    for (int64_t k = 0; k < rows; ++k) row(k);
    return;
  }
  auto job = std::make_shared<Job>();
  job->row = std::move(row);
  job->rows = rows;
  for (int64_t t = 0; t < helpers; ++t) pool.Schedule([job] { job->Work(); });
  job->Work();
  std::unique_lock<std::mutex> lock(job->mutex);
  job->finished.wait(lock, [&] { return job->done.load() == job->rows; });
}

// The output columns [first, last) whose tap at kernel column j reads an input column in
// [0, width): ow * stride - pad + j * dilation in [0, width).
inline void ValidColumns(int64_t width, int64_t out, int64_t stride, int64_t pad, int64_t offset,
                         int64_t* first, int64_t* last) {
  int64_t lo = pad - offset;  // ow * stride >= lo
  int64_t f = lo <= 0 ? 0 : (lo + stride - 1) / stride;
  int64_t hi = width - 1 + pad - offset;  // ow * stride <= hi
  int64_t l = hi < 0 ? 0 : hi / stride + 1;
  *first = std::min(f, out);
  *last = std::max(*first, std::min(l, out));
}

// ---------------------------------------------------------------------------------------
// Per-pixel products. A "pixel" is one (position, tap) pair: G groups of a (B,) x (B, D)
// product, or its transpose.

// y[g * D + d] += sum_b x[g * B + b] * w[b * ldw + g * D + d]  (the forward pass; with
// B <-> D and a transposed kernel, the input gradient). D is a compile-time width when > 0.
template <typename T, int D>
inline void Product(const T* __restrict x, const T* __restrict w, T* __restrict y, int64_t groups,
                    int64_t b_size, int64_t d_rt, int64_t ldw) {
  const int64_t d_size = D > 0 ? D : d_rt;
  if (D == 1 && b_size == 1) {  // depthwise: one vector FMA over the channels
    for (int64_t g = 0; g < groups; ++g) y[g] += x[g] * w[g];
    return;
  }
  for (int64_t g = 0; g < groups; ++g) {
    const T* xg = x + g * b_size;
    const T* wg = w + g * d_size;
    T* yg = y + g * d_size;
    for (int64_t b = 0; b < b_size; ++b) {
      const T xv = xg[b];
      const T* wb = wg + b * ldw;
      for (int64_t d = 0; d < d_size; ++d) yg[d] += xv * wb[d];
    }
  }
}

// dk[b * ldk + g * D + d] += x[g * B + b] * dy[g * D + d]  (the kernel gradient).
template <typename T, int D>
inline void Outer(const T* __restrict x, const T* __restrict dy, T* __restrict dk, int64_t groups,
                  int64_t b_size, int64_t d_rt, int64_t ldk) {
  const int64_t d_size = D > 0 ? D : d_rt;
  if (D == 1 && b_size == 1) {
    for (int64_t g = 0; g < groups; ++g) dk[g] += x[g] * dy[g];
    return;
  }
  for (int64_t g = 0; g < groups; ++g) {
    const T* xg = x + g * b_size;
    const T* dyg = dy + g * d_size;
    T* dkg = dk + g * d_size;
    for (int64_t b = 0; b < b_size; ++b) {
      const T xv = xg[b];
      T* dkb = dkg + b * ldk;
      for (int64_t d = 0; d < d_size; ++d) dkb[d] += xv * dyg[d];
    }
  }
}

// ---------------------------------------------------------------------------------------
// Vector blocks: L = 32 bytes of lanes (8 floats, 4 doubles) of output channels [o0, o0 + L)
// in registers, for NP pixels at once. Lane l of the chunk belongs to group (o0 + l) / D and
// reads input channel ((o0 + l) / D) * B + b for reduction index b (forward: D = Og, B = Cg;
// input gradient: D = Cg, B = Og).

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
constexpr bool kHaveVectors = true;

template <typename T>
struct Lanes;

template <>
struct Lanes<float> {
  static constexpr int L = 8;
  typedef __m256 V;
  static V Zero() { return _mm256_setzero_ps(); }
  static V Set1(float s) { return _mm256_set1_ps(s); }
  static V Load(const float* p) { return _mm256_loadu_ps(p); }
  static void Store(float* p, V v) { _mm256_storeu_ps(p, v); }
  static V Fma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  static V Add(V a, V b) { return _mm256_add_ps(a, b); }
  static V Pairs(const float* s) {  // lanes s[0] x4, s[1] x4 (groups of 4 lanes)
    return _mm256_set_m128(_mm_set1_ps(s[1]), _mm_set1_ps(s[0]));
  }
  template <int D>
  static V Spread(V v, int b) {  // lane l: v[(l / D) * D + b]
    __m256i idx = _mm256_setr_epi32(b, (1 / D) * D + b, (2 / D) * D + b, (3 / D) * D + b,
                                    (4 / D) * D + b, (5 / D) * D + b, (6 / D) * D + b,
                                    (7 / D) * D + b);
    return _mm256_permutevar8x32_ps(v, idx);
  }
};

template <>
struct Lanes<double> {
  static constexpr int L = 4;
  typedef __m256d V;
  static V Zero() { return _mm256_setzero_pd(); }
  static V Set1(double s) { return _mm256_set1_pd(s); }
  static V Load(const double* p) { return _mm256_loadu_pd(p); }
  static void Store(double* p, V v) { _mm256_storeu_pd(p, v); }
  static V Fma(V a, V b, V c) { return _mm256_fmadd_pd(a, b, c); }
  static V Add(V a, V b) { return _mm256_add_pd(a, b); }
  static V Pairs(const double* s) {  // lanes s[0] x2, s[1] x2
    return _mm256_set_m128d(_mm_set1_pd(s[1]), _mm_set1_pd(s[0]));
  }
  template <int D>
  static V Spread(V v, int b) {  // lane l: v[(l / D) * D + b], as pairs of float lanes
    const int s0 = b, s1 = (1 / D) * D + b, s2 = (2 / D) * D + b, s3 = (3 / D) * D + b;
    __m256i idx = _mm256_setr_epi32(2 * s0, 2 * s0 + 1, 2 * s1, 2 * s1 + 1, 2 * s2, 2 * s2 + 1,
                                    2 * s3, 2 * s3 + 1);
    return _mm256_castps_pd(_mm256_permutevar8x32_ps(_mm256_castpd_ps(v), idx));
  }
};
#else
constexpr bool kHaveVectors = false;  // the scalar products only

template <typename T>
struct Lanes {
  static constexpr int L = 1;
  typedef T V;
  static V Zero() { return T(0); }
  static V Set1(T s) { return s; }
  static V Load(const T* p) { return *p; }
  static void Store(T* p, V v) { *p = v; }
  static V Fma(V a, V b, V c) { return a * b + c; }
  static V Add(V a, V b) { return a + b; }
  static V Pairs(const T* s) { return s[0]; }
  template <int D>
  static V Spread(V v, int) { return v; }
};
#endif

// The L input values lane-matched to the chunk at o0 for reduction index b. D is a
// compile-time group width when > 0 (D == 1: depthwise, b_size 1); kWide: D is a multiple of
// L (one group per chunk).
template <typename T, int D, int B, bool kWide>
inline typename Lanes<T>::V Gather(const T* in, int64_t o0, int64_t d_rt, int64_t b_size,
                                   int64_t b) {
  typedef Lanes<T> S;
  constexpr int L = S::L;
  const int64_t d = D > 0 ? D : d_rt;
  if constexpr (B > 0) b_size = B;
  if constexpr (kWide) {
    return S::Set1(in[(o0 / d) * b_size + b]);
  } else if constexpr (D == 1) {
    return S::Load(in + o0);
  } else if constexpr (2 * D == L) {  // two groups per chunk
    const T s[2] = {in[(o0 / D) * b_size + b], in[(o0 / D + 1) * b_size + b]};
    return S::Pairs(s);
  } else {
    alignas(32) T lanes[L];
    for (int l = 0; l < L; ++l) lanes[l] = in[((o0 + l) / d) * b_size + b];
    return S::Load(lanes);
  }
}

// out[p * out_step + o0 + c * L : + L] = sum_t sum_b Gather(in[p * ntaps + t], b) *
// w[t][c * next + b * L : + L] for p < NP, c < CH: NP pixels of CH chunks in registers, each
// the sum over ntaps taps (a tap outside the input points at zeros); w[t], the chunk's weights
// of tap t, packed (b_size, L), the next chunk's `next` further. Two chunks of one group
// (kWide) share each input's broadcast.
template <typename T, int D, int B, bool kWide, int NP, int CH>
inline void Block(const T* const* in, const T* const* w, int ntaps, int64_t b_size,
                  int64_t d_rt, int64_t next, int64_t o0, T* out, int64_t out_step) {
  typedef Lanes<T> S;
  constexpr bool kSpread = !kWide && B == D && 2 * D == S::L;  // two square groups a chunk
  static_assert(CH == 1 || kWide, "two chunks a block share their inputs: one group");
  const int64_t bs = B > 0 ? B : b_size;
  typename S::V acc[NP][CH];
  for (int p = 0; p < NP; ++p)
    for (int c = 0; c < CH; ++c) acc[p][c] = S::Zero();
  for (int t = 0; t < ntaps; ++t) {
    const T* x[NP];
    for (int p = 0; p < NP; ++p) x[p] = in[p * ntaps + t];
    const T* wt = w[t];
    if constexpr (kSpread) {  // the chunk's 2 * B inputs in one load, spread per b
      typename S::V xv[NP];
      for (int p = 0; p < NP; ++p) xv[p] = S::Load(x[p] + o0);
      for (int b = 0; b < B; ++b) {
        const typename S::V wv = S::Load(wt + b * S::L);
        for (int p = 0; p < NP; ++p)
          acc[p][0] = S::Fma(S::template Spread<D>(xv[p], b), wv, acc[p][0]);
      }
    } else {
      for (int64_t b = 0; b < bs; ++b) {
        typename S::V wv[CH];
        for (int c = 0; c < CH; ++c) wv[c] = S::Load(wt + c * next + b * S::L);
        for (int p = 0; p < NP; ++p) {
          const typename S::V xv = Gather<T, D, B, kWide>(x[p], o0, d_rt, bs, b);
          for (int c = 0; c < CH; ++c) acc[p][c] = S::Fma(xv, wv[c], acc[p][c]);
        }
      }
    }
  }
  for (int p = 0; p < NP; ++p)
    for (int c = 0; c < CH; ++c) S::Store(out + p * out_step + o0 + c * S::L, acc[p][c]);
}

constexpr int kPixels = 6;  // pixels per block: 6 accumulators, the weights and the inputs
constexpr int kMaxTaps = 64;  // kernels of up to 64 taps run in vector blocks

// The kernel (taps, b_size, width) as (width / L, taps, b_size, L): each chunk's weights
// contiguous (unpacked, the L1 cache would hold few of them: they lie width apart).
template <typename T>
std::vector<T> Pack(const T* k, int64_t taps, int64_t b_size, int64_t width) {
  constexpr int L = Lanes<T>::L;
  std::vector<T> packed(taps * b_size * width);
  for (int64_t ch = 0; ch < width / L; ++ch)
    for (int64_t t = 0; t < taps; ++t)
      for (int64_t b = 0; b < b_size; ++b)
        std::memcpy(&packed[((ch * taps + t) * b_size + b) * L], &k[(t * b_size + b) * width + ch * L],
                    L * sizeof(T));
  return packed;
}

// One output row of `count` pixels: pixel q reads, for tap (a, c) (the row's valid kernel
// rows x its kernel columns), input pixel q * step + offsets[c] of in_rows[a] (zeros outside
// [0, in_width)); it writes out_row + q * out_step. The forward pass and the input gradient.
struct Row {
  const int64_t* rows;     // the valid kernel rows (tap index i)
  int nrows;
  const int64_t* cols;     // the kernel columns (tap index j) and their offsets
  const int64_t* offsets;  // input pixel of q: q * step + offsets[c]
  int ncols;
  int64_t step, in_width, in_channels, count;
};

template <typename T, int D, int B, bool kWide>
void RowBlocks(const Row& r, const T* const* in_rows, const T* zeros, const T* packed,
               int64_t kw, int64_t taps_all, int64_t b_size, int64_t d_rt, int64_t chunks,
               T* out_row, int64_t out_step) {
  constexpr int L = Lanes<T>::L;
  const int ntaps = r.nrows * r.ncols;
  const T* ws[kMaxTaps];
  auto weights = [&](int64_t o0) {  // the taps' weights of the chunk at o0
    for (int a = 0; a < r.nrows; ++a)
      for (int c = 0; c < r.ncols; ++c)
        ws[a * r.ncols + c] = packed + ((o0 / L) * taps_all + r.rows[a] * kw + r.cols[c]) * b_size * L;
  };
  const T* ins[kPixels * kMaxTaps];
  auto fill = [&](int64_t q0, int np) {  // the input pixels of pixels [q0, q0 + np)
    for (int p = 0; p < np; ++p)
      for (int c = 0; c < r.ncols; ++c) {
        const int64_t iw = (q0 + p) * r.step + r.offsets[c];
        const bool inside = iw >= 0 && iw < r.in_width;
        for (int a = 0; a < r.nrows; ++a)
          ins[p * ntaps + a * r.ncols + c] = inside ? in_rows[a] + iw * r.in_channels : zeros;
      }
  };
  // Two chunks a block where they are one group's (their inputs shared): 12 accumulators.
  const int64_t d = D > 0 ? D : d_rt;
  const bool pair = kWide && d % (2 * L) == 0;
  const int64_t next = taps_all * b_size * L;  // the next chunk's weights, packed
  auto block = [&](int64_t q0, int np, int64_t o0) {
    T* out = out_row + q0 * out_step;
#define SE_FLAX_BLOCK(NP, CH) \
  return Block<T, D, B, kWide, NP, CH>(ins, ws, ntaps, b_size, d_rt, next, o0, out, out_step)
    if constexpr (kWide) {
      if (pair) switch (np) {
          case 6: SE_FLAX_BLOCK(6, 2);
          case 5: SE_FLAX_BLOCK(5, 2);
          case 4: SE_FLAX_BLOCK(4, 2);
          case 3: SE_FLAX_BLOCK(3, 2);
          case 2: SE_FLAX_BLOCK(2, 2);
          default: SE_FLAX_BLOCK(1, 2);
        }
    }
    switch (np) {
      case 6: SE_FLAX_BLOCK(6, 1);
      case 5: SE_FLAX_BLOCK(5, 1);
      case 4: SE_FLAX_BLOCK(4, 1);
      case 3: SE_FLAX_BLOCK(3, 1);
      case 2: SE_FLAX_BLOCK(2, 1);
      default: SE_FLAX_BLOCK(1, 1);
    }
#undef SE_FLAX_BLOCK
  };
  // The row in blocks of at most kPixels pixels, as even as can be (7 pixels: 4 and 3, not 6
  // and 1, whose one accumulator would wait on each FMA).
  const int64_t nblocks = (r.count + kPixels - 1) / kPixels;
  auto size_of = [&](int64_t k) { return int(r.count / nblocks + (k < r.count % nblocks)); };
  // Which loop is outer: the weights of all chunks (taps x b_size x chunks * L) against a
  // quarter of a typical L2.
  const int64_t end = chunks * L;
  const int64_t step = pair ? 2 * L : L;
  if (int64_t(ntaps) * b_size * end * int64_t(sizeof(T)) > (128 << 10)) {
    for (int64_t o0 = 0; o0 < end; o0 += step) {  // each chunk's weights stay in L1 over the row
      weights(o0);
      for (int64_t k = 0, q0 = 0; k < nblocks; q0 += size_of(k), ++k) {
        fill(q0, size_of(k));
        block(q0, size_of(k), o0);
      }
    }
  } else {
    for (int64_t k = 0, q0 = 0; k < nblocks; q0 += size_of(k), ++k) {  // inputs stay in L1
      fill(q0, size_of(k));
      for (int64_t o0 = 0; o0 < end; o0 += step) {
        weights(o0);
        block(q0, size_of(k), o0);
      }
    }
  }
}

// dk[(b0 + b) * ldk + o0 : + L] += sum_q Gather(x + q * x_step, b0 + b) * dy[q * dy_step + o0 : + L]
// over one output row's pixels q in [first, last) of one tap, for b < NB: NB b's of one chunk
// in registers.
template <typename T, int D, int B, bool kWide, int NB>
inline void OuterBlock(const T* x, int64_t x_step, const T* dy, int64_t dy_step, int64_t first,
                       int64_t last, int64_t b0, int64_t b_size, int64_t d_rt, int64_t o0,
                       T* dk, int64_t ldk) {
  typedef Lanes<T> S;
  constexpr bool kSpread = !kWide && B == D && 2 * D == S::L && NB == B;
  typename S::V acc[NB][2];
  for (int b = 0; b < NB; ++b) acc[b][0] = acc[b][1] = S::Zero();
  auto pixel = [&](int64_t q, int e) {
    const typename S::V g = S::Load(dy + q * dy_step + o0);
    const T* xq = x + q * x_step;
    if constexpr (kSpread) {  // the chunk's 2 * B inputs in one load, spread per b
      const typename S::V xv = S::Load(xq + o0);
      for (int b = 0; b < NB; ++b) acc[b][e] = S::Fma(S::template Spread<D>(xv, b), g, acc[b][e]);
    } else {
      for (int b = 0; b < NB; ++b)
        acc[b][e] = S::Fma(Gather<T, D, B, kWide>(xq, o0, d_rt, b_size, b0 + b), g, acc[b][e]);
    }
  };
  int64_t q = first;
  for (; q + 1 < last; q += 2) {
    pixel(q, 0);
    pixel(q + 1, 1);
  }
  if (q < last) pixel(q, 0);
  for (int b = 0; b < NB; ++b) {
    T* p = dk + (b0 + b) * ldk + o0;
    S::Store(p, S::Add(S::Load(p), S::Add(acc[b][0], acc[b][1])));
  }
}

// ---------------------------------------------------------------------------------------
// The three passes, for one compile-time inner width D (0: any). kVector: channels fill
// whole vector chunks (the blocks above); else the scalar per-pixel products.

template <typename T, int D, int B, bool kVector, bool kWide>
void Forward(ffi::ThreadPool& pool, const Geometry& g, const T* x, const T* k, T* y) {
  std::vector<int64_t> cols(g.kw), offsets(g.kw);
  for (int64_t j = 0; j < g.kw; ++j) cols[j] = j, offsets[j] = j * g.dw - g.pl;
  const std::vector<T> zeros(kVector ? g.c : 0, T(0));  // what taps outside the input read
  const std::vector<T> packed = kVector ? Pack(k, g.kh * g.kw, g.cg, g.o) : std::vector<T>();
  ParallelRows(pool, g.n * g.ho, [&](int64_t row) {
    const int64_t n = row / g.ho, oh = row % g.ho;
    T* yrow = y + row * g.wo * g.o;
    if constexpr (kVector) {
      std::vector<int64_t> rows;
      std::vector<const T*> in_rows;
      for (int64_t i = 0; i < g.kh; ++i) {
        const int64_t ih = oh * g.sh - g.pt + i * g.dh;
        if (ih < 0 || ih >= g.h) continue;
        rows.push_back(i);
        in_rows.push_back(x + (n * g.h + ih) * g.w * g.c);
      }
      Row r{rows.data(), int(rows.size()), cols.data(), offsets.data(), int(g.kw),
            g.sw, g.w, g.c, g.wo};
      RowBlocks<T, D, B, kWide>(r, in_rows.data(), zeros.data(), packed.data(), g.kw, g.kh * g.kw,
                             g.cg, g.og, g.o / Lanes<T>::L, yrow, g.o);
      return;
    }
    std::fill(yrow, yrow + g.wo * g.o, T(0));
    for (int64_t i = 0; i < g.kh; ++i) {
      const int64_t ih = oh * g.sh - g.pt + i * g.dh;
      if (ih < 0 || ih >= g.h) continue;
      const T* xrow = x + (n * g.h + ih) * g.w * g.c;
      for (int64_t j = 0; j < g.kw; ++j) {
        const T* tap = k + (i * g.kw + j) * g.cg * g.o;
        int64_t first, last;
        ValidColumns(g.w, g.wo, g.sw, g.pl, j * g.dw, &first, &last);
        for (int64_t ow = first; ow < last; ++ow) {
          const int64_t iw = ow * g.sw - g.pl + j * g.dw;
          Product<T, D>(xrow + iw * g.c, tap, yrow + ow * g.o, g.groups, g.cg, g.og, g.o);
        }
      }
    }
  });
}

// dx from dy and the kernel transposed per group to (KH, KW, Og, C): each input row gathers
// the output rows and taps that read it. Vector blocks run over the input columns
// iw = r + q * sw of one residue r, which read output columns q + (r + pl - j * dw) / sw.
template <typename T, int D, int B, bool kVector, bool kWide>
void InputGrad(ffi::ThreadPool& pool, const Geometry& g, const T* dy, const T* k, T* dx) {
  std::vector<T> kt(g.kh * g.kw * g.og * g.c);
  for (int64_t t = 0; t < g.kh * g.kw; ++t)
    for (int64_t b = 0; b < g.cg; ++b)
      for (int64_t gr = 0; gr < g.groups; ++gr)
        for (int64_t d = 0; d < g.og; ++d)
          kt[(t * g.og + d) * g.c + gr * g.cg + b] = k[(t * g.cg + b) * g.o + gr * g.og + d];
  const T* ktp = kt.data();
  const std::vector<T> zeros(kVector ? g.o : 0, T(0));  // what taps outside dy read
  const std::vector<T> packed = kVector ? Pack(ktp, g.kh * g.kw, g.og, g.c) : std::vector<T>();
  ParallelRows(pool, g.n * g.h, [&](int64_t row) {
    const int64_t n = row / g.h, ih = row % g.h;
    T* dxrow = dx + row * g.w * g.c;
    if constexpr (kVector) {
      std::vector<int64_t> rows;
      std::vector<const T*> in_rows;
      for (int64_t i = 0; i < g.kh; ++i) {
        const int64_t t = ih + g.pt - i * g.dh;  // oh * sh
        if (t < 0 || t % g.sh != 0 || t / g.sh >= g.ho) continue;
        rows.push_back(i);
        in_rows.push_back(dy + (n * g.ho + t / g.sh) * g.wo * g.o);
      }
      for (int64_t res = 0; res < std::min(g.sw, g.w); ++res) {
        std::vector<int64_t> cols, offsets;
        for (int64_t j = 0; j < g.kw; ++j) {
          const int64_t t = res + g.pl - j * g.dw;  // ow * sw at q = 0
          if (t % g.sw != 0) continue;
          cols.push_back(j);
          offsets.push_back(t / g.sw);
        }
        Row r{rows.data(), int(rows.size()), cols.data(), offsets.data(), int(cols.size()),
              1, g.wo, g.o, (g.w - res + g.sw - 1) / g.sw};
        RowBlocks<T, D, B, kWide>(r, in_rows.data(), zeros.data(), packed.data(), g.kw,
                               g.kh * g.kw, g.og, g.cg, g.c / Lanes<T>::L, dxrow + res * g.c,
                               g.sw * g.c);
      }
      return;
    }
    std::fill(dxrow, dxrow + g.w * g.c, T(0));
    for (int64_t i = 0; i < g.kh; ++i) {
      const int64_t t = ih + g.pt - i * g.dh;  // oh * sh
      if (t < 0 || t % g.sh != 0 || t / g.sh >= g.ho) continue;
      const T* dyrow = dy + (n * g.ho + t / g.sh) * g.wo * g.o;
      for (int64_t j = 0; j < g.kw; ++j) {
        const T* tap = ktp + (i * g.kw + j) * g.og * g.c;
        int64_t first, last;
        ValidColumns(g.w, g.wo, g.sw, g.pl, j * g.dw, &first, &last);
        for (int64_t ow = first; ow < last; ++ow) {
          const int64_t iw = ow * g.sw - g.pl + j * g.dw;
          Product<T, D>(dyrow + ow * g.o, tap, dxrow + iw * g.c, g.groups, g.og, g.cg, g.c);
        }
      }
    }
  });
}

// dk: sums over fixed blocks of output rows (each row's sum in registers, then added to its
// block's), the blocks' sums added in order.
// dk: sums over fixed blocks of output rows (each row's sums in registers, then added to its
// block's), the blocks' sums added in order. (Measured slower: tiles of rows summed in
// registers, and chunks of channels on threads; both sweep the inputs more often.)
template <typename T, int D, int B, bool kVector, bool kWide>
void KernelGrad(ffi::ThreadPool& pool, const Geometry& g, const T* x, const T* dy, T* dk) {
  constexpr int L = Lanes<T>::L;
  constexpr int NB = B > 0 && B <= 4 ? B : 4;  // b's in registers at a time
  const int64_t size = g.kh * g.kw * g.cg * g.o;
  const int64_t rows = g.n * g.ho;
  const int64_t blocks = std::min<int64_t>(rows, 8);
  std::vector<T> sums(blocks * size, T(0));
  ParallelRows(pool, blocks, [&](int64_t block) {
    std::vector<T> part(kVector ? 0 : size);
    T* total = sums.data() + block * size;
    for (int64_t row = block * rows / blocks; row < (block + 1) * rows / blocks; ++row) {
      const int64_t n = row / g.ho, oh = row % g.ho;
      const T* dyrow = dy + row * g.wo * g.o;
      if (!kVector) std::fill(part.begin(), part.end(), T(0));
      for (int64_t i = 0; i < g.kh; ++i) {
        const int64_t ih = oh * g.sh - g.pt + i * g.dh;
        if (ih < 0 || ih >= g.h) continue;
        const T* xrow = x + (n * g.h + ih) * g.w * g.c;
        for (int64_t j = 0; j < g.kw; ++j) {
          int64_t first, last;
          ValidColumns(g.w, g.wo, g.sw, g.pl, j * g.dw, &first, &last);
          if constexpr (kVector) {
            T* tap = total + (i * g.kw + j) * g.cg * g.o;
            const T* x0 = xrow + (j * g.dw - g.pl) * g.c;  // + ow * sw * C: in range
            for (int64_t o0 = 0; o0 < g.o; o0 += L) {
              int64_t b0 = 0;
              for (; b0 + NB <= g.cg; b0 += NB)
                OuterBlock<T, D, B, kWide, NB>(x0, g.sw * g.c, dyrow, g.o, first, last, b0,
                                               g.cg, g.og, o0, tap, g.o);
              for (; b0 < g.cg; ++b0)
                OuterBlock<T, D, B, kWide, 1>(x0, g.sw * g.c, dyrow, g.o, first, last, b0, g.cg,
                                              g.og, o0, tap, g.o);
            }
          } else {
            T* tap = part.data() + (i * g.kw + j) * g.cg * g.o;
            for (int64_t ow = first; ow < last; ++ow) {
              const int64_t iw = ow * g.sw - g.pl + j * g.dw;
              Outer<T, D>(xrow + iw * g.c, dyrow + ow * g.o, tap, g.groups, g.cg, g.og, g.o);
            }
          }
        }
      }
      if (!kVector)
        for (int64_t e = 0; e < size; ++e) total[e] += part[e];
    }
  });
  std::fill(dk, dk + size, T(0));
  for (int64_t b = 0; b < blocks; ++b)
    for (int64_t e = 0; e < size; ++e) dk[e] += sums[b * size + e];
}

enum class Pass { kForward, kInputGrad, kKernelGrad };

template <typename T, int D, int B, bool kVector, bool kWide>
void Run(Pass pass, ffi::ThreadPool& pool, const Geometry& g, const T* a, const T* b, T* out) {
  switch (pass) {
    case Pass::kForward: return Forward<T, D, B, kVector, kWide>(pool, g, a, b, out);
    case Pass::kInputGrad: return InputGrad<T, D, B, kVector, kWide>(pool, g, a, b, out);
    case Pass::kKernelGrad: return KernelGrad<T, D, B, kVector, kWide>(pool, g, a, b, out);
  }
}

template <typename T, int D, int B>
void RunWidth(Pass pass, ffi::ThreadPool& pool, const Geometry& g, const T* a, const T* b,
              T* out) {
  constexpr int L = Lanes<T>::L;
  // The vector blocks' chunks: over the outputs' channels (O; C for the input gradient), each
  // D wide group in one chunk or many.
  const int64_t width = pass == Pass::kInputGrad ? g.c : g.o;
  const int64_t d = pass == Pass::kInputGrad ? g.cg : g.og;
  if (!kHaveVectors || width % L != 0 || g.kh * g.kw > kMaxTaps) return Run<T, D, B, false, false>(pass, pool, g, a, b, out);
  if (d % L == 0) return Run<T, D, B, true, true>(pass, pool, g, a, b, out);
  return Run<T, D, B, true, false>(pass, pool, g, a, b, out);
}

// D, the width of a group on the side the vector chunks run over (Og; Cg for the input
// gradient), is a compile-time constant for the common ones.
template <typename T>
void Dispatch(Pass pass, ffi::ThreadPool& pool, const Geometry& g, const T* a, const T* b,
              T* out) {
  const int64_t inner = pass == Pass::kInputGrad ? g.cg : g.og;
  const int64_t outer = pass == Pass::kInputGrad ? g.og : g.cg;
  if (inner == outer) switch (inner) {  // square groups: both widths compile-time constants
      case 1: return RunWidth<T, 1, 1>(pass, pool, g, a, b, out);
      case 2: return RunWidth<T, 2, 2>(pass, pool, g, a, b, out);
      case 4: return RunWidth<T, 4, 4>(pass, pool, g, a, b, out);
      case 8: return RunWidth<T, 8, 8>(pass, pool, g, a, b, out);
      case 16: return RunWidth<T, 16, 16>(pass, pool, g, a, b, out);
      case 24: return RunWidth<T, 24, 24>(pass, pool, g, a, b, out);
      case 32: return RunWidth<T, 32, 32>(pass, pool, g, a, b, out);
      case 64: return RunWidth<T, 64, 64>(pass, pool, g, a, b, out);
      default: break;
    }
  return RunWidth<T, 0, 0>(pass, pool, g, a, b, out);
}

std::string Dims(const ffi::AnyBuffer& buffer) {
  std::string s = "(";
  auto dims = buffer.dimensions();
  for (size_t i = 0; i < dims.size(); ++i) s += (i ? ", " : "") + std::to_string(dims[i]);
  return s + ")";
}

// Checks the three buffers against each other and fills the geometry. x, kernel and y are
// the forward pass's (for a gradient, one of them is the result).
ffi::Error Describe(const ffi::AnyBuffer& x, const ffi::AnyBuffer& k, const ffi::AnyBuffer& y,
                    int64_t groups, int64_t sh, int64_t sw, int64_t pt, int64_t pl, int64_t dh,
                    int64_t dw, Geometry* g) {
  if (x.dimensions().size() != 4 || k.dimensions().size() != 4 || y.dimensions().size() != 4)
    return ffi::Error::InvalidArgument("se_flax grouped conv: needs 4-D input " + Dims(x) +
                                       ", kernel " + Dims(k) + " and output " + Dims(y));
  if (x.element_type() != k.element_type() || x.element_type() != y.element_type())
    return ffi::Error::InvalidArgument("se_flax grouped conv: dtypes differ");
  auto xd = x.dimensions(), kd = k.dimensions(), yd = y.dimensions();
  *g = Geometry{xd[0], xd[1], xd[2], xd[3], kd[0], kd[1], kd[2], yd[1], yd[2], yd[3],
                groups, 0, sh, sw, pt, pl, dh, dw};
  if (groups < 1 || sh < 1 || sw < 1 || dh < 1 || dw < 1 || pt < 0 || pl < 0 ||
      g->c != groups * g->cg || g->o % groups != 0 || yd[0] != g->n || kd[3] != g->o)
    return ffi::Error::InvalidArgument(
        "se_flax grouped conv: inconsistent shapes, input " + Dims(x) + ", kernel " + Dims(k) +
        ", output " + Dims(y) + ", groups " + std::to_string(groups));
  g->og = g->o / groups;
  return ffi::Error::Success();
}

ffi::Error Execute(Pass pass, ffi::ThreadPool pool, const ffi::AnyBuffer& x,
                   const ffi::AnyBuffer& k, const ffi::AnyBuffer& y, const void* a,
                   const void* b, void* out, int64_t groups, int64_t sh, int64_t sw, int64_t pt,
                   int64_t pl, int64_t dh, int64_t dw) {
  Geometry g;
  if (ffi::Error error = Describe(x, k, y, groups, sh, sw, pt, pl, dh, dw, &g); error.failure())
    return error;
  switch (x.element_type()) {
    case ffi::DataType::F32:
      Dispatch<float>(pass, pool, g, static_cast<const float*>(a), static_cast<const float*>(b),
                      static_cast<float*>(out));
      return ffi::Error::Success();
    case ffi::DataType::F64:
      Dispatch<double>(pass, pool, g, static_cast<const double*>(a),
                       static_cast<const double*>(b), static_cast<double*>(out));
      return ffi::Error::Success();
    default:
      return ffi::Error::InvalidArgument("se_flax grouped conv: float32 or float64 only");
  }
}

ffi::Error ForwardImpl(ffi::ThreadPool pool, ffi::AnyBuffer x, ffi::AnyBuffer k,
                       ffi::Result<ffi::AnyBuffer> y, int64_t groups, int64_t sh, int64_t sw,
                       int64_t pt, int64_t pl, int64_t dh, int64_t dw) {
  return Execute(Pass::kForward, pool, x, k, *y, x.untyped_data(), k.untyped_data(),
                 y->untyped_data(), groups, sh, sw, pt, pl, dh, dw);
}

ffi::Error InputGradImpl(ffi::ThreadPool pool, ffi::AnyBuffer dy, ffi::AnyBuffer k,
                         ffi::Result<ffi::AnyBuffer> dx, int64_t groups, int64_t sh, int64_t sw,
                         int64_t pt, int64_t pl, int64_t dh, int64_t dw) {
  return Execute(Pass::kInputGrad, pool, *dx, k, dy, dy.untyped_data(), k.untyped_data(),
                 dx->untyped_data(), groups, sh, sw, pt, pl, dh, dw);
}

ffi::Error KernelGradImpl(ffi::ThreadPool pool, ffi::AnyBuffer x, ffi::AnyBuffer dy,
                          ffi::Result<ffi::AnyBuffer> dk, int64_t groups, int64_t sh, int64_t sw,
                          int64_t pt, int64_t pl, int64_t dh, int64_t dw) {
  return Execute(Pass::kKernelGrad, pool, x, *dk, dy, x.untyped_data(), dy.untyped_data(),
                 dk->untyped_data(), groups, sh, sw, pt, pl, dh, dw);
}

}  // namespace

#define SE_FLAX_BINDING                                                                  \
  ffi::Ffi::Bind()                                                                       \
      .Ctx<ffi::ThreadPool>()                                                            \
      .Arg<ffi::AnyBuffer>()                                                             \
      .Arg<ffi::AnyBuffer>()                                                             \
      .Ret<ffi::AnyBuffer>()                                                             \
      .Attr<int64_t>("groups")                                                           \
      .Attr<int64_t>("sh")                                                               \
      .Attr<int64_t>("sw")                                                               \
      .Attr<int64_t>("pt")                                                               \
      .Attr<int64_t>("pl")                                                               \
      .Attr<int64_t>("dh")                                                               \
      .Attr<int64_t>("dw")

// The handlers' symbols, exported from a library built with -fvisibility=hidden.
#define SE_FLAX_EXPORT(name) \
  extern "C" __attribute__((visibility("default"))) XLA_FFI_Error* name(XLA_FFI_CallFrame*)
SE_FLAX_EXPORT(SeFlaxGroupedConv);
SE_FLAX_EXPORT(SeFlaxGroupedConvInputGrad);
SE_FLAX_EXPORT(SeFlaxGroupedConvKernelGrad);

XLA_FFI_DEFINE_HANDLER_SYMBOL(SeFlaxGroupedConv, ForwardImpl, SE_FLAX_BINDING);
XLA_FFI_DEFINE_HANDLER_SYMBOL(SeFlaxGroupedConvInputGrad, InputGradImpl, SE_FLAX_BINDING);
XLA_FFI_DEFINE_HANDLER_SYMBOL(SeFlaxGroupedConvKernelGrad, KernelGradImpl, SE_FLAX_BINDING);

// A module of nothing, so that importing the library (as module walkers do) is harmless: it is
// loaded with ctypes (se_flax/_grouped.py).
static struct PyModuleDef kModule = {PyModuleDef_HEAD_INIT, "_grouped_conv_kernels",
                                     "se_flax's CPU kernels: XLA FFI handlers, loaded with ctypes",
                                     -1, nullptr};
extern "C" __attribute__((visibility("default"))) PyObject* PyInit__grouped_conv_kernels() {
  return PyModule_Create(&kModule);
}
