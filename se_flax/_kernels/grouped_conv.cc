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
#include <type_traits>
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

template <typename T, int VB>
struct Lanes;

template <>
struct Lanes<float, 32> {
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
  static V Spread(V v, int b) {  // lane l: v[(l / D) * D + b], the indices in registers
    const __m256i base = _mm256_setr_epi32(0, (1 / D) * D, (2 / D) * D, (3 / D) * D,
                                           (4 / D) * D, (5 / D) * D, (6 / D) * D, (7 / D) * D);
    return _mm256_permutevar8x32_ps(v, _mm256_add_epi32(base, _mm256_set1_epi32(b)));
  }
};

template <>
struct Lanes<double, 32> {
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
    constexpr int s1 = (1 / D) * D, s2 = (2 / D) * D, s3 = (3 / D) * D;
    const __m256i base = _mm256_setr_epi32(0, 1, 2 * s1, 2 * s1 + 1, 2 * s2, 2 * s2 + 1,
                                           2 * s3, 2 * s3 + 1);
    const __m256i idx = _mm256_add_epi32(base, _mm256_set1_epi32(2 * b));
    return _mm256_castps_pd(_mm256_permutevar8x32_ps(_mm256_castpd_ps(v), idx));
  }
};
#if defined(__AVX512F__)
// 64-byte vectors (16 floats, 8 doubles), where the chunks' groups allow (RunWidth).
template <>
struct Lanes<float, 64> {
  static constexpr int L = 16;
  typedef __m512 V;
  static V Zero() { return _mm512_setzero_ps(); }
  static V Set1(float s) { return _mm512_set1_ps(s); }
  static V Load(const float* p) { return _mm512_loadu_ps(p); }
  static void Store(float* p, V v) { _mm512_storeu_ps(p, v); }
  static V Fma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
  static V Add(V a, V b) { return _mm512_add_ps(a, b); }
  static V Pairs(const float* s) {  // lanes s[0] x8, s[1] x8
    return _mm512_mask_blend_ps(__mmask16(0xFF00), _mm512_set1_ps(s[0]), _mm512_set1_ps(s[1]));
  }
  template <int D>
  static V Spread(V v, int b) {  // lane l: v[(l / D) * D + b]
    // The indices in registers: built in memory per b (two 32-byte stores read back as one
    // 64-byte load, which store forwarding cannot serve) they stalled every b (measured: half
    // of a 4- or 8-wide grouped convolution's time).
    const __m512i base = _mm512_setr_epi32(
        0, (1 / D) * D, (2 / D) * D, (3 / D) * D, (4 / D) * D, (5 / D) * D, (6 / D) * D,
        (7 / D) * D, (8 / D) * D, (9 / D) * D, (10 / D) * D, (11 / D) * D, (12 / D) * D,
        (13 / D) * D, (14 / D) * D, (15 / D) * D);
    return _mm512_permutexvar_ps(_mm512_add_epi32(base, _mm512_set1_epi32(b)), v);
  }
};

template <>
struct Lanes<double, 64> {
  static constexpr int L = 8;
  typedef __m512d V;
  static V Zero() { return _mm512_setzero_pd(); }
  static V Set1(double s) { return _mm512_set1_pd(s); }
  static V Load(const double* p) { return _mm512_loadu_pd(p); }
  static void Store(double* p, V v) { _mm512_storeu_pd(p, v); }
  static V Fma(V a, V b, V c) { return _mm512_fmadd_pd(a, b, c); }
  static V Add(V a, V b) { return _mm512_add_pd(a, b); }
  static V Pairs(const double* s) {  // lanes s[0] x4, s[1] x4
    return _mm512_mask_blend_pd(__mmask8(0xF0), _mm512_set1_pd(s[0]), _mm512_set1_pd(s[1]));
  }
  template <int D>
  static V Spread(V v, int b) {  // lane l: v[(l / D) * D + b], the indices in registers
    const __m512i base = _mm512_setr_epi64(0, (1 / D) * D, (2 / D) * D, (3 / D) * D,
                                           (4 / D) * D, (5 / D) * D, (6 / D) * D, (7 / D) * D);
    return _mm512_permutexvar_pd(_mm512_add_epi64(base, _mm512_set1_epi64(b)), v);
  }
};
#endif
#else
constexpr bool kHaveVectors = false;  // the scalar products only

template <typename T, int VB>
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
template <typename T, int VB, int D, int B, bool kWide>
inline typename Lanes<T, VB>::V Gather(const T* in, int64_t o0, int64_t d_rt, int64_t b_size,
                                   int64_t b) {
  typedef Lanes<T, VB> S;
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
    alignas(64) T lanes[L];
    for (int l = 0; l < L; ++l) lanes[l] = in[((o0 + l) / d) * b_size + b];
    return S::Load(lanes);
  }
}

// The NP pixels' inputs of tap t: each pixel's base + the tap's offset (tap_offsets), else
// the pixel's pointer for that tap (in[p * ntaps + t]).
template <typename T, int NP>
inline void TapInputs(const T* const* in, const int64_t* tap_offsets, int ntaps, int t,
                      const T** x) {
  if (tap_offsets)  // in: each pixel's base, the same offset a tap
    for (int p = 0; p < NP; ++p) x[p] = in[p] + tap_offsets[t];
  else  // in: each pixel's taps
    for (int p = 0; p < NP; ++p) x[p] = in[p * ntaps + t];
}

// Groups one and a half chunks wide (24 floats in 64-byte vectors): a block holds two groups
// in three chunks' lanes, the middle chunk half of each (SplitBlock).
template <typename T, int VB, int D, bool kWide>
constexpr bool Split() {
  return !kWide && D > 0 && 2 * D == 3 * Lanes<T, VB>::L && Lanes<T, VB>::L >= 16;
}

#if defined(__AVX512F__)
// Two groups of 24 floats in 48 lanes: a 64-byte chunk of each and, between them, the last 8
// lanes of the first and the first 8 of the second as two 32-byte halves, each FMA'd with the
// low half of its group's broadcast. (A blend of the two broadcasts into one 64-byte chunk
// costs a vector-port operation per pixel; 32-byte FMAs run on the ports a 64-byte one leaves.)
// kTail: the last group of an odd count, alone (its 64-byte chunk and its first half).
template <int NP, bool kTail>
inline void SplitBlock(const float* const* in, const float* const* w, int ntaps, int64_t bs,
                       int64_t next, int64_t o0, float* out, int64_t out_step,
                       const int64_t* tap_offsets) {
  __m512 a0[NP], a2[NP];
  __m256 a1[NP], b1[NP];
  for (int p = 0; p < NP; ++p) {
    a0[p] = a2[p] = _mm512_setzero_ps();
    a1[p] = b1[p] = _mm256_setzero_ps();
  }
  const int64_t i0 = (o0 / 24) * bs, i1 = i0 + bs;
  for (int t = 0; t < ntaps; ++t) {
    const float* x[NP];
    TapInputs<float, NP>(in, tap_offsets, ntaps, t, x);
    const float* wt = w[t];
    for (int64_t b = 0; b < bs; ++b) {
      const __m512 w0 = _mm512_loadu_ps(wt + b * 16);
      const __m256 w1 = _mm256_loadu_ps(wt + next + b * 16);
      if constexpr (kTail) {
        for (int p = 0; p < NP; ++p) {
          const __m512 x0 = _mm512_set1_ps(x[p][i0 + b]);
          a0[p] = _mm512_fmadd_ps(x0, w0, a0[p]);
          a1[p] = _mm256_fmadd_ps(_mm512_castps512_ps256(x0), w1, a1[p]);
        }
        continue;
      }
      const __m512 w2 = _mm512_loadu_ps(wt + 2 * next + b * 16);
      const __m256 v1 = _mm256_loadu_ps(wt + next + b * 16 + 8);
      for (int p = 0; p < NP; ++p) {
        const __m512 x0 = _mm512_set1_ps(x[p][i0 + b]), x1 = _mm512_set1_ps(x[p][i1 + b]);
        a0[p] = _mm512_fmadd_ps(x0, w0, a0[p]);
        a1[p] = _mm256_fmadd_ps(_mm512_castps512_ps256(x0), w1, a1[p]);
        b1[p] = _mm256_fmadd_ps(_mm512_castps512_ps256(x1), v1, b1[p]);
        a2[p] = _mm512_fmadd_ps(x1, w2, a2[p]);
      }
    }
  }
  for (int p = 0; p < NP; ++p) {
    float* y = out + p * out_step + o0;
    _mm512_storeu_ps(y, a0[p]);
    _mm256_storeu_ps(y + 16, a1[p]);
    if constexpr (kTail) continue;
    _mm256_storeu_ps(y + 24, b1[p]);
    _mm512_storeu_ps(y + 32, a2[p]);
  }
}
#endif

