#pragma once
// Eigen, included with GCC 12's false -Wmaybe-uninitialized on the AVX-512 intrinsics silenced (Eigen's
// packed-transpose helpers pass _mm512_undefined_pd() by design). Include this instead of <Eigen/Core> so
// the warning stays off wherever those intrinsics get inlined (the pragma state is taken at their location).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

#include <Eigen/Core>
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif
