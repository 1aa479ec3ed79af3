"""Builds macko_spmv._C ahead of time from csrc/ (no run-time compilation).

Environment variables:
  MACKO_BUILD_CUDA      "1" forces the CUDA build (fails without a toolkit),
                        "0" forces the CPU-only build; unset: CUDA when both a
                        toolkit and a CUDA build of torch are found.
  CUDA_HOME             the CUDA toolkit root; otherwise found from nvcc on PATH
                        (following wrapper scripts) or /usr/local/cuda.
  TORCH_CUDA_ARCH_LIST  GPU architectures to compile for, e.g. "9.0" or
                        "8.0;9.0+PTX"; unset: those of the visible GPUs, or
                        NO_GPU_ARCH_LIST (below) when none is visible. The
                        prebuilt wheels set it to every architecture their
                        toolkit supports (.github/workflows/wheels.yml).
  MAX_JOBS              parallel compile jobs (ninja).
  MACKO_LOCAL_VERSION   "auto" appends the build's variant as a local version
                        label (0.1.0+cu126, 0.1.0+cpu), as the per-CUDA wheel
                        indexes want; unset, "" or "none": the plain version.
  MACKO_WHEEL_INDEX     base URL of the per-variant wheel indexes (<url>/cu126,
  MACKO_WHEEL_VARIANTS  ...) and the variants published there ("cpu cu126
                        ..."), recorded for the import-time error message.
  MACKO_DEV_OPS         "1" builds the development-only ops (today
                        _compress_reference, the compression benchmark's naive
                        baseline), "0" leaves them out; unset: on for in-place
                        and editable builds (`build_ext --inplace`,
                        `pip install -e`, as development and CI use), off for
                        wheels and plain installs.

Every build pins the torch it was compiled against (torch==X.Y.*) and records
what it was built with in macko_spmv/_build_config.py (generated, not in git),
which macko_spmv/ops.py checks against the installed torch before loading _C.

The build uses the torch of the environment it runs in and never installs one
(pyproject.toml's build requirements leave torch out): it stops at once, with
what to do, when torch is missing or pip runs it in an isolated build
environment, which hides the user's torch.
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


# With no GPU to ask and no TORCH_CUDA_ARCH_LIST, one architecture keeps the
# build short: sm_80 machine code, which also runs on the later 8.x GPUs (A10,
# RTX 30xx/40xx, L4, L40), and compute_80 PTX, which the driver compiles once
# (then caches) for any newer GPU (H100/H200, Blackwell). The kernels' fast
# paths (cp.async, mma.sync) start at sm_80, so the PTX loses nothing but that
# first compilation; Turing (7.5) needs an explicit list.
NO_GPU_ARCH_LIST = "8.0+PTX"


def choose_arch_list(requested, capabilities):
    """(TORCH_CUDA_ARCH_LIST, why) for the CUDA build.

    requested: TORCH_CUDA_ARCH_LIST from the environment ("" or None: unset);
    capabilities: (major, minor) of each visible GPU.
    """
    if requested:
        return requested, "TORCH_CUDA_ARCH_LIST as set"
    if capabilities:
        archs = [f"{major}.{minor}" for major, minor in sorted(set(capabilities))]
        return ";".join(archs), "the visible GPU" + ("s'" if len(capabilities) > 1 else "'s") + " only"
    return NO_GPU_ARCH_LIST, (
        "no GPU visible and TORCH_CUDA_ARCH_LIST unset: sm_80 code and PTX for newer GPUs "
        '(set TORCH_CUDA_ARCH_LIST, e.g. "9.0", to choose)'
    )


def visible_gpu_capabilities(torch):
    """(major, minor) of each GPU this build can see; () without one."""
    try:
        if not torch.cuda.is_available():
            return ()
        return tuple(torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count()))
    except RuntimeError:  # a driver that cannot be initialised: as no GPU
        return ()


def decide_cuda(forced, cuda_home, torch_cuda, torch_version):
    """(with_cuda, why): whether to compile the CUDA kernels.

    forced: MACKO_BUILD_CUDA ("1", "0" or unset); cuda_home: the toolkit
    root or None; torch_cuda: torch.version.cuda (None for a CPU torch).
    Raises RuntimeError when MACKO_BUILD_CUDA=1 cannot be honoured.
    """
    if forced == "0":
        return False, "MACKO_BUILD_CUDA=0"
    reasons = []
    if cuda_home is None:
        reasons.append("no CUDA toolkit found (set CUDA_HOME)")
    if torch_cuda is None:
        reasons.append(f"torch {torch_version} is a CPU-only build")
    if forced == "1" and reasons:
        raise RuntimeError("MACKO_BUILD_CUDA=1 but " + "; ".join(reasons))
    return not reasons, "; ".join(reasons)


def cpu_only_warning(forced, why, torch_cuda):
    """The banner for a CPU-only build that the user may not expect: torch
    can use a GPU but this build will not (no toolkit was found). None when
    the CPU-only build was asked for (MACKO_BUILD_CUDA=0) or is all that
    torch can use."""
    if forced == "0" or torch_cuda is None:
        return None
    rule = "*" * 78
    return "\n".join([
        rule,
        "WARNING: building macko_spmv WITHOUT its CUDA kernels: " + why + ".",
        f"torch has CUDA {torch_cuda}, but GPU tensors will raise \"this build has no CUDA kernels\".",
        "Install the CUDA toolkit (nvcc) or point CUDA_HOME at it, and rebuild;",
        "MACKO_BUILD_CUDA=0 builds the CPU-only extension without this warning,",
        "MACKO_BUILD_CUDA=1 makes a build without the CUDA kernels fail instead.",
        rule,
    ])


def openmp_flags(torch):
    """Compiler flags for OpenMP where torch uses it.

    at::parallel_for is defined inline in torch's headers; with torch's
    OpenMP backend it is an `omp parallel` region, which a file compiled
    without -fopenmp runs on one thread. The OpenMP runtime itself is not
    linked here: the symbols resolve to the one libtorch_cpu loads.
    """
    if not torch._C.has_openmp or sys.platform != "linux":
        log("CPU ops run on one thread: no OpenMP for this platform or torch build")
        return []
    return ["-fopenmp"]


def dev_ops_enabled():
    """Whether to build the development-only ops (see MACKO_DEV_OPS above)."""
    forced = os.environ.get("MACKO_DEV_OPS", "")
    if forced not in ("", "0", "1"):
        raise RuntimeError(f'MACKO_DEV_OPS must be "0", "1" or unset, got {forced!r}')
    if forced:
        return forced == "1"
    # setuptools runs this file with the command in sys.argv: editable_wheel
    # for `pip install -e`, build_ext --inplace (-i) or develop by hand.
    return any(arg in ("editable_wheel", "develop", "--inplace", "-i") for arg in sys.argv[1:])


def extensions(torch):
    cuda_home = find_cuda_home()
    if cuda_home:
        # torch.utils.cpp_extension reads CUDA_HOME once, when imported.
        os.environ["CUDA_HOME"] = cuda_home
    from torch.utils import cpp_extension

    forced = os.environ.get("MACKO_BUILD_CUDA")
    with_cuda, why = decide_cuda(forced, cuda_home, torch.version.cuda, torch.__version__)
    sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")) + glob.glob(os.path.join("csrc", "cpu", "*.cpp")))
    cxx_flags = ["-O3", f'-DMACKO_TORCH_VERSION="{torch.__version__}"']
    cxx_flags += openmp_flags(torch)
    dev_only = [os.path.join("csrc", "cpu", "reference_compress.cpp")]
    if dev_ops_enabled():
        log("building the development-only ops (_compress_reference): MACKO_DEV_OPS or an in-place build")
        cxx_flags.append("-DMACKO_DEV_OPS")
    else:
        sources = [source for source in sources if source not in dev_only]
    if with_cuda:
        archs, arch_reason = choose_arch_list(os.environ.get("TORCH_CUDA_ARCH_LIST"),
                                              visible_gpu_capabilities(torch))
        # torch.utils.cpp_extension takes the architectures from here.
        os.environ["TORCH_CUDA_ARCH_LIST"] = archs
        log(f"building with CUDA {torch.version.cuda} from {cuda_home} for TORCH_CUDA_ARCH_LIST={archs}")
        log(f"architectures: {arch_reason}")
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
        archs = None
        log(f"building the CPU-only extension: {why}")
        warning = cpu_only_warning(forced, why, torch.version.cuda)
        if warning:
            print(warning, file=sys.stderr, flush=True)
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
    ], cpp_extension.BuildExtension, {
        "torch": str(torch.__version__),
        "cuda": torch.version.cuda if with_cuda else None,
        "archs": archs,
        "cpu_only_because": None if with_cuda else why,
    }


# Versions. _C links against libtorch's C++ API (ATen ops, TORCH_LIBRARY,
# c10::cuda), whose ABI changes between torch minor releases, so a binary
# serves one torch X.Y (any patch release) and one CUDA major version.
# torch's stable C++ ABI (torch/csrc/stable: STABLE_TORCH_LIBRARY, the C shim)
# would lift the torch pin, but csrc/ cannot move to it as it stands: its
# checks raise ValueError/TypeError (TORCH_CHECK_VALUE/_TYPE, part of the
# documented API and tested) where the stable STD_TORCH_CHECK raises only
# RuntimeError; validate() uses ATen ops the stable ops do not offer
# (nonzero, cumsum, cat, stack, eq/all, item); and the kernels take at::Tensor,
# AT_DISPATCH and c10::cuda streams and guards throughout. Until it is ported,
# each build pins the torch it was made with.


def base_version():
    with open(os.path.join(ROOT, "macko_spmv", "__init__.py")) as f:
        return re.search(r'^__version__ = "([^"]+)"', f.read(), re.M).group(1)


def torch_major_minor(version):
    major, minor = re.match(r"(\d+)\.(\d+)", version).groups()
    return f"{major}.{minor}"


def variant_of(facts):
    """The wheel variant: cu126, cu128, cu130, ... or cpu."""
    if facts["cuda"] is None:
        return "cpu"
    major, minor = facts["cuda"].split(".")[:2]
    return f"cu{major}{minor}"


def package_version(facts):
    label = os.environ.get("MACKO_LOCAL_VERSION", "")
    if label in ("", "none"):
        return base_version()
    if label == "auto":
        return f"{base_version()}+{variant_of(facts)}"
    raise RuntimeError(f'MACKO_LOCAL_VERSION must be "auto", "none" or empty, got {label!r}')


def write_build_config(facts, version, requirement):
    """macko_spmv/_build_config.py: what this build was made with and for."""
    values = {
        "VERSION": version,
        "VARIANT": variant_of(facts),
        "TORCH_VERSION": facts["torch"],
        "TORCH_REQUIREMENT": requirement,
        "WITH_CUDA": facts["cuda"] is not None,
        "CUDA_VERSION": facts["cuda"],
        "CUDA_ARCH_LIST": facts["archs"],
        "CPU_ONLY_BECAUSE": facts["cpu_only_because"],
        "WHEEL_INDEX": os.environ.get("MACKO_WHEEL_INDEX") or None,
        "WHEEL_VARIANTS": tuple(os.environ.get("MACKO_WHEEL_VARIANTS", "").split()),
    }
    lines = ['"""What macko_spmv._C was built with. Generated by setup.py; not in git."""', ""]
    lines += [f"{name} = {value!r}" for name, value in values.items()]
    path = os.path.join(ROOT, "macko_spmv", "_build_config.py")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    log(f"macko-spmv {version} ({values['VARIANT']}), requires {requirement}; wrote {os.path.relpath(path, ROOT)}")


# The build's environment. Compiling against another torch than the one that
# will import the extension gives a binary that does not load (or a torch
# replaced behind the user's back, when a build environment installs one), so
# the build runs only beside the user's own torch, without build isolation.
MIN_SETUPTOOLS = (77, 0)  # project.license as an SPDX expression (PEP 639)
NO_ISOLATION_HELP = (
    "macko-spmv compiles its extension against the torch of your environment, so it builds only "
    "there, without build isolation:\n"
    "    pip install torch                 # first, if it is not installed: the torch build you want\n"
    "    pip install setuptools wheel ninja\n"
    "    pip install --no-build-isolation <what you were installing: the sdist, the checkout or macko-spmv>\n"
)


def isolated_build_env(paths, prefix):
    """The isolated build environment this runs in (pip's pip-build-env-*,
    pypa/build's build-env-*), as a path; None for the user's environment."""
    for path in (prefix, *paths):
        for part in str(path).split(os.sep):
            if part.startswith(("pip-build-env-", "build-env-")):
                return str(path)
    return None


def build_env_problem(torch_error, isolated_env, setuptools_version):
    """Why this environment cannot build the extension, as a message; None
    if it can. torch_error: the ImportError of `import torch`, or None."""
    if isolated_env:
        return (f"{NO_ISOLATION_HELP}This build runs in an isolated build environment ({isolated_env}), "
                "which does not see your torch.")
    if torch_error is not None:
        return (f"{NO_ISOLATION_HELP}torch cannot be imported here ({torch_error}): it is not installed, or "
                "this build runs in an isolated build environment, which hides it.")
    release = tuple(int(part) for part in re.findall(r"\d+", setuptools_version)[:2])
    if release < MIN_SETUPTOOLS:
        return (f"setuptools {setuptools_version} is too old to build macko-spmv (needs "
                f">= {'.'.join(map(str, MIN_SETUPTOOLS))}): pip install --upgrade setuptools")
    return None


def import_build_torch():
    """The environment's torch; exits with what to do if it cannot build."""
    import setuptools

    isolated = isolated_build_env(sys.path, sys.prefix)
    torch = error = None
    if not isolated:  # there, a torch would not be the user's
        try:
            import torch
        except ImportError as import_error:
            error = import_error
    problem = build_env_problem(error, isolated, setuptools.__version__)
    if problem:
        log("cannot build here:\n" + problem)
        raise SystemExit(1)
    return torch


def main():
    torch = import_build_torch()
    ext_modules, build_ext, build_facts = extensions(torch)
    version = package_version(build_facts)
    torch_requirement = f"torch=={torch_major_minor(build_facts['torch'])}.*"
    write_build_config(build_facts, version, torch_requirement)
    setup(
        version=version,
        # numpy: torch warns "Failed to initialize NumPy" without it, on
        # every run. safetensors: macko_spmv.save and load.
        install_requires=[torch_requirement, "numpy", "safetensors", "tqdm"],
        ext_modules=ext_modules,
        cmdclass={"build_ext": build_ext},
        options={"bdist_wheel": {"py_limited_api": ABI3_TAG}},
    )


# setuptools runs this file as __main__; tests import it for its functions.
if __name__ == "__main__":
    main()
