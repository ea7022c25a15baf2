#pragma once
// Part of retention_engine.cuh (included after retention_wgmma.cuh): the outputs walk of chunk_engine_kernel for
// float storage (key size 128, value tile 64) on Hopper's warpgroup MMA in tf32, where the code is compiled for sm_90a.
// Same contract and arithmetic as the mma.sync walk: exact float (EngineOps<float>) makes every product three tf32
// products, hi hi + hi lo + lo hi (x = hi + lo, hi the upper 19 bits of x), about 1e-6 relative; Cuda::allow_tf32
// (EngineOpsTf32) one, of operands rounded to tf32. Each chunk's state part is summed in a fresh accumulator and added
// to the state in float.
//
// tf32 wgmma reads shared-memory operands only K-major (no transposed operands), and every operand needs its lo part
// beside it, so one chunk's tiles take all of a block's shared memory (WgmmaF32Smem, 224 KiB): Q as loaded and its lo
// part; the keys tile [K ; Hc^T] (K as loaded, and the state copy Hc^T = gamma^(R + 1) H^T, R = 32) and its lo part;
// V^T in hi and lo parts. Nothing is double-buffered: the next chunk's Q and K are loaded once the chunk's products
// that read them are done, and V travels through registers one chunk ahead. Two warpgroups:
//   the outputs warpgroup (0): [S | O] = Q [K ; Hc^T]^T as m64 n128 products from shared memory, the causal mask and
//     decays gamma^(i - j) in registers, O's rows times gamma^(i - R), O += (S . mask) V with the masked scores' hi
//     and lo parts as A fragments from registers (their accumulator layout is the A fragment layout once the keys of
//     every 8 are permuted: V^T's columns are stored in that order), the outputs stored;
//   the state warpgroup (1): H [128, 64] in registers (two m64 tiles), H <- gamma^len H + K^T diag(w) V one m64
//     tile at a time, K^T diag(w)'s fragments from registers, V^T from shared memory; then the copy Hc^T entering
//     the next chunk.
// A chunk: (1) block barrier: Q and K have landed, the previous chunk's products are done; (2) the outputs warpgroup
// stores Q's and K's lo parts (without Exact: rounds Q and K in place) and V^T (from the registers it loaded the
// chunk's V into), the state warpgroup Hc^T; (3) block barrier; (4) the products; once the last readers of Q and K are
// done (a 256-thread barrier), the next chunk's Q and K are loaded. On the H200 this walk took exact float from 0.70x
// to 1.1-1.2x fla's float (tf32) speed (bench/results). RETNET_CUDA_AB_F32WALK=0 (benchmark A/B switch, compile time)
// keeps float on the mma.sync walk.
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#ifndef RETNET_CUDA_AB_F32WALK
#define RETNET_CUDA_AB_F32WALK 1
#endif

