// kernel_variants.h: which instruction set the CPU ops' kernels use, chosen
// at run time; one place for every CPU op (compress, multiply).
//
// Each op compiles its kernels three times from one source (a .inc file
// included once per variant, each time in its own namespace):
//   baseline  x86-64 (SSE2) or portable C++ elsewhere;
//   avx2      AVX2, FMA, F16C, BMI1, LZCNT, POPCNT (Haswell, Zen and later);
//   avx512    the above and AVX-512 F, BW, VL, VBMI2, and BMI2 (Ice Lake,
//             Zen 4 and later).
// The AVX2 and AVX-512 copies are compiled under MACKO_CPU_BEGIN_AVX2 /
// MACKO_CPU_BEGIN_AVX512 (a `#pragma GCC target` with the features below),
// and chosen_kernels() picks the best variant the CPU runs, where the
// compiler is GCC for x86-64; elsewhere only the baseline exists.
//
// MACKO_CPU_KERNELS=baseline|avx2|avx512 in the environment caps the
// choice, for tests and comparisons (read on every call, so a test can
// change it between calls); unset or empty: no cap.
#pragma once

#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>

#if defined(__SSE2__) && !defined(MACKO_CPU_NO_SIMD)
#include <emmintrin.h>
#define MACKO_CPU_SSE2 1
#else
#define MACKO_CPU_SSE2 0
#endif

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(MACKO_CPU_NO_SIMD)
#include <immintrin.h>
#define MACKO_CPU_X86_DISPATCH 1
#else
#define MACKO_CPU_X86_DISPATCH 0
#endif

// The compiler targets of the two vector variants; cpu_supports() below
// checks the same features at run time.
#define MACKO_CPU_BEGIN_AVX2 \
  _Pragma("GCC push_options") _Pragma("GCC target(\"avx2,fma,f16c,popcnt,bmi,lzcnt\")")
#define MACKO_CPU_BEGIN_AVX512                                                            \
  _Pragma("GCC push_options")                                                             \
      _Pragma("GCC target(\"avx512f,avx512bw,avx512vl,avx512vbmi2,bmi2,avx2,fma,f16c,popcnt,bmi,lzcnt\")")
#define MACKO_CPU_END_TARGET _Pragma("GCC pop_options")

namespace macko {
namespace cpu {

// The kernel variants, slowest first.
enum class Kernels { kBaseline = 0, kAvx2 = 1, kAvx512 = 2 };

inline const char* kernels_name(Kernels kernels) {
  switch (kernels) {
    case Kernels::kAvx512:
      return "avx512";
    case Kernels::kAvx2:
      return "avx2";
    default:
      return "baseline";
  }
}

// The best variant this CPU runs (and this build has).
inline Kernels supported_kernels() {
#if MACKO_CPU_X86_DISPATCH
  static const Kernels supported = [] {
    __builtin_cpu_init();
    const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                      __builtin_cpu_supports("f16c") && __builtin_cpu_supports("popcnt") &&
                      __builtin_cpu_supports("bmi") && __builtin_cpu_supports("lzcnt");
    const bool avx512 = avx2 && __builtin_cpu_supports("avx512f") &&
                        __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
                        __builtin_cpu_supports("avx512vbmi2") && __builtin_cpu_supports("bmi2");
    return avx512 ? Kernels::kAvx512 : avx2 ? Kernels::kAvx2 : Kernels::kBaseline;
  }();
  return supported;
#else
  return Kernels::kBaseline;
#endif
}

// The variant the ops use now: the supported one, capped by
// MACKO_CPU_KERNELS. A value other than the three names is an error rather
// than no cap, so that a misspelt cap cannot pass a test silently.
inline Kernels chosen_kernels() {
  const Kernels best = supported_kernels();
  const char* cap = std::getenv("MACKO_CPU_KERNELS");
  if (cap == nullptr || cap[0] == '\0') return best;
  for (Kernels k : {Kernels::kBaseline, Kernels::kAvx2, Kernels::kAvx512}) {
    if (std::strcmp(cap, kernels_name(k)) == 0) return std::min(best, k);
  }
  TORCH_CHECK_VALUE(false, "MACKO_CPU_KERNELS must be baseline, avx2 or avx512 (or unset), got '",
                    cap, "'");
}

}  // namespace cpu
}  // namespace macko
