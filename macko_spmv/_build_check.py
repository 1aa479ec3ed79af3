"""Before the compiled extension loads: is it built for the installed torch?

A wheel's extension links one torch release and one CUDA major version;
loading it under another fails with a linker error or worse. setup.py
records what it built against in macko_spmv/_build_config.py, and
check_build() turns a mismatch into an ImportError that says what to install.
"""

import importlib
import re

import torch

# How to build against the installed torch (needs setuptools, wheel, ninja and,
# for the GPU kernels, the CUDA toolkit).
SOURCE_BUILD = (
    "pip install --no-build-isolation --no-deps --force-reinstall --no-binary macko-spmv macko-spmv, "
    "or `pip install --no-build-isolation .` in a checkout"
)


def _release(version):
    """(major, minor) of a version such as "2.14.1+cu126" or "12.8"; None if none."""
    match = re.match(r"(\d+)\.(\d+)", str(version or ""))
    return (int(match[1]), int(match[2])) if match else None


def _variant_release(variant):
    """cu126 -> (12, 6): the CUDA release of a wheel variant (None for cpu)."""
    match = re.fullmatch(r"cu(\d+)(\d)", variant)
    return (int(match[1]), int(match[2])) if match else None


def _wheel_for(config, torch_cuda):
    """The published variant that loads with a torch for CUDA `torch_cuda`
    (None: a CPU-only torch), or None if none is published."""
    variants = tuple(getattr(config, "WHEEL_VARIANTS", None) or ())
    if torch_cuda is None:
        return "cpu" if "cpu" in variants else None
    major, minor = _release(torch_cuda)
    same_major = [v for v in variants if (_variant_release(v) or (None,))[0] == major]
    # The newest build whose CUDA minor release is not newer than torch's, else
    # the oldest build of that major.
    not_newer = [v for v in same_major if _variant_release(v)[1] <= minor]
    if not_newer:
        return max(not_newer, key=_variant_release)
    return min(same_major, key=_variant_release, default=None)


def _build_mismatch(config, torch_version, torch_cuda):
    """Why the extension that `config` (macko_spmv._build_config) describes
    cannot load with this torch, as a message; None if it can."""
    built_cuda = config.CUDA_VERSION
    built = f"macko-spmv {config.VERSION} (variant {config.VARIANT}: torch {config.TORCH_VERSION}, "
    built += f"CUDA {built_cuda})" if built_cuda else "CPU only)"
    installed = f"torch {torch_version} " + (f"(CUDA {torch_cuda})" if torch_cuda else "(a CPU-only build)")
    if _release(config.TORCH_VERSION) != _release(torch_version):
        return (
            f"{built} cannot load with the installed {installed}: its compiled extension works only "
            f"with the torch release it was built against, {config.TORCH_REQUIREMENT}.\n"
            f"Install that torch: pip install \"{config.TORCH_REQUIREMENT}\" "
            f"--index-url https://download.pytorch.org/whl/{config.VARIANT}\n"
            f"or build macko-spmv from source against your torch: {SOURCE_BUILD}"
        )
    if built_cuda is None:
        return None  # CPU-only: loads with every variant of its torch release
    cuda_major = _release(built_cuda)[0]
    if torch_cuda and _release(torch_cuda)[0] == cuda_major:
        return None
    wheel, index = _wheel_for(config, torch_cuda), getattr(config, "WHEEL_INDEX", None)
    fix = f"Build macko-spmv from source against your torch: {SOURCE_BUILD}"
    if wheel and index:
        release = str(config.VERSION).split("+")[0]
        fix = (f"Install the macko-spmv build for your torch ({wheel}): pip install --no-deps "
               f"--force-reinstall \"macko-spmv=={release}\" --index-url {index}/{wheel}\n"
               f"or build it from source against your torch: {SOURCE_BUILD}")
    return (
        f"{built} cannot load with the installed {installed}: its GPU kernels link the CUDA "
        f"{cuda_major} runtime and need a build of torch for CUDA {cuda_major}.x.\n{fix}\n"
        f"or install the torch it was built for: pip install \"{config.TORCH_REQUIREMENT}\" "
        f"--index-url https://download.pytorch.org/whl/{config.VARIANT}"
    )


def check_build():
    """Raises ImportError, before _C is loaded, when the installed torch is not
    the one this build was made for (loading it would fail with a linker error
    or crash). Builds made by an older setup.py record nothing: no check."""
    try:
        config = importlib.import_module(f"{__package__}._build_config")
    except ImportError:
        return
    problem = _build_mismatch(config, torch.__version__, torch.version.cuda)
    if problem:
        raise ImportError(problem)