namespace retnet::cuda_detail {

// Whether chunk_engine_kernel<Ops, DQK, VT, Summary> has the float wgmma walk (where built for sm_90a): exact float
// (EngineOps<float>), or one tf32 product per product (EngineOpsTf32, Cuda::allow_tf32).
template <class Ops, int DQK, int VT, bool Summary>
inline constexpr bool kWgmmaF32Walk =
    RETNET_CUDA_AB_F32WALK != 0 && !Summary &&
    (std::is_same_v<Ops, EngineOps<float>> || std::is_same_v<Ops, EngineOpsTf32>)&&DQK == 128 && VT == 64;

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

struct WgmmaF32Smem {
  static constexpr int LM = kEngineRows, DQK = 128, VT = 64;
  static constexpr int QK = LM * DQK, VV = VT * LM;  // floats
  // Q (as loaded) and its lo part [LM, DQK]; the keys tile [K ; Hc^T] (rows 0-63 K as loaded, rows 64-127 the state
  // copy Hc^T [VT, DQK]) and its lo part [128, DQK]; V^T hi and lo [VT, LM] (columns in key-slot order)
  static constexpr int Q = 0, QLO = QK, KEYS = 2 * QK, KEYSLO = 4 * QK, VHI = 6 * QK, VLO = VHI + VV, END = VLO + VV;
  static constexpr int bytes = END * 4 + 1024;  // and room to align to 1024 bytes
  static constexpr bool fits = bytes <= 227 * 1024;
};

// The outputs walk for float on wgmma (see the top of this file); Exact: three tf32 products per product, else one.
// Key size 256 takes the chunk in two key halves of 128 (the shared-memory tiles of key size 128 hold one half): the
// scores and the state part of the outputs accumulate over both; the state warpgroup holds all of H and updates the
// half whose keys are in. grid (dv / 64, NS, B * H), 256 threads.
template <bool Exact, int DQK = 128>
__device__ __forceinline__ void wgmma_f32_walk(const ScanParams& p, const HeadDecays& dec, unsigned char* smem_raw) {
  using SM = WgmmaF32Smem;
  using Tile = F32Tile<64>;       // Q, V^T
  using KeysTile = F32Tile<128>;  // [K ; Hc^T]
  constexpr int LM = kEngineRows, KW = SM::DQK, KH = DQK / KW, VT = 64, R = LM / 2, KS = 8;
  // Key size 128 factors the decays as gamma^(i - R) gamma^(R - j) (heads of decay >= 2^-3, wgmma_walk_applies);
  // key size 256 serves every head (nothing else fits its buffers): gamma^(i - j) per score, gamma^(i + 1) per
  // output row, Hc^T = H^T.
  constexpr bool kCentred = DQK == 128;
  static_assert(SM::fits, "shared memory of one block");
  static_assert(DQK == KW || DQK == 2 * KW, "key size 128 or 256");
  float* const smem = reinterpret_cast<float*>((reinterpret_cast<uintptr_t>(smem_raw) + 1023) & ~uintptr_t{1023});
  float* const Qs = smem + SM::Q;
  float* const Qlo = smem + SM::QLO;
  float* const Ks = smem + SM::KEYS;
  float* const Klo = smem + SM::KEYSLO;
  float* const Vhi = smem + SM::VHI;
  float* const Vlo = smem + SM::VLO;

  // The thread's coordinates pass through an empty asm at every chunk, so that ptxas computes the offsets derived
  // from them where they are used: hoisted out of the chunk loop they held a register each and spilled.
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

  // Key half kh of Q and K of chunk c into Qs and Ks in 16-byte cp.async pieces (8 per tensor and thread; a warp reads
  // one row), rows past the chunk zero-filled.
  auto load_qk = [&](int c, int kh) {
    const int64_t c0 = chunk_start(c);
    const int len = chunk_len(c);
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      const int piece = t.tid + 256 * i, r = piece >> 5, col = (piece & 31) * 4;
      const bool ok = r < len;
      const int64_t off = ok ? phys(c0 + r) * ld_qk + KW * kh + col : 0;
      cp_async16(Qs + Tile::at(r, col), qg + off, ok ? 16 : 0);
      cp_async16(Ks + KeysTile::at(r, col), kg + off, ok ? 16 : 0);
    }
    cp_async_commit();
  };
  // The load that follows key half kh of chunk c, if any: the next half, or the next chunk's first.
  auto load_after = [&](int c, int kh) {
    if (kh + 1 < KH) return load_qk(c, kh + 1);
    if (c + 1 < nchunks) load_qk(c + 1, 0);
  };
  load_qk(0, 0);

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
    load_v(0);
    // kCentred: gamma^(i - R) for this thread's rows (rd.row), gamma^(R - j) for its score columns (rd.col)
    const RegisterDecays<8> rd(kCentred ? seg.l2g : 0.f, 0, t);

