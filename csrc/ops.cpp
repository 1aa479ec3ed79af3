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

// Compiled-in facts about this build, for `python -m macko_spmv info`.
std::string build_info() {
  std::string info = "torch=" MACKO_TORCH_VERSION;
#ifdef MACKO_WITH_CUDA
  info += ";cuda=" MACKO_CUDA_VERSION ";arch=" MACKO_CUDA_ARCHS;
#else
  info += ";cuda=none";
#endif
  // Whether the CPU ops run in parallel: at::parallel_for is inline and
  // only parallel in code compiled with OpenMP.
#ifdef _OPENMP
  info += ";openmp=1";
#else
  info += ";openmp=0";
#endif
  return info;
}

// The instruction-set variant of the CPU kernels that the ops use now:
// "baseline", "avx2" or "avx512" (the best this CPU runs, capped by
// MACKO_CPU_KERNELS), for tests and benchmarks to report.
std::string cpu_kernels() { return cpu::kernels_name(cpu::chosen_kernels()); }

TORCH_LIBRARY(macko_spmv, m) {
  m.def("compress(Tensor dense) -> (Tensor values, Tensor deltas, Tensor row_indices)");
  m.def(
      "decompress(Tensor values, Tensor deltas, Tensor row_indices, int rows, "
      "int cols) -> Tensor");
  m.def(
      "multiply(Tensor values, Tensor deltas, Tensor row_indices, int rows, "
      "int cols, Tensor x) -> Tensor");
  m.def(
      "validate(Tensor values, Tensor deltas, Tensor row_indices, int rows, "
      "int cols) -> ()");
  m.def("build_info() -> str", &build_info);
  m.def("_cpu_kernels() -> str", &cpu_kernels);
  // Benchmark baseline only (csrc/cpu/reference_compress.cpp): the encoder
  // as a plain single-threaded loop. CPU only; not part of the API.
  m.def("_compress_reference(Tensor dense) -> (Tensor values, Tensor deltas, Tensor row_indices)");
}

}  // namespace macko
