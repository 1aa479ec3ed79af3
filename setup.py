"""Builds macko_spmv._C ahead of time from csrc/ (no run-time compilation).

Environment variables:
  MACKO_BUILD_CUDA      "1" forces the CUDA build (fails without a toolkit),
                        "0" forces the CPU-only build; unset: CUDA when both a
                        toolkit and a CUDA build of torch are found.
  CUDA_HOME             the CUDA toolkit root; otherwise found from nvcc on PATH
                        (following wrapper scripts) or /usr/local/cuda.
  TORCH_CUDA_ARCH_LIST  GPU architectures to compile for, e.g. "9.0" or
                        "8.0;9.0+PTX"; default: every architecture the toolkit
                        supports from Turing on, with PTX for the newest.
  MAX_JOBS              parallel compile jobs (ninja).
"""

import glob
import os
import re
import shutil
import sys

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))
# abi3: one binary for every CPython from this version on. torch's build
# helper defines Py_LIMITED_API for py_limited_api extensions (3.10).
ABI3_TAG = "cp310"


def log(message):
    print(f"macko_spmv build: {message}", file=sys.stderr, flush=True)


def _is_toolkit_root(path):
    return bool(path) and os.path.isfile(os.path.join(path, "bin", "nvcc")) and os.path.isfile(
        os.path.join(path, "include", "cuda_runtime.h")
    )


def find_cuda_home():
    """The CUDA toolkit root, or None.

    nvcc on PATH may be a wrapper script (e.g. /usr/local/bin/nvcc exec'ing
    the real one), so guessing the root from its location is not enough: the
    real path is resolved through symlinks and, for a script, read from it.
    """
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            if _is_toolkit_root(os.environ[var]):
                return os.environ[var]
            log(f"{var}={os.environ[var]} is not a CUDA toolkit root (no bin/nvcc and include/)")
    nvcc = shutil.which("nvcc")
    if nvcc:
        real = os.path.realpath(nvcc)
        candidate = os.path.dirname(os.path.dirname(real))
        if _is_toolkit_root(candidate):
            return candidate
        try:
            with open(real, "rb") as f:
                head = f.read(4096)
        except OSError:
            head = b""
        if head.startswith(b"#!"):
            for match in re.finditer(rb"(/[^\s'\"]+)/bin/nvcc", head):
                candidate = match.group(1).decode()
                if _is_toolkit_root(candidate):
                    return candidate
    for candidate in ["/usr/local/cuda"] + sorted(glob.glob("/usr/local/cuda-*"), reverse=True):
        if _is_toolkit_root(candidate):
            return candidate
    return None


def default_arch_list(cuda_version):
    """Every architecture from Turing on that this toolkit compiles for."""
    major, minor = (int(p) for p in cuda_version.split(".")[:2])
    archs = ["7.5", "8.0", "8.6", "8.9", "9.0"]
    if (major, minor) >= (12, 8):
        archs += ["10.0", "12.0"]
    return ";".join(archs[:-1] + [archs[-1] + "+PTX"])


def decide_cuda(cuda_home):
    import torch

    forced = os.environ.get("MACKO_BUILD_CUDA")
    if forced == "0":
        log("MACKO_BUILD_CUDA=0: building the CPU-only extension")
        return False
    reasons = []
    if cuda_home is None:
        reasons.append("no CUDA toolkit found (set CUDA_HOME)")
    if torch.version.cuda is None:
        reasons.append(f"torch {torch.__version__} is a CPU-only build")
    if forced == "1" and reasons:
        raise RuntimeError("MACKO_BUILD_CUDA=1 but " + "; ".join(reasons))
    if reasons:
        log("building the CPU-only extension: " + "; ".join(reasons))
        return False
    return True


def extensions():
    cuda_home = find_cuda_home()
    if cuda_home:
        # torch.utils.cpp_extension reads CUDA_HOME once, when imported.
        os.environ["CUDA_HOME"] = cuda_home
    import torch
    from torch.utils import cpp_extension

    with_cuda = decide_cuda(cuda_home)
    sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")) + glob.glob(os.path.join("csrc", "cpu", "*.cpp")))
    cxx_flags = ["-O3", f'-DMACKO_TORCH_VERSION="{torch.__version__}"']
    if with_cuda:
        if not os.environ.get("TORCH_CUDA_ARCH_LIST"):
            os.environ["TORCH_CUDA_ARCH_LIST"] = default_arch_list(torch.version.cuda)
        archs = os.environ["TORCH_CUDA_ARCH_LIST"]
        log(f"building with CUDA {torch.version.cuda} from {cuda_home} for TORCH_CUDA_ARCH_LIST={archs}")
        sources += sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu")))
        cxx_flags += [
            "-DMACKO_WITH_CUDA",
            f'-DMACKO_CUDA_VERSION="{torch.version.cuda}"',
            f'-DMACKO_CUDA_ARCHS="{archs}"',
        ]
        extension = cpp_extension.CUDAExtension
        nvcc_flags = ["-O3", "-lineinfo"]
        compile_args = {"cxx": cxx_flags, "nvcc": nvcc_flags}
    else:
        extension = cpp_extension.CppExtension
        compile_args = {"cxx": cxx_flags}
    return [
        extension(
            "macko_spmv._C",
            sources,
            extra_compile_args=compile_args,
            # A toolchain that links libstdc++ statically (some CXX wrappers
            # do) would otherwise export that copy's locale ids as unique
            # symbols shared with the process's libstdc++, and formatting an
            # integer into an error message would crash. Keep any archive's
            # symbols private to this module.
            extra_link_args=["-Wl,--exclude-libs,ALL"],
            py_limited_api=True,
        )
    ], cpp_extension.BuildExtension


ext_modules, build_ext = extensions()

setup(
    ext_modules=ext_modules,
    cmdclass={"build_ext": build_ext},
    options={"bdist_wheel": {"py_limited_api": ABI3_TAG}},
)
