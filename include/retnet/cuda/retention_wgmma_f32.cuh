#pragma once
// Part of retention_engine.cuh (built on retention_wgmma.cuh): the outputs walk for float storage on Hopper's
// warpgroup MMA in tf32, where the code is compiled for sm_90a: chunk_engine_kernel's for key size 128 (value tile
// 64), and chunk_float256_kernel for key size 256. Same contract and arithmetic as the mma.sync walk: exact float
// (EngineOps<float>) makes every product three tf32 products, hi hi + hi lo + lo hi (x = hi + lo, hi the upper 19 bits
// of x), about 1e-6 relative; Cuda::allow_tf32 (EngineOpsTf32) one, of operands rounded to tf32. Each chunk's state
// part is summed in a fresh accumulator and added to the state in float.
//
// tf32 wgmma reads shared-memory operands only K-major (no transposed operands), and every operand needs its lo part
// beside it. So a block's 224 KiB (WgmmaF32Smem) hold a chunk in slices of 64 key dims, two stages of one slice each:
// Q's slice as loaded and its lo part; the keys slice [K ; Hc^T] (K's slice as loaded, and the state copy Hc^T of the
// slice's rows of H) and its lo part; and V^T in hi and lo parts, once per chunk (V travels through registers one
// chunk ahead). Two warpgroups:
//   the outputs warpgroup (0): [S | O] = Q [K ; Hc^T]^T as m64 n128 products from shared memory, summed over the
//     slices, the causal mask and decays in registers, O += (S . mask) V with the masked scores' hi and lo parts as A
//     fragments from registers (their accumulator layout is the A fragment layout once the keys of every 8 are
//     permuted: V^T's columns are stored in that order), the outputs stored;
//   the state warpgroup (1): H [DQK, 64] in registers, H's rows of a slice <- gamma^len H + K^T diag(w) V as the
//     slice's keys are in (K^T diag(w)'s fragments from registers, V^T from shared memory), and the copy Hc^T of the
//     next slice.
// The slices are pipelined (wgmma_f32_walk): the next slice loads and its lo parts are stored while the tensor cores
// run the current one's products.
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "retnet/cuda/retention_wgmma.cuh"

namespace retnet::cuda_detail {

// Whether chunk_engine_kernel<Ops, DQK, VT, Summary> has the float wgmma walk (where built for sm_90a): exact float
// (EngineOps<float>), or one tf32 product per product (EngineOpsTf32, Cuda::allow_tf32).
template <class Ops, int DQK, int VT, bool Summary>
inline constexpr bool kWgmmaF32Walk =
    !Summary && (std::is_same_v<Ops, EngineOps<float>> || std::is_same_v<Ops, EngineOpsTf32>)&&DQK == 128 && VT == 64;

// A float tile of Rows rows in the 128-byte-swizzle layout: atoms of 32 columns (rows of 128 bytes) of all its rows,
// the 16-byte piece c of row r at c ^ (r % 8). Read K-major along its columns: k8 step ks at kstep(ks).
template <int Rows>
struct F32Tile {
  static constexpr int kAtom = Rows * 32;
  __device__ __forceinline__ static int at(int row, int col) {
    return (col >> 5) * kAtom + row * 32 + ((((col >> 2) & 7) ^ (row & 7)) << 2) + (col & 3);
  }
  __device__ __forceinline__ static int kstep(int ks) { return (ks >> 2) * kAtom + (ks & 3) * 8; }
};

// x = hi + lo, hi: x's upper 19 bits (a tf32 value), lo: the rest (exact). Without Exact (one tf32 product), hi is x
// rounded to tf32 as MmaTf32::round rounds it, and lo is not used.
template <bool Exact = true>
__device__ __forceinline__ float tf32_hi(float x) {
  return __uint_as_float((Exact ? __float_as_uint(x) : MmaTf32::round(x)) & 0xffffe000u);
}

// The chunk slot of key j of a score row in the A fragments of (S . mask) V: within every 8 keys, the accumulator
// columns 2t and 2t + 1 are the fragment's k positions t and t + 4, so key 8 b + 2 t + e sits at 8 b + 4 e + t.
__device__ __forceinline__ int f32_key_slot(int j) { return (j & ~7) | ((j & 1) << 2) | ((j & 7) >> 1); }

// Pins the fragments' values before the next asm statement (wgmma_fence): computed after it, ptxas would have to
// fence each wgmma that reads them (C7519) and serialize them all (C7520).
template <int N>
__device__ __forceinline__ void settle_fragments(uint32_t (&a)[N][4]) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+r"(a[i][0]), "+r"(a[i][1]), "+r"(a[i][2]), "+r"(a[i][3]));
}