    for (int c = 0; c < nchunks; ++c) {
      const int len = chunk_len(c);
      const int64_t c0 = chunk_start(c);
      const bool more = c + 1 < nchunks;
      float acc[16][4];  // [S | O] = Q [K ; Hc^T]^T, summed over the key halves
#pragma unroll
      for (int kh = 0; kh < KH; ++kh) {
        cp_async_wait<0>();
        __syncthreads();  // (1) key half kh of Q and K of chunk c is in; the previous products are done
        refresh();
        // (2) the lo parts of Q and K, 16-byte pieces at the same places (K: rows 0-63 of each 128-row atom; without
        // Exact, Q and K rounded to tf32 in place), and V^T from vr
#pragma unroll 4
        for (int i = 0; i < 16; ++i) {
          const int at = 4 * (t.tid + 128 * i), kat = at + (at / Tile::kAtom) * Tile::kAtom;
          const float4 q = *reinterpret_cast<const float4*>(Qs + at), k = *reinterpret_cast<const float4*>(Ks + kat);
          if constexpr (Exact) {
            *reinterpret_cast<float4*>(Qlo + at) =
                make_float4(q.x - tf32_hi(q.x), q.y - tf32_hi(q.y), q.z - tf32_hi(q.z), q.w - tf32_hi(q.w));
            *reinterpret_cast<float4*>(Klo + kat) =
                make_float4(k.x - tf32_hi(k.x), k.y - tf32_hi(k.y), k.z - tf32_hi(k.z), k.w - tf32_hi(k.w));
          } else {
            *reinterpret_cast<float4*>(Qs + at) =
                make_float4(tf32_hi<false>(q.x), tf32_hi<false>(q.y), tf32_hi<false>(q.z), tf32_hi<false>(q.w));
            *reinterpret_cast<float4*>(Ks + kat) =
                make_float4(tf32_hi<false>(k.x), tf32_hi<false>(k.y), tf32_hi<false>(k.z), tf32_hi<false>(k.w));
          }
        }
        if (kh == 0) {
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
          if (more) load_v(c + 1);  // in flight through the chunk's products
        }
        fence_proxy_async();  // the tensor cores read these
        __syncthreads();      // (3) all of the half's operands are stored

        // (4) [S | O] (+)= Q [K ; Hc^T]^T, three m64 n128 products per k step (n64 products, reading both operands
        // from shared memory, would need its full bandwidth)
        wgmma_fence();
#pragma unroll
        for (int ks = 0; ks < KW / KS; ++ks) {
          const int o = Tile::kstep(ks), ko = KeysTile::kstep(ks);
          wgmma_m64n128k8_tf32_ss(acc, wgmma_desc(Qs + o, 0), wgmma_desc(Ks + ko, 0), ks > 0 || kh > 0);
          if constexpr (Exact) {
            wgmma_m64n128k8_tf32_ss(acc, wgmma_desc(Qs + o, 0), wgmma_desc(Klo + ko, 0), 1);
            wgmma_m64n128k8_tf32_ss(acc, wgmma_desc(Qlo + o, 0), wgmma_desc(Ks + ko, 0), 1);
          }
        }
        wgmma_commit();
        wgmma_wait<0>();
        if (more || kh + 1 < KH) {  // the last readers of Q and K are done: the next ones may come in
          named_barrier_sync<1, 256>();
          load_after(c, kh);
        }
      }
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
    }
    return;
  }

  // ---- the state warpgroup ----
  // H [DQK, VT]: hacc[8 mt + n][e] at row 64 mt + 16 wq + g + 8 (e / 2), column 8 n + 2 tq + e % 2.
  // MT m64 tiles of H; the update's fragments cover KT k steps at a time (key size 256: half of the chunk's keys,
  // since all of H takes 128 registers)
  constexpr int MT = DQK / 64, KT = kCentred ? 8 : 2;
  float hacc[8 * MT][4];
  {  // the entering state (as entering_state): element (row, col) at src + row rs + col cs. The pointer passes through
     // an empty asm per n8 block, so that ptxas computes each block's addresses after the last block's loads (with
     // all of key size 256's addresses computed first it spilled).
    const float* src = p.states + state_offset<DQK>(p, seg.bh, seg.s);
    const int64_t rs = p.states_transposed ? 1 : dv, cs = p.states_transposed ? DQK : 1;
    src += (16 * t.wq + t.g) * rs + (vt * VT + 2 * t.tq) * cs;
    const int64_t at[4] = {0, cs, 8 * rs, 8 * rs + cs};  // e = 0 .. 3: columns + e % 2, rows + 8 (e / 2)
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
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
  for (int c = 0; c < nchunks; ++c) {
    const int len = chunk_len(c);
    const bool more = c + 1 < nchunks;
#pragma unroll
    for (int kh = 0; kh < KH; ++kh) {
      const bool load_next = more || kh + 1 < KH;
      cp_async_wait<0>();
      __syncthreads();  // (1)
      refresh();
      // (2) key half kh of the copy Hc^T entering chunk c, hi and lo
      {
        // Element e of n8 block n of tile 2 kh + m sits at KeysTile::at(LM + col, row - KW kh) = at[e] + 2 m kAtom +
        // 256 n (its row is at[e]'s + 8 n, its column at[e]'s + 64 m): four offsets instead of one address each.
        int at[4];
#pragma unroll
        for (int e = 0; e < 4; ++e) at[e] = KeysTile::at(LM + 2 * t.tq + (e & 1), 16 * t.wq + t.g + 8 * (e >> 1));
#pragma unroll
        for (int m = 0; m < 2; ++m)
#pragma unroll
          for (int n = 0; n < 8; ++n)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
              const float y = hacc[8 * (2 * kh + m) + n][e] * copy_factor, hi = tf32_hi<Exact>(y);
              const int o = at[e] + 2 * m * KeysTile::kAtom + 256 * n;
              Ks[o] = hi;
              if constexpr (Exact) Klo[o] = y - hi;
            }
      }
      fence_proxy_async();
      __syncthreads();              // (3)
      if (!more && !final_state) {  // nobody reads the state after the segment's last chunk
        if (kh + 1 == KH) break;
        named_barrier_sync<1, 256>();
        load_after(c, kh);
        continue;
      }
      const float dl = seg.gpow(len);
      // (4) H <- gamma^len H + K^T diag(w) V for the half's key dims, one m64 tile (64 key dims) at a time, from a
      // fresh accumulator
      // Fragment register a of k step kk holds K (key j = 8 kk + 2 tq + a / 2, key dim 64 m + 16 wq + g + 8 (a % 2)),
      // at kat[a] + 256 kk + 2 m kAtom in the keys tile (as the copy's offsets above)
      int kat[4];
#pragma unroll
      for (int a = 0; a < 4; ++a) kat[a] = KeysTile::at(2 * t.tq + (a >> 1), 16 * t.wq + t.g + 8 * (a & 1));
#pragma unroll
      for (int m = 0; m < 2; ++m) {
        const int mt = 2 * kh + m;
        float dacc[8][4];
#pragma unroll
        for (int part = 0; part < 8 / KT; ++part) {
          uint32_t ahi[KT][4], alo[KT][4];
#pragma unroll
          for (int kt = 0; kt < KT; ++kt)
#pragma unroll
            for (int a = 0; a < 4; ++a) {  // fragment register a: key j (times w = gamma^(len - 1 - j), 0 past len)
              const int kk = KT * part + kt, j = 8 * kk + 2 * t.tq + (a >> 1);
              const float x = j < len ? Ks[kat[a] + 256 * kk + 2 * m * KeysTile::kAtom] * seg.gpow(len - 1 - j) : 0.f;
              const float hi = tf32_hi<Exact>(x);
              ahi[kt][a] = __float_as_uint(hi);
              alo[kt][a] = __float_as_uint(x - hi);
            }
          settle_fragments(ahi);
          settle_fragments(alo);
          if (m == 1 && part + 1 == 8 / KT && load_next) {  // this warpgroup's reads of K are done: the next Q and
            named_barrier_sync<1, 256>();                   // K may come in
            load_after(c, kh);
          }
          // K^T diag(w) V over the part's keys, into a fresh accumulator
          f32_key_products<Exact, KT>(dacc, ahi, alo, Vhi, Vlo, part > 0, KT * part);
        }
#pragma unroll
        for (int n = 0; n < 8; ++n)
#pragma unroll
          for (int e = 0; e < 4; ++e) hacc[8 * mt + n][e] = hacc[8 * mt + n][e] * dl + dacc[n][e];
      }
    }
  }
  if (final_state) {  // the last segment: this walk ends the sequence
    const float m = final_state_factor(p, dec, seg.bh, h);
    // element (row, col) at dst + row dv + col; dst passes through an empty asm per n8 block (as the entering state)
    float* dst = final_state + static_cast<int64_t>(seg.bh) * DQK * dv + vt * VT + (16 * t.wq + t.g) * dv + 2 * t.tq;
    const int at[4] = {0, 1, 8 * dv, 8 * dv + 1};
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int n = 0; n < 8; ++n) {
#pragma unroll
        for (int e = 0; e < 4; ++e) dst[at[e]] = hacc[8 * mt + n][e] * m;
        dst += n < 7 ? 8 : 64 * dv - 56;
        asm volatile("" : "+l"(dst));
      }
  }
}

// Whether float with key size 256 has an outputs pass on the chunk engine: chunk_float256_kernel, where the code is
// built for sm_90a (RETNET_CUDA_AB_F32WALK=0: the generic scan_kernel).
inline constexpr bool kFloat256Walk = RETNET_CUDA_AB_F32WALK != 0;

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