// out[p * out_step + o0 + c * L : + L] = sum_t sum_b Gather(in[p * ntaps + t], b) *
// w[t][c * next + b * L : + L] for p < NP, c < CH: NP pixels of CH chunks in registers, each
// the sum over ntaps taps (a tap outside the input points at zeros); w[t], the chunk's weights
// of tap t, packed (b_size, L), the next chunk's `next` further. Two chunks of one group
// (kWide) share each input's broadcast. end: where the block's row of channels ends (two split
// groups a block: the last may hold one).
template <typename T, int VB, int D, int B, bool kWide, int NP, int CH>
inline void Block(const T* const* in, const T* const* w, int ntaps, int64_t b_size,
                  int64_t d_rt, int64_t next, int64_t o0, T* out, int64_t out_step,
                  const int64_t* tap_offsets, int64_t end) {
  typedef Lanes<T, VB> S;
  // several square groups a chunk: their inputs in one load
  constexpr bool kSpread = !kWide && D > 1 && B == D && D < S::L && S::L % D == 0;
  constexpr bool kSplit = Split<T, VB, D, kWide>();
  static_assert(CH == 1 || kWide || (kSplit && CH == 3),
                "chunks a block share their inputs: one group's, or two split ones'");
  const int64_t bs = B > 0 ? B : b_size;
#if defined(__AVX512F__)
  if constexpr (kSplit) {
    if (o0 + 2 * D > end)  // the last group of an odd count
      return SplitBlock<NP, true>(in, w, ntaps, bs, next, o0, out, out_step, tap_offsets);
    return SplitBlock<NP, false>(in, w, ntaps, bs, next, o0, out, out_step, tap_offsets);
  }
#endif
  typename S::V acc[NP][CH];
  for (int p = 0; p < NP; ++p)
    for (int c = 0; c < CH; ++c) acc[p][c] = S::Zero();
  for (int t = 0; t < ntaps; ++t) {
    const T* x[NP];
    TapInputs<T, NP>(in, tap_offsets, ntaps, t, x);
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
          const typename S::V xv = Gather<T, VB, D, B, kWide>(x[p], o0, d_rt, bs, b);
          for (int c = 0; c < CH; ++c) acc[p][c] = S::Fma(xv, wv[c], acc[p][c]);
        }
      }
    }
  }
  for (int p = 0; p < NP; ++p)
    for (int c = 0; c < CH; ++c) S::Store(out + p * out_step + o0 + c * S::L, acc[p][c]);
}

constexpr int kPixels = 8;  // pixels per block at most (Pixels: per vector width and chunks)

// The pixels a block holds: enough accumulators to cover the FMAs' latency, with the weights
// and an input in registers (16 of them with 32-byte vectors, 32 with 64-byte ones; AVX-512
// builds have 32 of either width).
template <int VB, int CH>
constexpr int Pixels() {
#if defined(__AVX512F__)
  return CH == 3 ? 6 : (VB == 64 || CH == 2 ? 8 : 6);
#else
  return CH == 3 ? 4 : 6;
#endif
}
constexpr int kMaxTaps = 64;  // kernels of up to 64 taps run in vector blocks

// The chunks of one group a block computes at once (their inputs shared): two or three
// where a group fills that many, else one.
template <typename T, int VB, bool kWide>
inline int ChunksAGroup(int64_t d) {
  constexpr int L = Lanes<T, VB>::L;
  return !kWide ? 1 : d % (2 * L) == 0 ? 2 : d % (3 * L) == 0 ? 3 : 1;
}

// The chunks a block computes at once: ChunksAGroup, or three for two split groups.
template <typename T, int VB, int D, bool kWide>
inline int ChunksABlock(int64_t d) {
  return Split<T, VB, D, kWide>() ? 3 : ChunksAGroup<T, VB, kWide>(d);
}

template <int VB>
inline int MostPixels(int ch) {
  return ch == 2 ? Pixels<VB, 2>() : ch == 3 ? Pixels<VB, 3>() : Pixels<VB, 1>();
}

// Block for a run-time count of pixels np <= Pixels<VB, CH>().
template <typename T, int VB, int D, int B, bool kWide, int CH>
inline void BlockOfPixels(int np, const T* const* in, const T* const* w, int ntaps, int64_t b_size,
                    int64_t d_rt, int64_t next, int64_t o0, T* out, int64_t out_step,
                    const int64_t* tap_offsets, int64_t end) {
#define SE_FLAX_BLOCK(NP)                                                                      \
  case NP:                                                                                     \
    if constexpr (NP <= Pixels<VB, CH>())                                                      \
      return Block<T, VB, D, B, kWide, NP, CH>(in, w, ntaps, b_size, d_rt, next, o0, out,      \
                                               out_step, tap_offsets, end);                    \
    return
  switch (np) {
    SE_FLAX_BLOCK(8);
    SE_FLAX_BLOCK(7);
    SE_FLAX_BLOCK(6);
    SE_FLAX_BLOCK(5);
    SE_FLAX_BLOCK(4);
    SE_FLAX_BLOCK(3);
    SE_FLAX_BLOCK(2);
    SE_FLAX_BLOCK(1);
  }
#undef SE_FLAX_BLOCK
}

// Block for a run-time count of chunks ch (ChunksABlock) and pixels np <= MostPixels(ch);
// end: where the channels end (for split groups, whose last block may hold one group).
template <typename T, int VB, int D, int B, bool kWide>
inline void BlockOf(int ch, int np, const T* const* in, const T* const* w, int ntaps,
                    int64_t b_size, int64_t d_rt, int64_t next, int64_t o0, T* out,
                    int64_t out_step, const int64_t* tap_offsets, int64_t end) {
  if constexpr (kWide)
    if (ch == 2)
      return BlockOfPixels<T, VB, D, B, kWide, 2>(np, in, w, ntaps, b_size, d_rt, next, o0, out,
                                                  out_step, tap_offsets, end);
  if constexpr (kWide || Split<T, VB, D, kWide>()) {
    if (ch == 3)
      return BlockOfPixels<T, VB, D, B, kWide, 3>(np, in, w, ntaps, b_size, d_rt, next, o0, out,
                                                  out_step, tap_offsets, end);
  }
  BlockOfPixels<T, VB, D, B, kWide, 1>(np, in, w, ntaps, b_size, d_rt, next, o0, out, out_step,
                                       tap_offsets, end);
}

