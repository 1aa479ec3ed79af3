// The op schemas, registered once. Each implementation registers itself
// with TORCH_LIBRARY_IMPL beside its kernel (csrc/cpu, csrc/cuda,
// csrc/validate.cpp); the Python layer (macko_spmv/ops.py) adds the shape
// functions for tracing.
#include <Python.h>
#include <torch/library.h>

#include "cpu/kernel_variants.h"
#include "macko.h"

// The module only has to exist so that `import macko_spmv._C` loads this
// library and runs its registrations. Built against the limited Python API,
// so one binary serves every Python version from 3.10 on.
extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT, "_C", "MACKO sparse matrix ops (torch.ops.macko_spmv)",
      -1, nullptr};
  return PyModule_Create(&module_def);
}
}

namespace macko {

namespace {

// A JSON string literal: the build facts come from setup.py's command line,
// so quote what JSON needs quoted rather than trust them.
std::string json_string(const char* text) {
  std::string out = "\"";
  for (const char* p = text; *p; ++p) {
    const unsigned char c = static_cast<unsigned char>(*p);
    if (c == '"' || c == '\\') {
      out += '\\';
      out += *p;
    } else if (c < 0x20) {
      static const char kHex[] = "0123456789abcdef";
      out += "\\u00";
      out += kHex[c >> 4];
      out += kHex[c & 0xF];
    } else {
      out += *p;
    }
  }
  return out + "\"";
}

}  // namespace

// Compiled-in facts about this build, as a JSON object (macko_spmv.ops.
// build_info parses it): a structured format, since values such as the
// architecture list "8.0;9.0+PTX" hold any separator a flat one would use.
//   torch:  the torch version compiled against
//   cuda:   the CUDA version of the GPU kernels, null without them
//   arch:   their TORCH_CUDA_ARCH_LIST, null without them
//   openmp: whether the CPU ops run in parallel (at::parallel_for is inline
//           and only parallel in code compiled with OpenMP)
std::string build_info() {
  std::string info = "{\"torch\": " + json_string(MACKO_TORCH_VERSION);
#ifdef MACKO_WITH_CUDA
  info += ", \"cuda\": " + json_string(MACKO_CUDA_VERSION);
  info += ", \"arch\": " + json_string(MACKO_CUDA_ARCHS);
#else
  info += ", \"cuda\": null, \"arch\": null";
#endif
#ifdef _OPENMP
  info += ", \"openmp\": true}";
#else
  info += ", \"openmp\": false}";
#endif
  return info;
}

// The instruction-set variant of the CPU kernels that the ops use now:
// "baseline", "avx2" or "avx512" (the best this CPU runs, capped by
// MACKO_CPU_KERNELS), for tests and benchmarks to report.
std::string cpu_kernels() { return cpu::kernels_name(cpu::chosen_kernels()); }

TORCH_LIBRARY(macko_spmv, m) {
  m.def("compress(Tensor dense) -> (Tensor values, Tensor deltas, Tensor row_indices)");
  // scales: for 8-bit values (int8 or float8_e4m3fn) only, and required
  // with them: [rows] in the activation dtype (that of x, y, the bias and
  // the dense matrix), a value q of row r standing for q * scales[r]
  // (docs/FORMAT.md).
  m.def(
      "decompress(Tensor values, Tensor deltas, Tensor row_indices, int rows, "
      "int cols, Tensor? scales=None) -> Tensor");
  // y = x M^T (+ bias): the bias is added to each row's fp32 sum before
  // the one rounding to the matrix's dtype (on the GPU: after, in a second
  // pass), as nn.Linear adds its bias inside the GEMM. With scales, M is
  // decompress's matrix: each q * scales[r] rounded once to the activation
  // dtype, on every device and route.
  m.def(
      "multiply(Tensor values, Tensor deltas, Tensor row_indices, int rows, "
      "int cols, Tensor x, Tensor? bias=None, Tensor? scales=None) -> Tensor");
  m.def(
      "validate(Tensor values, Tensor deltas, Tensor row_indices, int rows, "
      "int cols, Tensor? scales=None) -> ()");
  m.def("build_info() -> str", &build_info);
  // For tests and benchmarks, not the API: which CPU kernels run (baseline,
  // avx2 or avx512, after the MACKO_CPU_KERNELS cap; csrc/cpu/kernel_variants.h).
  m.def("_cpu_kernels() -> str", &cpu_kernels);
#ifdef MACKO_DEV_OPS
  // Development builds only (setup.py, MACKO_DEV_OPS): the benchmark's
  // baseline encoder as a plain single-threaded loop
  // (csrc/cpu/reference_compress.cpp). CPU only; not part of the API.
  m.def("_compress_reference(Tensor dense) -> (Tensor values, Tensor deltas, Tensor row_indices)");
#endif
}

}  // namespace macko