// acc (+)= A V over KT x 8 of a chunk's 64 keys (from key 8 kt0) for a warpgroup: A's hi and lo parts as A fragments
// from registers (k step kt: keys 8 (kt0 + kt) ..), V^T's hi and lo parts from shared memory (F32Tile<64>, columns in
// key-slot order); three products per k step with Exact, else one (hi hi). accumulate = false starts from zero.
// Returns with the products done.
template <bool Exact, int KT = 8>
__device__ __forceinline__ void f32_key_products(float (&acc)[8][4], const uint32_t (&ahi)[KT][4],
                                                 const uint32_t (&alo)[KT][4], const float* Vhi, const float* Vlo,
                                                 bool accumulate, int kt0 = 0) {
  wgmma_fence();
#pragma unroll
  for (int kt = 0; kt < KT; ++kt) {
    const int o = F32Tile<64>::kstep(kt0 + kt);
    wgmma_m64n64k8_tf32_rs(acc, ahi[kt], wgmma_desc(Vhi + o, 0), accumulate || kt > 0);
    if constexpr (Exact) {
      wgmma_m64n64k8_tf32_rs(acc, ahi[kt], wgmma_desc(Vlo + o, 0), 1);
      wgmma_m64n64k8_tf32_rs(acc, alo[kt], wgmma_desc(Vhi + o, 0), 1);
    }
  }
  wgmma_commit();
  wgmma_wait<0>();
}

// The pipelined walk's buffers: two stages, each one slice of 64 key dims of a chunk (Q's slice and its lo part, the
// keys slice [K ; Hc^T] and its lo part: 96 KiB), and V^T hi and lo (32 KiB).
struct WgmmaF32Smem {
  static constexpr int LM = kEngineRows, SW = 64, VT = 64;
  static constexpr int QS = LM * SW, KEYS = 2 * LM * SW;  // floats of a Q slice and of a keys slice
  static constexpr int Q = 0, QLO = QS, K = 2 * QS, KLO = 2 * QS + KEYS, STAGE = 2 * QS + 2 * KEYS;
  static constexpr int VHI = 2 * STAGE, VLO = VHI + VT * LM, END = VLO + VT * LM;
  static constexpr int bytes = END * 4 + 1024;  // and room to align to 1024 bytes
  static constexpr bool fits = bytes <= 227 * 1024;
};