// The kernel (taps, b_size, width) as (width / L, taps, b_size, L): each chunk's weights
// contiguous (unpacked, the L1 cache would hold few of them: they lie width apart).
template <typename T, int VB>
std::vector<T> Pack(const T* k, int64_t taps, int64_t b_size, int64_t width) {
  constexpr int L = Lanes<T, VB>::L;
  const int64_t chunks = (width + L - 1) / L;  // a last part chunk (split groups) zero-padded
  std::vector<T> packed(chunks * taps * b_size * L, T(0));
  for (int64_t ch = 0; ch < chunks; ++ch)
    for (int64_t t = 0; t < taps; ++t)
      for (int64_t b = 0; b < b_size; ++b)
        std::memcpy(&packed[((ch * taps + t) * b_size + b) * L], &k[(t * b_size + b) * width + ch * L],
                    std::min<int64_t>(L, width - ch * L) * sizeof(T));
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

template <typename T, int VB, int D, int B, bool kWide>
void RowBlocks(const Row& r, const T* const* in_rows, const T* zeros, const T* packed,
               int64_t kw, int64_t taps_all, int64_t b_size, int64_t d_rt, int64_t begin,
               int64_t end, T* out_row, int64_t out_step) {
  constexpr int L = Lanes<T, VB>::L;
  const int ntaps = r.nrows * r.ncols;
  const T* ws[kMaxTaps];
  auto weights = [&](int64_t o0) {  // the taps' weights of the chunk at o0
    for (int a = 0; a < r.nrows; ++a)
      for (int c = 0; c < r.ncols; ++c)
        ws[a * r.ncols + c] = packed + ((o0 / L) * taps_all + r.rows[a] * kw + r.cols[c]) * b_size * L;
  };
  // Pixels whose taps all lie inside the input row (q in [inner_lo, inner_hi)) read tap t at
  // their base pixel + offs[t] (the rows lie in one image, a fixed distance apart); the others
  // get a pointer a tap, to zeros where the tap is outside. (Filled a pointer a tap for every
  // pixel, the 147 taps of a 7x7 stem over 3 channels took a quarter of its time.)
  const T* ins[kPixels * kMaxTaps];
  int64_t offs[kMaxTaps];
  int64_t lo_off = 0, hi_off = 0;
  for (int c = 0; c < r.ncols; ++c) {
    lo_off = std::min(lo_off, r.offsets[c]), hi_off = std::max(hi_off, r.offsets[c]);
    for (int a = 0; a < r.nrows; ++a)
      offs[a * r.ncols + c] = (in_rows[a] - in_rows[0]) + r.offsets[c] * r.in_channels;
  }
  // q * step + lo_off >= 0 and q * step + hi_off < in_width
  const int64_t inner_lo = lo_off < 0 ? (-lo_off + r.step - 1) / r.step : 0;
  const int64_t inner_hi =
      r.in_width - hi_off <= 0 ? 0 : (r.in_width - hi_off - 1) / r.step + 1;
  bool inner = false;
  auto fill = [&](int64_t q0, int np) {  // the input pixels of pixels [q0, q0 + np)
    inner = ntaps > 0 && q0 >= inner_lo && q0 + np <= inner_hi;
    if (inner) {
      for (int p = 0; p < np; ++p) ins[p] = in_rows[0] + (q0 + p) * r.step * r.in_channels;
      return;
    }
    for (int p = 0; p < np; ++p)
      for (int c = 0; c < r.ncols; ++c) {
        const int64_t iw = (q0 + p) * r.step + r.offsets[c];
        const bool inside = iw >= 0 && iw < r.in_width;
        for (int a = 0; a < r.nrows; ++a)
          ins[p * ntaps + a * r.ncols + c] = inside ? in_rows[a] + iw * r.in_channels : zeros;
      }
  };
  // Two or three chunks a block where they are one group's (their inputs shared).
  const int64_t d = D > 0 ? D : d_rt;
  const int ch = ChunksABlock<T, VB, D, kWide>(d);
  const int64_t next = taps_all * b_size * L;  // the next chunk's weights, packed
  auto block = [&](int64_t q0, int np, int64_t o0) {
    BlockOf<T, VB, D, B, kWide>(ch, np, ins, ws, ntaps, b_size, d_rt, next, o0,
                                out_row + q0 * out_step, out_step, inner ? offs : nullptr, end);
  };
  // The row in blocks of at most Pixels() pixels, as even as can be (7 pixels: 4 and 3, not
  // 6 and 1, whose one accumulator would wait on each FMA).
  const int most = MostPixels<VB>(ch);
  const int64_t nblocks = (r.count + most - 1) / most;
  auto size_of = [&](int64_t k) { return int(r.count / nblocks + (k < r.count % nblocks)); };
  // Which loop is outer: the weights of the chunks (taps x b_size x channels) against a
  // quarter of a typical L2.
  const int64_t step = ch * L;
  if (int64_t(ntaps) * b_size * (end - begin) * int64_t(sizeof(T)) > (128 << 10)) {
    for (int64_t o0 = begin; o0 < end; o0 += step) {  // each chunk's weights stay in L1 over the row
      weights(o0);
      for (int64_t k = 0, q0 = 0; k < nblocks; q0 += size_of(k), ++k) {
        fill(q0, size_of(k));
        block(q0, size_of(k), o0);
      }
    }
  } else {
    for (int64_t k = 0, q0 = 0; k < nblocks; q0 += size_of(k), ++k) {  // inputs stay in L1
      fill(q0, size_of(k));
      for (int64_t o0 = begin; o0 < end; o0 += step) {
        weights(o0);
        block(q0, size_of(k), o0);
      }
    }
  }
}

// Depthwise (one input channel a group, one output channel a group): one output row of
// `count` pixels, chunk by chunk (the weights of a chunk, taps x L, stay in L1 over the row).
// Pixels whose taps all lie inside the input run in blocks of NP pixels x CH chunks (CH = 2:
// one cache line of channels), with no tests; the row's ends test each tap. The forward pass
// and the input gradient.
template <typename T, int VB, int NP, int CH>
inline void DepthwiseBlock(const Row& r, const T* const* in_rows, const T* packed,
                           const int64_t* tap_of, int64_t next, int64_t q, int64_t o0,
                           T* out, int64_t out_step, int j0, int j1) {
  typedef Lanes<T, VB> S;
  constexpr int L = S::L;
  typename S::V acc[NP][CH];
  for (int p = 0; p < NP; ++p)
    for (int c = 0; c < CH; ++c) acc[p][c] = S::Zero();
  const int64_t xs = r.step * r.in_channels;
  for (int a = 0; a < r.nrows; ++a) {
    for (int j = j0; j < j1; ++j) {  // the columns [j0, j1), inside the input
      const T* wt = packed + tap_of[a * r.ncols + j] * L;
      const T* x = in_rows[a] + (q * r.step + r.offsets[j]) * r.in_channels + o0;
      typename S::V wv[CH];
      for (int c = 0; c < CH; ++c) wv[c] = S::Load(wt + c * next);
      for (int p = 0; p < NP; ++p)
        for (int c = 0; c < CH; ++c) acc[p][c] = S::Fma(S::Load(x + p * xs + c * L), wv[c], acc[p][c]);
    }
  }
  for (int p = 0; p < NP; ++p)
    for (int c = 0; c < CH; ++c) S::Store(out + (q + p) * out_step + o0 + c * L, acc[p][c]);
}

template <typename T, int VB>
void DepthwiseRow(const Row& r, const T* const* in_rows, const T* packed, int64_t kw,
                  int64_t taps_all, int64_t chunks, T* out_row, int64_t out_step) {
  typedef Lanes<T, VB> S;
  constexpr int L = S::L;
  constexpr int NP = 4;
  int64_t tap_of[kMaxTaps];  // the packed tap of (a, j)
  for (int a = 0; a < r.nrows; ++a)
    for (int j = 0; j < r.ncols; ++j) tap_of[a * r.ncols + j] = r.rows[a] * kw + r.cols[j];
  // Pixels [lo, hi) read inside the input at every tap.
  int64_t lo = 0, hi = r.count;
  for (int j = 0; j < r.ncols; ++j) {
    int64_t first, last;
    ValidColumns(r.in_width, r.count, r.step, -r.offsets[j], 0, &first, &last);
    lo = std::max(lo, first);
    hi = std::min(hi, last);
  }
  if (hi < lo) hi = lo;
  const int64_t next = taps_all * L;  // the next chunk's weights, packed
  // A pixel at the row's ends: its columns inside the input, [j0, j1) (the offsets run one
  // way), all chunks four at a time.
  auto edge = [&](int64_t q) {
    int j0 = 0, j1 = 0;
    for (int j = 0; j < r.ncols; ++j) {
      const int64_t iw = q * r.step + r.offsets[j];
      if (iw < 0 || iw >= r.in_width) continue;
      if (j1 == j0) j0 = j;
      j1 = j + 1;
    }
    const int64_t end = chunks * L;
    int64_t o0 = 0;
    for (; o0 + 4 * L <= end; o0 += 4 * L)
      DepthwiseBlock<T, VB, 1, 4>(r, in_rows, packed + (o0 / L) * next, tap_of, next, q, o0,
                                  out_row, out_step, j0, j1);
    for (; o0 < end; o0 += L)
      DepthwiseBlock<T, VB, 1, 1>(r, in_rows, packed + (o0 / L) * next, tap_of, next, q, o0,
                                  out_row, out_step, j0, j1);
  };
  const int64_t end = chunks * L;
  const int64_t pairs = end / (2 * L) * (2 * L);  // chunks two at a time, then the last one
  // Pixel blocks outer, chunks inner: the row is read in memory order, each block's inputs
  // staying in L1 over the chunks (chunks outer would sweep the rows once per chunk).
  auto blocks = [&](auto np, int64_t q) {
    constexpr int P = decltype(np)::value;
    int64_t o0 = 0;
    for (; o0 < pairs; o0 += 2 * L)
      DepthwiseBlock<T, VB, P, 2>(r, in_rows, packed + (o0 / L) * next, tap_of, next, q, o0, out_row,
                              out_step, 0, r.ncols);
    for (; o0 < end; o0 += L)
      DepthwiseBlock<T, VB, P, 1>(r, in_rows, packed + (o0 / L) * next, tap_of, next, q, o0, out_row,
                              out_step, 0, r.ncols);
  };
  for (int64_t q = 0; q < lo; ++q) edge(q);
  int64_t q = lo;
  for (; q + NP <= hi; q += NP) blocks(std::integral_constant<int, NP>(), q);
  switch (hi - q) {  // the last pixels in one block
    case 3: blocks(std::integral_constant<int, 3>(), q); break;
    case 2: blocks(std::integral_constant<int, 2>(), q); break;
    case 1: blocks(std::integral_constant<int, 1>(), q); break;
    default: break;
  }
  for (q = hi; q < r.count; ++q) edge(q);
}

// dk[(b0 + b) * ldk + o0 : + L] += sum_q Gather(x + q * x_step, b0 + b) * dy[q * dy_step + o0 : + L]
// over one output row's pixels q in [first, last) of one tap, for b < NB: NB b's of one chunk
// in registers.
template <typename T, int VB, int D, int B, bool kWide, int NB>
inline void OuterBlock(const T* x, int64_t x_step, const T* dy, int64_t dy_step, int64_t first,
                       int64_t last, int64_t b0, int64_t b_size, int64_t d_rt, int64_t o0,
                       T* dk, int64_t ldk) {
  typedef Lanes<T, VB> S;
  constexpr bool kSpread = !kWide && D > 1 && B == D && D < S::L && S::L % D == 0 && NB == B;
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
        acc[b][e] = S::Fma(Gather<T, VB, D, B, kWide>(xq, o0, d_rt, b_size, b0 + b), g, acc[b][e]);
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

// Depthwise kernel gradient of one kernel row i over one output row: dk[i][j][o0 : + CH * L]
// += sum_q x[q * sw + j * dw - pl][o0 :] * dy[q][o0 :] for the KW columns j at once, the
// pixels whose taps all lie inside [lo, hi) in registers (KW x CH accumulators), the others
// tap by tap.
template <typename T, int VB, int KW, int CH>
inline void DepthwiseOuter(const T* x0, int64_t x_step, int64_t x_dil, const T* dy,
                           int64_t dy_step, const int64_t* first, const int64_t* last,
                           int64_t lo, int64_t hi, T* dk, int64_t ldk) {
  typedef Lanes<T, VB> S;
  constexpr int L = S::L;
  typename S::V acc[KW][CH];
  for (int j = 0; j < KW; ++j)
    for (int c = 0; c < CH; ++c) acc[j][c] = S::Zero();
  for (int64_t q = lo; q < hi; ++q) {
    typename S::V gv[CH];
    for (int c = 0; c < CH; ++c) gv[c] = S::Load(dy + q * dy_step + c * L);
    const T* xq = x0 + q * x_step;
    for (int j = 0; j < KW; ++j)
      for (int c = 0; c < CH; ++c)
        acc[j][c] = S::Fma(S::Load(xq + j * x_dil + c * L), gv[c], acc[j][c]);
  }
  for (int j = 0; j < KW; ++j) {
    auto tail = [&](int64_t q0, int64_t q1) {
      for (int64_t q = q0; q < q1; ++q)
        for (int c = 0; c < CH; ++c)
          acc[j][c] = S::Fma(S::Load(x0 + q * x_step + j * x_dil + c * L),
                             S::Load(dy + q * dy_step + c * L), acc[j][c]);
    };
    tail(first[j], std::min(lo, last[j]));
    tail(std::max(hi, first[j]), last[j]);
    for (int c = 0; c < CH; ++c) {
      T* p = dk + j * ldk + c * L;
      S::Store(p, S::Add(S::Load(p), acc[j][c]));
    }
  }
}

// One kernel row's depthwise kernel gradient over one output row, for kernels KW = 3, 5, 7
// wide; false for the others (the general blocks take them).
template <typename T, int VB>
bool DepthwiseGradRow(const Geometry& g, const T* xrow, const T* dyrow, int64_t i, T* total) {
  constexpr int L = Lanes<T, VB>::L;
  if (g.kw != 3 && g.kw != 5 && g.kw != 7) return false;
  int64_t first[7], last[7], lo = 0, hi = g.wo;
  for (int64_t j = 0; j < g.kw; ++j) {
    ValidColumns(g.w, g.wo, g.sw, g.pl, j * g.dw, &first[j], &last[j]);
    lo = std::max(lo, first[j]);
    hi = std::min(hi, last[j]);
  }
  if (hi < lo) hi = lo;
  const T* x0 = xrow - g.pl * g.c;  // + q * sw * C + j * dw * C: inside where the tap is
  T* dk = total + i * g.kw * g.o;
  auto run = [&](auto kw, auto ch, int64_t o0) {
    DepthwiseOuter<T, VB, decltype(kw)::value, decltype(ch)::value>(
        x0 + o0, g.sw * g.c, g.dw * g.c, dyrow + o0, g.o, first, last, lo, hi, dk + o0, g.o);
  };
  auto chunks = [&](auto kw) {
    int64_t o0 = 0;
    for (; o0 + 2 * L <= g.o; o0 += 2 * L) run(kw, std::integral_constant<int, 2>(), o0);
    for (; o0 < g.o; o0 += L) run(kw, std::integral_constant<int, 1>(), o0);
  };
  if (g.kw == 3) chunks(std::integral_constant<int, 3>());
  else if (g.kw == 5) chunks(std::integral_constant<int, 5>());
  else chunks(std::integral_constant<int, 7>());
  return true;
}

// One unit of channels [begin, end) of one image over every output pixel, from a slice of the
// image's input holding the unit's input channels with its padding written out as zeros: then
// every tap of every pixel lies inside, a pixel's tap t reads base(pixel) + offsets[t], and
// blocks of pixels run across output rows (no tables of pointers, no short rows). The
// forward pass, and the input gradient at stride 1.
struct Flat {
  const void* src;            // the image: src_h x src_w pixels of src_c channels
  int64_t src_h, src_w, src_c;
  int64_t r0, c0, hp, wp;     // slice row k is image row r0 + k (column: c0 + k), hp x wp
  int64_t out_h, out_w, out_c;
  void* out;                  // the output image, out_h x out_w pixels of out_c channels
  int64_t sh, sw;             // output pixel (a, b)'s base: slice pixel (a * sh, b * sw) + shift
  int64_t rs, cs;
  int64_t tap_r[kMaxTaps], tap_c[kMaxTaps];  // tap t: slice rows and columns further
  int ntaps;
};

template <typename T, int VB, int D, int B, bool kWide>
void FlatTask(const Flat& f, const T* packed, int64_t b_size, int64_t d_rt, int64_t begin,
              int64_t end, std::vector<T>* buffer) {
  constexpr int L = Lanes<T, VB>::L;
  const int64_t d = D > 0 ? D : d_rt;
  const int64_t first = begin / d * b_size, width = ((end - 1) / d + 1) * b_size - first;
  // The slice: the unit's input channels, zeros outside the image.
  std::vector<T>& slice = *buffer;
  slice.assign(f.hp * f.wp * width, T(0));
  const T* src = static_cast<const T*>(f.src);
  for (int64_t k = 0; k < f.hp; ++k) {
    const int64_t r = f.r0 + k;
    if (r < 0 || r >= f.src_h) continue;
    const int64_t lo = std::max<int64_t>(0, -f.c0), hi = std::min(f.wp, f.src_w - f.c0);
    for (int64_t j = lo; j < hi; ++j)
      std::memcpy(&slice[(k * f.wp + j) * width], src + (r * f.src_w + f.c0 + j) * f.src_c + first,
                  width * sizeof(T));
  }
  const T* base0 = slice.data() - first;  // + Gather's channel offsets, which count from 0
  int64_t offsets[kMaxTaps];
  for (int t = 0; t < f.ntaps; ++t) offsets[t] = (f.tap_r[t] * f.wp + f.tap_c[t]) * width;
  const int ch = ChunksABlock<T, VB, D, kWide>(d);
  const int most = MostPixels<VB>(ch);
  const int64_t pixels = f.out_h * f.out_w;
  const int64_t nblocks = (pixels + most - 1) / most;
  auto size_of = [&](int64_t k) { return int(pixels / nblocks + (k < pixels % nblocks)); };
  const int64_t taps_all = f.ntaps, next = taps_all * b_size * L;
  T* out = static_cast<T*>(f.out);
  for (int64_t o0 = begin; o0 < end; o0 += ch * L) {
    const T* ws[kMaxTaps];
    for (int t = 0; t < f.ntaps; ++t) ws[t] = packed + ((o0 / L) * taps_all + t) * b_size * L;
    for (int64_t k = 0, q0 = 0; k < nblocks; q0 += size_of(k), ++k) {
      const int np = size_of(k);
      const T* bases[kPixels];
      for (int p = 0; p < np; ++p) {
        const int64_t a = (q0 + p) / f.out_w, b = (q0 + p) % f.out_w;
        bases[p] = base0 + ((a * f.sh + f.rs) * f.wp + b * f.sw + f.cs) * width;
      }
      BlockOf<T, VB, D, B, kWide>(ch, np, bases, ws, f.ntaps, b_size, d_rt, next, o0,
                                  out + q0 * f.out_c, f.out_c, offsets, end);
    }
  }
}

// How the forward pass and the input gradient split their work. Where the weights of all
// chunks are large (over 64-128 KB), a task is one unit of channels (the chunks a block
// computes at once) of one image, so that each unit's weights are read into L1 once per image
// rather than once per row; else a task is a row, all channels.
struct Units {
  int64_t count, width;  // count units of `width` channels (count 1: all channels a row)
};

// The input channels that output channels [begin, end) read (groups of d outputs, each
// reading b_size inputs), copied out of an image of `pixels` pixels of c channels into
// `slice`, contiguous: the channels' stride in the image (c, often a power of two) would map
// a block's pixels onto a few sets of L1. Returns the first channel: pixel p's channel
// c0 + k is slice[p * width + k].
template <typename T>
int64_t Slice(const T* image, int64_t pixels, int64_t c, int64_t begin, int64_t end, int64_t d,
              int64_t b_size, std::vector<T>* slice) {
  const int64_t c0 = begin / d * b_size, c1 = ((end - 1) / d + 1) * b_size, width = c1 - c0;
  slice->resize(pixels * width);
  for (int64_t p = 0; p < pixels; ++p)
    std::memcpy(slice->data() + p * width, image + p * c + c0, width * sizeof(T));
  return c0;
}

template <typename T, int VB, int D, int B, bool kWide>
Units ChannelUnits(int64_t taps, int64_t b_size, int64_t d_rt, int64_t width) {
  constexpr int L = Lanes<T, VB>::L;
  if (D == 1 && B == 1) return {1, width};  // depthwise: small weights
  // (Measured: 64 KB for whole groups a unit, 28x28x120 in 5 groups; 128 KB for several
  // groups a chunk, 28x28x256 in 32.)
  if (taps * b_size * width * int64_t(sizeof(T)) <= (kWide ? 64 << 10 : 128 << 10))
    return {1, width};
  const int64_t d = D > 0 ? D : d_rt;
  const int64_t unit = ChunksABlock<T, VB, D, kWide>(d) * L;
  return {(width + unit - 1) / unit, unit};  // the last unit of split groups may be one group
}

// ---------------------------------------------------------------------------------------
// The three passes, for one compile-time inner width D (0: any). kVector: channels fill
// whole vector chunks (the blocks above); else the scalar per-pixel products.

template <typename T, int VB, int D, int B, bool kVector, bool kWide>
void Forward(ffi::ThreadPool& pool, const Geometry& g, const T* x, const T* k, T* y) {
  std::vector<int64_t> cols(g.kw), offsets(g.kw);
  for (int64_t j = 0; j < g.kw; ++j) cols[j] = j, offsets[j] = j * g.dw - g.pl;
  const std::vector<T> zeros(kVector ? g.c : 0, T(0));  // what taps outside the input read
  const std::vector<T> packed = kVector ? Pack<T, VB>(k, g.kh * g.kw, g.cg, g.o) : std::vector<T>();
  if constexpr (kVector) {
    const Units units = ChannelUnits<T, VB, D, B, kWide>(g.kh * g.kw, g.cg, g.og, g.o);
    // Output row oh of image n, channels [begin, end), from the image's input `image`, `cs`
    // channels a pixel.
    auto row = [&](int64_t n, int64_t oh, int64_t begin, int64_t end, const T* image,
                   int64_t cs) {
      int64_t rows[kMaxTaps];
      const T* in_rows[kMaxTaps];
      int nrows = 0;
      for (int64_t i = 0; i < g.kh; ++i) {
        const int64_t ih = oh * g.sh - g.pt + i * g.dh;
        if (ih < 0 || ih >= g.h) continue;
        rows[nrows] = i;
        in_rows[nrows++] = image + ih * g.w * cs;
      }
      Row r{rows, nrows, cols.data(), offsets.data(), int(g.kw), g.sw, g.w, cs, g.wo};
      T* yrow = y + (n * g.ho + oh) * g.wo * g.o;
      if constexpr (D == 1 && B == 1)
        DepthwiseRow<T, VB>(r, in_rows, packed.data(), g.kw, g.kh * g.kw, g.o / Lanes<T, VB>::L,
                            yrow, g.o);
      else
        RowBlocks<T, VB, D, B, kWide>(r, in_rows, zeros.data(), packed.data(), g.kw, g.kh * g.kw,
                                      g.cg, g.og, begin, end, yrow, g.o);
    };
    if (units.count > 1) {  // a task: one unit of channels of one image, from a slice
      Flat f{};
      f.src_h = g.h, f.src_w = g.w, f.src_c = g.c;
      f.r0 = -g.pt, f.c0 = -g.pl;  // input row oh * sh - pt + i * dh
      f.hp = (g.ho - 1) * g.sh + (g.kh - 1) * g.dh + 1;
      f.wp = (g.wo - 1) * g.sw + (g.kw - 1) * g.dw + 1;
      f.out_h = g.ho, f.out_w = g.wo, f.out_c = g.o;
      f.sh = g.sh, f.sw = g.sw, f.rs = 0, f.cs = 0;
      f.ntaps = int(g.kh * g.kw);
      for (int64_t i = 0; i < g.kh; ++i)
        for (int64_t j = 0; j < g.kw; ++j)
          f.tap_r[i * g.kw + j] = i * g.dh, f.tap_c[i * g.kw + j] = j * g.dw;
      ParallelRows(pool, units.count * g.n, [&](int64_t task) {
        const int64_t u = task / g.n, n = task % g.n;
        Flat fn = f;
        fn.src = x + n * g.h * g.w * g.c;
        fn.out = y + n * g.ho * g.wo * g.o;
        std::vector<T> buffer;
        FlatTask<T, VB, D, B, kWide>(fn, packed.data(), g.cg, g.og, u * units.width,
                                     std::min((u + 1) * units.width, g.o), &buffer);
      });
    }
    else
      ParallelRows(pool, g.n * g.ho, [&](int64_t task) {
        const int64_t n = task / g.ho;
        row(n, task % g.ho, 0, g.o, x + n * g.h * g.w * g.c, g.c);
      });
    return;
  }
  ParallelRows(pool, g.n * g.ho, [&](int64_t row) {
    const int64_t n = row / g.ho, oh = row % g.ho;
    T* yrow = y + row * g.wo * g.o;
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
template <typename T, int VB, int D, int B, bool kVector, bool kWide>
void InputGrad(ffi::ThreadPool& pool, const Geometry& g, const T* dy, const T* k, T* dx) {
  // The kernel transposed per group, (KH, KW, Og, C): for the vector blocks packed as Pack
  // would (C / L, KH * KW, Og, L), else as it is.
  constexpr int L = Lanes<T, VB>::L;
  const int64_t taps = g.kh * g.kw;
  std::vector<T> kt((kVector ? (g.c + L - 1) / L * L : g.c) * taps * g.og, T(0));
  for (int64_t t = 0; t < taps; ++t)
    for (int64_t b = 0; b < g.cg; ++b)
      for (int64_t gr = 0; gr < g.groups; ++gr) {
        const int64_t cc = gr * g.cg + b;  // kt's channel
        const T* from = k + (t * g.cg + b) * g.o + gr * g.og;
        if constexpr (kVector) {
          T* to = &kt[(((cc / L) * taps + t) * g.og) * L + cc % L];
          for (int64_t d = 0; d < g.og; ++d) to[d * L] = from[d];
        } else {
          for (int64_t d = 0; d < g.og; ++d) kt[(t * g.og + d) * g.c + cc] = from[d];
        }
      }
  const T* ktp = kt.data();
  const std::vector<T> zeros(kVector ? g.o : 0, T(0));  // what taps outside dy read
  const std::vector<T>& packed = kt;
  if constexpr (kVector) {
    const Units units = ChannelUnits<T, VB, D, B, kWide>(g.kh * g.kw, g.og, g.cg, g.c);
    auto row = [&](int64_t n, int64_t ih, int64_t begin, int64_t end, const T* image,
                   int64_t cs) {
      int64_t rows[kMaxTaps];
      const T* in_rows[kMaxTaps];
      int nrows = 0;
      for (int64_t i = 0; i < g.kh; ++i) {
        const int64_t t = ih + g.pt - i * g.dh;  // oh * sh
        if (t < 0 || t % g.sh != 0 || t / g.sh >= g.ho) continue;
        rows[nrows] = i;
        in_rows[nrows++] = image + (t / g.sh) * g.wo * cs;
      }
      T* dxrow = dx + (n * g.h + ih) * g.w * g.c;
      for (int64_t res = 0; res < std::min(g.sw, g.w); ++res) {
        int64_t cols[kMaxTaps], offsets[kMaxTaps];
        int ncols = 0;
        for (int64_t j = 0; j < g.kw; ++j) {
          const int64_t t = res + g.pl - j * g.dw;  // ow * sw at q = 0
          if (t % g.sw != 0) continue;
          cols[ncols] = j;
          offsets[ncols++] = t / g.sw;
        }
        Row r{rows, nrows, cols, offsets, ncols, 1, g.wo, cs, (g.w - res + g.sw - 1) / g.sw};
        if constexpr (D == 1 && B == 1)
          DepthwiseRow<T, VB>(r, in_rows, packed.data(), g.kw, g.kh * g.kw, g.c / Lanes<T, VB>::L,
                              dxrow + res * g.c, g.sw * g.c);
        else
          RowBlocks<T, VB, D, B, kWide>(r, in_rows, zeros.data(), packed.data(), g.kw,
                                        g.kh * g.kw, g.og, g.cg, begin, end, dxrow + res * g.c,
                                        g.sw * g.c);
      }
    };
    if (units.count > 1 && g.sh == 1 && g.sw == 1) {  // as the forward pass, over dy
      // dx[ih, iw] = sum_ij dy[ih + pt - i * dh, iw + pl - j * dw] kt[i, j]
      Flat f{};
      f.src_h = g.ho, f.src_w = g.wo, f.src_c = g.o;
      f.r0 = g.pt - (g.kh - 1) * g.dh, f.c0 = g.pl - (g.kw - 1) * g.dw;
      f.hp = g.h + (g.kh - 1) * g.dh, f.wp = g.w + (g.kw - 1) * g.dw;
      f.out_h = g.h, f.out_w = g.w, f.out_c = g.c;
      f.sh = 1, f.sw = 1, f.rs = (g.kh - 1) * g.dh, f.cs = (g.kw - 1) * g.dw;
      f.ntaps = int(g.kh * g.kw);
      for (int64_t i = 0; i < g.kh; ++i)
        for (int64_t j = 0; j < g.kw; ++j)
          f.tap_r[i * g.kw + j] = -i * g.dh, f.tap_c[i * g.kw + j] = -j * g.dw;
      ParallelRows(pool, units.count * g.n, [&](int64_t task) {
        const int64_t u = task / g.n, n = task % g.n;
        Flat fn = f;
        fn.src = dy + n * g.ho * g.wo * g.o;
        fn.out = dx + n * g.h * g.w * g.c;
        std::vector<T> buffer;
        FlatTask<T, VB, D, B, kWide>(fn, packed.data(), g.og, g.cg, u * units.width,
                                     std::min((u + 1) * units.width, g.c), &buffer);
      });
    } else if (units.count > 1)  // a task: one unit of channels of one image, all its rows
      ParallelRows(pool, units.count * g.n, [&](int64_t task) {
        const int64_t u = task / g.n, n = task % g.n;
        const int64_t begin = u * units.width, end = std::min(begin + units.width, g.c);
        std::vector<T> slice;
        const int64_t c0 = Slice(dy + n * g.ho * g.wo * g.o, g.ho * g.wo, g.o, begin, end, g.cg,
                                 g.og, &slice);
        const int64_t cs = int64_t(slice.size()) / (g.ho * g.wo);
        for (int64_t ih = 0; ih < g.h; ++ih) row(n, ih, begin, end, slice.data() - c0, cs);
      });
    else
      ParallelRows(pool, g.n * g.h, [&](int64_t task) {
        const int64_t n = task / g.h;
        row(n, task % g.h, 0, g.c, dy + n * g.ho * g.wo * g.o, g.o);
      });
    return;
  }
  ParallelRows(pool, g.n * g.h, [&](int64_t row) {
    const int64_t n = row / g.h, ih = row % g.h;
    T* dxrow = dx + row * g.w * g.c;
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

// The kernel gradient of one tap over one image's pixels, for NB input channels x CH chunks
// in registers: dk[b0 + b][o0 + c * L :] += sum_p xs[bases[p] + b0 + b] * ds[p * ld + c * L :]
// (xs: a padded slice of the image's group inputs; ds: the unit's output gradients).
template <typename T, int VB, int NB, int CH>
inline void SweepBlock(const T* xs, const int64_t* bases, int64_t pixels, const T* ds, int64_t ld,
                       T* dk, int64_t ldk) {
  typedef Lanes<T, VB> S;
  constexpr int L = S::L;
  typename S::V acc[NB][CH];
  for (int b = 0; b < NB; ++b)
    for (int c = 0; c < CH; ++c) acc[b][c] = S::Zero();
  for (int64_t p = 0; p < pixels; ++p) {
    typename S::V gv[CH];
    for (int c = 0; c < CH; ++c) gv[c] = S::Load(ds + p * ld + c * L);
    const T* xp = xs + bases[p];
    for (int b = 0; b < NB; ++b) {
      const typename S::V xv = S::Set1(xp[b]);
      for (int c = 0; c < CH; ++c) acc[b][c] = S::Fma(xv, gv[c], acc[b][c]);
    }
  }
  for (int b = 0; b < NB; ++b)
    for (int c = 0; c < CH; ++c) {
      T* q = dk + b * ldk + c * L;
      S::Store(q, S::Add(S::Load(q), acc[b][c]));
    }
}

// The kernel gradient where each group's output channels fill two or three chunks and an
// image's padded slice of a group's inputs fits in L2 (256 KB: maps up to about 28x28): a task
// is one unit of output channels (one group's), summed over every image in registers, tap by
// tap, so that dk is written by one task and read and written once per image. False where it
// does not apply (the row sums take it).
template <typename T, int VB, int D, int B, bool kWide>
bool KernelGradUnits(ffi::ThreadPool& pool, const Geometry& g, const T* x, const T* dy, T* dk) {
  if constexpr (!kWide) {
    return false;
  } else {
    constexpr int L = Lanes<T, VB>::L;
    const int64_t d = D > 0 ? D : g.og;
    const int ch = ChunksAGroup<T, VB, kWide>(d);
    const int64_t unit = ch * L, units = g.o / unit, taps = g.kh * g.kw;
    const int64_t hp = (g.ho - 1) * g.sh + (g.kh - 1) * g.dh + 1;
    const int64_t wp = (g.wo - 1) * g.sw + (g.kw - 1) * g.dw + 1;
    // (One chunk a group, ch 1, measured no faster than the row sums: 14x14x512, 32 groups.)
    if (ch == 1 || units < 4 || hp * wp * g.cg * int64_t(sizeof(T)) > (256 << 10)) return false;
    std::vector<int64_t> bases(g.ho * g.wo);
    for (int64_t a = 0; a < g.ho; ++a)
      for (int64_t b = 0; b < g.wo; ++b) bases[a * g.wo + b] = (a * g.sh * wp + b * g.sw) * g.cg;
    ParallelRows(pool, units, [&](int64_t u) {
      const int64_t begin = u * unit, first = begin / d * g.cg;
      for (int64_t t = 0; t < taps; ++t)
        for (int64_t b = 0; b < g.cg; ++b)
          std::fill_n(dk + (t * g.cg + b) * g.o + begin, unit, T(0));
      std::vector<T> xs(hp * wp * g.cg), ds(g.ho * g.wo * unit);
      for (int64_t n = 0; n < g.n; ++n) {
        std::fill(xs.begin(), xs.end(), T(0));
        for (int64_t k = 0; k < hp; ++k) {
          const int64_t r = k - g.pt;
          if (r < 0 || r >= g.h) continue;
          const int64_t lo = std::min(g.pl, wp), hi = std::min(wp, g.w + g.pl);
          for (int64_t j = lo; j < hi; ++j)
            std::memcpy(&xs[(k * wp + j) * g.cg], x + ((n * g.h + r) * g.w + j - g.pl) * g.c + first,
                        g.cg * sizeof(T));
        }
        for (int64_t p = 0; p < g.ho * g.wo; ++p)
          std::memcpy(&ds[p * unit], dy + (n * g.ho * g.wo + p) * g.o + begin, unit * sizeof(T));
        for (int64_t i = 0; i < g.kh; ++i)
          for (int64_t j = 0; j < g.kw; ++j) {
            const T* xt = xs.data() + (i * g.dh * wp + j * g.dw) * g.cg;
            T* dkt = dk + (i * g.kw + j) * g.cg * g.o + begin;
            auto run = [&](auto nb, auto chn, int64_t b0) {
              SweepBlock<T, VB, decltype(nb)::value, decltype(chn)::value>(
                  xt + b0, bases.data(), g.ho * g.wo, ds.data(), unit, dkt + b0 * g.o, g.o);
            };
            auto tiles = [&](auto chn) {
#if defined(__AVX512F__)
              constexpr int NB = decltype(chn)::value == 3 ? 6 : 8;  // 16-18 accumulators of 32
#else
              constexpr int NB = decltype(chn)::value == 3 ? 4 : 6;  // 12 accumulators of 16
#endif
              int64_t b0 = 0;
              for (; b0 + NB <= g.cg; b0 += NB) run(std::integral_constant<int, NB>(), chn, b0);
              for (; b0 < g.cg; ++b0) run(std::integral_constant<int, 1>(), chn, b0);
            };
            if (ch == 2) tiles(std::integral_constant<int, 2>());
            else tiles(std::integral_constant<int, 3>());
          }
      }
    });
    return true;
  }
}

// dk: sums over fixed blocks of output rows (each row's sums in registers, then added to its
// block's), the blocks' sums added in order. (Measured slower: tiles of rows summed in
// registers, and chunks of channels on threads; both sweep the inputs more often.)
template <typename T, int VB, int D, int B, bool kVector, bool kWide>
void KernelGrad(ffi::ThreadPool& pool, const Geometry& g, const T* x, const T* dy, T* dk) {
  if constexpr (kVector)
    if (KernelGradUnits<T, VB, D, B, kWide>(pool, g, x, dy, dk)) return;
  constexpr int L = Lanes<T, VB>::L;
  constexpr int NB = B > 0 && B <= (VB == 64 ? 8 : 4) ? B : 4;  // b's in registers at a time
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
        if constexpr (kVector && D == 1 && B == 1)
          if (DepthwiseGradRow<T, VB>(g, xrow, dyrow, i, total)) continue;
        for (int64_t j = 0; j < g.kw; ++j) {
          int64_t first, last;
          ValidColumns(g.w, g.wo, g.sw, g.pl, j * g.dw, &first, &last);
          if constexpr (kVector) {
            T* tap = total + (i * g.kw + j) * g.cg * g.o;
            const T* x0 = xrow + (j * g.dw - g.pl) * g.c;  // + ow * sw * C: in range
            for (int64_t o0 = 0; o0 < g.o; o0 += L) {
              int64_t b0 = 0;
              for (; b0 + NB <= g.cg; b0 += NB)
                OuterBlock<T, VB, D, B, kWide, NB>(x0, g.sw * g.c, dyrow, g.o, first, last, b0,
                                               g.cg, g.og, o0, tap, g.o);
              for (; b0 < g.cg; ++b0)
                OuterBlock<T, VB, D, B, kWide, 1>(x0, g.sw * g.c, dyrow, g.o, first, last, b0, g.cg,
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

template <typename T, int VB, int D, int B, bool kVector, bool kWide>
void Run(Pass pass, ffi::ThreadPool& pool, const Geometry& g, const T* a, const T* b, T* out) {
  switch (pass) {
    case Pass::kForward: return Forward<T, VB, D, B, kVector, kWide>(pool, g, a, b, out);
    case Pass::kInputGrad: return InputGrad<T, VB, D, B, kVector, kWide>(pool, g, a, b, out);
    case Pass::kKernelGrad: return KernelGrad<T, VB, D, B, kVector, kWide>(pool, g, a, b, out);
  }
}

template <typename T, int D, int B>
void RunWidth(Pass pass, ffi::ThreadPool& pool, const Geometry& g, const T* a, const T* b,
              T* out) {
  // The vector blocks' chunks: over the outputs' channels (O; C for the input gradient), each
  // D wide group in one chunk or many.
  const int64_t width = pass == Pass::kInputGrad ? g.c : g.o;
  const int64_t d = pass == Pass::kInputGrad ? g.cg : g.og;
  const bool vector_taps = g.kh * g.kw <= kMaxTaps;
#if defined(__AVX2__) && defined(__FMA__) && defined(__AVX512F__)
  {  // 64-byte vectors where chunks hold whole groups, or square groups that fill them
    constexpr int L = Lanes<T, 64>::L;
    if (vector_taps && width % L == 0 && (d % L == 0 || (D > 0 && L % D == 0))) {
      if (d % L == 0) return Run<T, 64, D, B, true, true>(pass, pool, g, a, b, out);
      return Run<T, 64, D, B, true, false>(pass, pool, g, a, b, out);
    }
    // Groups of 1.5 chunks, in pairs (the kernel gradient's blocks do not split groups), where
    // measured faster than 32-byte chunks of one group: an even count of groups, or strides
    // (odd counts at stride 1, 28x28x120 in 5 groups and 7x7x888 in 37: 4-14% slower).
    if (Split<T, 64, D, false>() && pass != Pass::kKernelGrad && vector_taps &&
        (g.groups % 2 == 0 || g.sh > 1 || g.sw > 1))
      return Run<T, 64, D, B, true, false>(pass, pool, g, a, b, out);
  }
#endif
  constexpr int L = Lanes<T, 32>::L;
  if (!kHaveVectors || width % L != 0 || !vector_taps)
    return Run<T, 32, D, B, false, false>(pass, pool, g, a, b, out);
  if (d % L == 0) return Run<T, 32, D, B, true, true>(pass, pool, g, a, b, out);
  return Run<T, 32, D, B, true, false>(pass, pool, g, a, b, out);
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

// The fusion boundary (se_flax/_grouped.py): y = x, in place where XLA aliases the two (it
// is asked to), else one copy. Its point is that XLA cannot fuse through a custom call, so the
// value is computed once into a buffer that its consumers read.
ffi::Error FusionBoundaryImpl(ffi::AnyBuffer x, ffi::Result<ffi::AnyBuffer> y) {
  if (x.size_bytes() != y->size_bytes())
    return ffi::Error::InvalidArgument("se_flax fusion boundary: input and output sizes differ");
  if (x.untyped_data() != y->untyped_data())
    std::memcpy(y->untyped_data(), x.untyped_data(), x.size_bytes());
  return ffi::Error::Success();
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
SE_FLAX_EXPORT(SeFlaxFusionBoundary);

XLA_FFI_DEFINE_HANDLER_SYMBOL(SeFlaxGroupedConv, ForwardImpl, SE_FLAX_BINDING);
XLA_FFI_DEFINE_HANDLER_SYMBOL(SeFlaxGroupedConvInputGrad, InputGradImpl, SE_FLAX_BINDING);
XLA_FFI_DEFINE_HANDLER_SYMBOL(SeFlaxGroupedConvKernelGrad, KernelGradImpl, SE_FLAX_BINDING);
XLA_FFI_DEFINE_HANDLER_SYMBOL(SeFlaxFusionBoundary, FusionBoundaryImpl,
                              ffi::Ffi::Bind().Arg<ffi::AnyBuffer>().Ret<ffi::AnyBuffer>());

// A module of nothing, so that importing the library (as module walkers do) is harmless: it is
// loaded with ctypes (se_flax/_grouped.py).
static struct PyModuleDef kModule = {PyModuleDef_HEAD_INIT, "_grouped_conv_kernels",
                                     "se_flax's CPU kernels: XLA FFI handlers, loaded with ctypes",
                                     -1, nullptr};
extern "C" __attribute__((visibility("default"))) PyObject* PyInit__grouped_conv_kernels() {
  return PyModule_Create(&kModule);
}