// The outputs walk for float on wgmma, pipelined over slices of 64 key dims (DQK / 64 per chunk, in two stages): while
// the tensor cores run one slice's products, the next slice loads and its lo parts are stored. Per slice g (chunk c,
// slice q), between block barriers X(g) and X(g + 1), the one block barrier per slice:
//   both warpgroups issue the loads of slice g + 1 (the other stage, free since X(g));
//   the outputs warpgroup issues [S | O] (+)= Q_q [K_q ; Hc_q^T]^T (async); the state warpgroup updates H's rows of
//     slice q, H_q <- gamma^len H_q + K_q^T diag(w) V (its products read K_q and V^T of chunk c);
//   every thread waits for its own pieces of slice g + 1 and stores their lo parts (no barrier: each thread splits
//     what it loaded; a barrier here cost 3-7 % of the float forward); the state warpgroup stores the slice's state
//     copy Hc^T (H's rows of that slice entering its chunk: slice q + 1 is not yet updated in chunk c, slice 0 of
//     chunk c + 1 already is);
//   after the chunk's last slice, the outputs warpgroup waits for [S | O], masks, computes O += (S . mask) V, stores
//     O, and, once the state warpgroup's last products of chunk c are done (named barrier 2), stores V^T of c + 1.
// Exact: three tf32 products per product, else one. grid (dv / 64, NS, B * H), 256 threads.
template <bool Exact, int DQK>
__device__ __forceinline__ void wgmma_f32_walk(const ScanParams& p, const HeadDecays& dec, unsigned char* smem_raw) {
  using SM = WgmmaF32Smem;
  using Tile = F32Tile<64>;       // Q slices, V^T
  using KeysTile = F32Tile<128>;  // keys slices [K ; Hc^T]
  constexpr int LM = kEngineRows, SW = SM::SW, NQ = DQK / SW, VT = 64, R = LM / 2, KS = 8;
  // Key size 128 factors the decays as gamma^(i - R) gamma^(R - j) (heads of decay >= 2^-3, wgmma_walk_applies);
  // key size 256 serves every head (nothing else fits its buffers): gamma^(i - j) per score, gamma^(i + 1) per
  // output row, Hc^T = H^T.
  constexpr bool kCentred = DQK == 128;
  static_assert(SM::fits, "shared memory of one block");
  static_assert(NQ % 2 == 0, "a chunk's slices fill both stages alike");
  float* const smem = reinterpret_cast<float*>((reinterpret_cast<uintptr_t>(smem_raw) + 1023) & ~uintptr_t{1023});
  auto stage = [&](int q) { return smem + (q & 1) * SM::STAGE; };  // slice q of any chunk (NQ is even)
  float* const Vhi = smem + SM::VHI;
  float* const Vlo = smem + SM::VLO;

  // The thread's coordinates pass through an empty asm at every slice, so that ptxas computes the offsets derived
  // from them where they are used (hoisted out of the loop they held a register each and spilled).
  WgmmaThread t(threadIdx.x);
  auto refresh = [&] { asm volatile("" : "+r"(t.tid), "+r"(t.lane), "+r"(t.wq), "+r"(t.g), "+r"(t.tq)); };
  const WgmmaSegment seg(p, dec);
  const int vt = blockIdx.x, b = seg.b, h = seg.h, nchunks = seg.nchunks, dv = p.dv;
  const int64_t T = seg.T;
  auto phys = [&](int64_t pos) { return p.reverse ? T - 1 - pos : pos; };
  auto chunk_start = [&](int c) { return seg.start + static_cast<int64_t>(c) * p.L; };
  auto chunk_len = [&](int c) { return min(p.L, seg.len - c * p.L); };
  const int64_t ld_qk = static_cast<int64_t>(p.H) * DQK, ld_v = static_cast<int64_t>(p.H) * dv;
  const int64_t row0 = static_cast<int64_t>(b) * T * p.H + h;  // (b, position 0, h)
  const float* const qg = static_cast<const float*>(p.q) + row0 * DQK;
  const float* const kg = static_cast<const float*>(p.k) + row0 * DQK;

  // Slice q of Q and K of chunk c into its stage in 16-byte cp.async pieces (4 per tensor and thread; a warp reads
  // two rows), rows past the chunk zero-filled.
  auto load_slice = [&](int c, int q) {
    const int64_t c0 = chunk_start(c);
    const int len = chunk_len(c);
    float* const st = stage(q);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int piece = t.tid + 256 * i, r = piece >> 4, col = (piece & 15) * 4;
      const bool ok = r < len;
      const int64_t off = ok ? phys(c0 + r) * ld_qk + SW * q + col : 0;
      cp_async16(st + SM::Q + Tile::at(r, col), qg + off, ok ? 16 : 0);
      cp_async16(st + SM::K + KeysTile::at(r, col), kg + off, ok ? 16 : 0);
    }
    cp_async_commit();
  };
  // The slice after slice q of chunk c, if any.
  auto load_next = [&](int c, int q) {
    if (q + 1 < NQ) return load_slice(c, q + 1);
    if (c + 1 < nchunks) load_slice(c + 1, 0);
  };
  // The lo parts of this thread's own pieces of slice q (as load_slice placed them), at the same places; without
  // Exact, Q and K rounded to tf32 in place. Each thread's cp.async wait covers its own pieces, so no block barrier
  // stands between the loads and these stores.
  auto split_own = [&](int q) {
    float* const st = stage(q);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int piece = t.tid + 256 * i, r = piece >> 4, col = (piece & 15) * 4;
#pragma unroll
      for (int k = 0; k < 2; ++k) {
        float* const x = st + (k ? SM::K + KeysTile::at(r, col) : SM::Q + Tile::at(r, col));
        const float4 v = *reinterpret_cast<const float4*>(x);
        if constexpr (Exact)
          *reinterpret_cast<float4*>(x + (k ? SM::KLO - SM::K : SM::QLO - SM::Q)) =
              make_float4(v.x - tf32_hi(v.x), v.y - tf32_hi(v.y), v.z - tf32_hi(v.z), v.w - tf32_hi(v.w));
        else
          *reinterpret_cast<float4*>(x) =
              make_float4(tf32_hi<false>(v.x), tf32_hi<false>(v.y), tf32_hi<false>(v.z), tf32_hi<false>(v.w));
      }
    }
  };
  load_slice(0, 0);

  if (t.wg == 0) {
    // ---- the outputs warpgroup ----
    // Its share of V (32 elements): value column d = 8 x + dd, key j = 8 (u / 2) + 2 jj + u % 2 for x < 8 and
    // u = 4 wq + y, y < 4 (element 8 y + x): the 32 lanes' stores into V^T fall on 32 distinct banks.
    auto v_key = [&](int y) {
      const int u = 4 * t.wq + y;
      return 8 * (u >> 1) + 2 * (t.lane >> 3) + (u & 1);
    };
    const float* const vg = static_cast<const float*>(p.v) + row0 * dv + vt * VT;
    float vr[32];
    auto load_v = [&](int c) {
      const int64_t c0 = chunk_start(c);
      const int len = chunk_len(c);
#pragma unroll
      for (int y = 0; y < 4; ++y) {
        const int j = v_key(y);
        const float* src = vg + (j < len ? phys(c0 + j) * ld_v : 0);
#pragma unroll
        for (int x = 0; x < 8; ++x) vr[8 * y + x] = j < len ? __ldg(src + 8 * x + (t.lane & 7)) : 0.f;
      }
    };
    // V^T of the chunk in vr, hi and lo, columns in key-slot order
    auto store_v = [&] {
#pragma unroll
      for (int y = 0; y < 4; ++y) {
        const int slot = f32_key_slot(v_key(y));
#pragma unroll
        for (int x = 0; x < 8; ++x) {
          const int at = Tile::at(8 * x + (t.lane & 7), slot);
          const float hi = tf32_hi<Exact>(vr[8 * y + x]);
          Vhi[at] = hi;
          if constexpr (Exact) Vlo[at] = vr[8 * y + x] - hi;
        }
      }
    };
    load_v(0);
    // kCentred: gamma^(i - R) for this thread's rows (rd.row), gamma^(R - j) for its score columns (rd.col)
    const RegisterDecays<8> rd(kCentred ? seg.l2g : 0.f, 0, t);

    cp_async_wait<0>();
    split_own(0);
    store_v();
    if (nchunks > 1) load_v(1);
    fence_proxy_async();  // the tensor cores read these
    __syncthreads();      // X(0)

    for (int c = 0; c < nchunks; ++c) {
      const int len = chunk_len(c);
      const int64_t c0 = chunk_start(c);
      const bool more = c + 1 < nchunks;
      float acc[16][4];  // [S | O] = Q [K ; Hc^T]^T, summed over the slices
#pragma unroll
      for (int q = 0; q < NQ; ++q) {
        refresh();
        const bool next = q + 1 < NQ || more;
        load_next(c, q);
        float* const st = stage(q);
        wgmma_fence();
#pragma unroll
        for (int ks = 0; ks < SW / KS; ++ks) {
          const int o = Tile::kstep(ks), ko = KeysTile::kstep(ks);
          const uint64_t qd = wgmma_desc(st + SM::Q + o, 0), kd = wgmma_desc(st + SM::K + ko, 0);
          wgmma_m64n128k8_tf32_ss(acc, qd, kd, ks > 0 || q > 0);
          if constexpr (Exact) {
            wgmma_m64n128k8_tf32_ss(acc, qd, wgmma_desc(st + SM::KLO + ko, 0), 1);
            wgmma_m64n128k8_tf32_ss(acc, wgmma_desc(st + SM::QLO + o, 0), kd, 1);
          }
        }
        wgmma_commit();
        cp_async_wait<0>();  // this thread's pieces of the next slice have landed
        if (next) split_own((q + 1) % NQ);
        wgmma_wait<0>();
        if (q + 1 == NQ) {
          // The masked scores times gamma^(i - j), as hi and lo A fragments: k step kt holds keys 8 kt ..
          uint32_t phi[8][4], plo[8][4];
#pragma unroll
          for (int kt = 0; kt < 8; ++kt)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
              const int i = 16 * t.wq + t.g + 8 * (e >> 1), j = 8 * kt + 2 * t.tq + (e & 1);
              const float f = kCentred ? rd.row[e >> 1] * rd.col[kt][e & 1] : seg.gpow(i - j);
              const float x = j <= i ? acc[kt][e] * f : 0.f;
              const float hi = tf32_hi<Exact>(x);
              const int a = (e >> 1) | ((e & 1) << 1);  // accumulator (row half, key parity) -> fragment register
              phi[kt][a] = __float_as_uint(hi);
              plo[kt][a] = __float_as_uint(x - hi);
            }
          settle_fragments(phi);
          settle_fragments(plo);
          float oacc[8][4];
#pragma unroll
          for (int nt = 0; nt < 8; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e)
              oacc[nt][e] = acc[8 + nt][e] * (kCentred ? rd.row[e >> 1] : seg.gpow(16 * t.wq + t.g + 8 * (e >> 1) + 1));
          f32_key_products<Exact>(oacc, phi, plo, Vhi, Vlo, true);  // O += (S . mask) V
          store_output_tile<float>(p.o, dv, p, oacc, b, h, c0, len, 16 * t.wq, vt * VT, t.lane);
          if (more) {  // V^T of chunk c + 1, once the state warpgroup's last products of chunk c are done
            named_barrier_sync<2, 256>();
            store_v();
            if (c + 2 < nchunks) load_v(c + 2);
          }
        }
        fence_proxy_async();
        __syncthreads();  // X: the next slice's operands are stored, this slice's products done
      }
    }
    return;
  }

  // ---- the state warpgroup ----
  // H [DQK, VT]: hacc[8 mt + n][e] at row 64 mt + 16 wq + g + 8 (e / 2), column 8 n + 2 tq + e % 2; m64 tile mt is
  // H's rows of slice mt. The update's fragments cover KT k steps at a time (all of H takes DQK / 2 registers).
  constexpr int KT = kCentred ? 8 : 4;
  float hacc[8 * NQ][4];
  {  // the entering state (as entering_state): element (row, col) at src + row rs + col cs. The pointer passes through
     // an empty asm per n8 block, so that ptxas computes each block's addresses after the last block's loads (with
     // all of key size 256's addresses computed first it spilled).
    const float* src = p.states + state_offset<DQK>(p, seg.bh, seg.s);
    const int64_t rs = p.states_transposed ? 1 : dv, cs = p.states_transposed ? DQK : 1;
    src += (16 * t.wq + t.g) * rs + (vt * VT + 2 * t.tq) * cs;
    const int64_t at[4] = {0, cs, 8 * rs, 8 * rs + cs};  // e = 0 .. 3: columns + e % 2, rows + 8 (e / 2)
#pragma unroll
    for (int mt = 0; mt < NQ; ++mt)
#pragma unroll
      for (int n = 0; n < 8; ++n) {
#pragma unroll
        for (int e = 0; e < 4; ++e) hacc[8 * mt + n][e] = src[at[e]];
        src += n < 7 ? 8 * cs : 64 * rs - 56 * cs;
        asm volatile("" : "+l"(src));
      }
  }
  float* const final_state = final_state_of(p, seg.s);
  const float copy_factor = kCentred ? seg.gpow(R + 1) : 1.f;
  // The copy Hc^T of H's rows of slice q (times copy_factor), hi and lo, into its stage's keys slice. Element e of n8
  // block n sits at KeysTile::at(LM + col, row - 64 q) = at[e] + 256 n (its row is at[e]'s + 8 n).
  auto store_copy = [&](int q) {
    float* const st = stage(q);
    int at[4];
#pragma unroll
    for (int e = 0; e < 4; ++e) at[e] = KeysTile::at(LM + 2 * t.tq + (e & 1), 16 * t.wq + t.g + 8 * (e >> 1));
#pragma unroll
    for (int n = 0; n < 8; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const float y = hacc[8 * q + n][e] * copy_factor, hi = tf32_hi<Exact>(y);
        st[SM::K + at[e] + 256 * n] = hi;
        if constexpr (Exact) st[SM::KLO + at[e] + 256 * n] = y - hi;
      }
  };
  // H's rows of slice q <- gamma^len H + K_q^T diag(w) V, from a fresh accumulator. Fragment register a of k step kk
  // holds K (key j = 8 kk + 2 tq + a / 2, times w = gamma^(len - 1 - j), 0 past len; key dim 16 wq + g + 8 (a % 2) of
  // the slice), at kat[a] + 256 kk.
  auto update = [&](int q, int len) {
    const float* const Ks = stage(q) + SM::K;
    int kat[4];
#pragma unroll
    for (int a = 0; a < 4; ++a) kat[a] = KeysTile::at(2 * t.tq + (a >> 1), 16 * t.wq + t.g + 8 * (a & 1));
    float dacc[8][4];
#pragma unroll
    for (int part = 0; part < 8 / KT; ++part) {
      uint32_t ahi[KT][4], alo[KT][4];
#pragma unroll
      for (int kt = 0; kt < KT; ++kt)
#pragma unroll
        for (int a = 0; a < 4; ++a) {
          const int kk = KT * part + kt, j = 8 * kk + 2 * t.tq + (a >> 1);
          const float x = j < len ? Ks[kat[a] + 256 * kk] * seg.gpow(len - 1 - j) : 0.f;
          const float hi = tf32_hi<Exact>(x);
          ahi[kt][a] = __float_as_uint(hi);
          alo[kt][a] = __float_as_uint(x - hi);
        }
      settle_fragments(ahi);
      settle_fragments(alo);
      f32_key_products<Exact, KT>(dacc, ahi, alo, Vhi, Vlo, part > 0, KT * part);
    }
    const float dl = seg.gpow(len);
#pragma unroll
    for (int n = 0; n < 8; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) hacc[8 * q + n][e] = hacc[8 * q + n][e] * dl + dacc[n][e];
  };

  cp_async_wait<0>();
  split_own(0);
  store_copy(0);
  fence_proxy_async();
  __syncthreads();  // X(0)
  for (int c = 0; c < nchunks; ++c) {
    const int len = chunk_len(c);
    const bool more = c + 1 < nchunks;
#pragma unroll
    for (int q = 0; q < NQ; ++q) {
      refresh();
      const bool next = q + 1 < NQ || more;
      load_next(c, q);
      if (more || final_state) update(q, len);                  // nobody reads the state after the segment's last chunk
      if (q + 1 == NQ && more) named_barrier_arrive<2, 256>();  // its reads of V^T of chunk c are done
      cp_async_wait<0>();
      if (next) {
        split_own((q + 1) % NQ);
        store_copy((q + 1) % NQ);
      }
      fence_proxy_async();
      __syncthreads();  // X
    }
  }
  if (final_state) {  // the last segment: this walk ends the sequence
    const float m = final_state_factor(p, dec, seg.bh, h);
    // element (row, col) at dst + row dv + col; dst passes through an empty asm per n8 block (as the entering state)
    float* dst = final_state + static_cast<int64_t>(seg.bh) * DQK * dv + vt * VT + (16 * t.wq + t.g) * dv + 2 * t.tq;
    const int at[4] = {0, 1, 8 * dv, 8 * dv + 1};
#pragma unroll
    for (int mt = 0; mt < NQ; ++mt)
#pragma unroll
      for (int n = 0; n < 8; ++n) {
#pragma unroll
        for (int e = 0; e < 4; ++e) dst[at[e]] = hacc[8 * mt + n][e] * m;
        dst += n < 7 ? 8 : 64 * dv - 56;
        asm volatile("" : "+l"(dst));
      }
  }
}

// The outputs pass of float with key size 256 (exact float: EngineOps<float>, one tf32 product: EngineOpsTf32), on
// wgmma_f32_walk only: the mma.sync walk's buffers for key size 256 do not fit in a block's shared memory. The host
// launches it only where the wgmma walks are built (wgmma_walks_built); elsewhere float with key size 256 runs on the
// generic scan_kernel. grid (dv / 64, NS, B * H), 256 threads, WgmmaF32Smem::bytes.
template <class Ops>
__global__ void __launch_bounds__(kEngineThreads, 1)
    chunk_float256_kernel(const __grid_constant__ ScanParams p, HeadDecays dec) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  wgmma_f32_walk<Ops::kFreshDelta, 256>(p, dec, smem_raw);
#else
  (void)p, (void)dec, (void)smem_raw;
  __trap();  // not launched: see above
#endif
}

}  // namespace retnet::cuda_detail
