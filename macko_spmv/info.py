"""`python -m macko_spmv info`: what this build of macko-spmv was made for."""

import argparse
import re

import torch

from . import __version__, ops


def compiled_archs(arch_list):
    """{"9.0", ...} and whether PTX is embedded, from TORCH_CUDA_ARCH_LIST syntax."""
    archs, ptx = set(), False
    for item in arch_list.replace(" ", ";").split(";"):
        if item:
            ptx |= item.endswith("+PTX")
            archs.add(item.replace("+PTX", ""))
    return archs, ptx


def build_config():
    """macko_spmv/_build_config.py (written by setup.py), or None."""
    try:
        from . import _build_config
    except ImportError:
        return None
    return _build_config


def main(argv=None):
    argparse.ArgumentParser(
        prog="python -m macko_spmv info",
        description="Prints the version and variant of this macko-spmv build, the torch, CUDA version and GPU "
                    "architectures it was built for, the torch it runs with, and whether each visible GPU is "
                    "covered.",
    ).parse_args(argv)
    info = ops.build_info()
    config = build_config()
    if config is None:
        print(f"macko-spmv {__version__}")
    else:
        print(f"macko-spmv {config.VERSION} (variant {config.VARIANT}, requires {config.TORCH_REQUIREMENT})")
        if getattr(config, "WHEEL_INDEX", None):
            print(f"wheel index of this variant: {config.WHEEL_INDEX}/{config.VARIANT}")
    print(f"built with torch {info['torch']}, CUDA {info['cuda'] or 'none'}")
    if config is not None and (config.TORCH_VERSION, config.CUDA_VERSION) != (info["torch"], info["cuda"]):
        print(f"warning: macko_spmv/_build_config.py records torch {config.TORCH_VERSION}, CUDA "
              f"{config.CUDA_VERSION}: stale, from another build; rebuild")
    print(f"running with torch {torch.__version__}, CUDA {torch.version.cuda}")
    if info["cuda"] is None:
        because = getattr(config, "CPU_ONLY_BECAUSE", None)
        print("GPU kernels: not built (CPU-only extension" + (f": {because})" if because else ")"))
        return 0
    archs, ptx = compiled_archs(info["arch"])
    print(f"GPU architectures: {info['arch']}")
    if not torch.cuda.is_available():
        print("GPU: none visible")
        return 0
    for index in range(torch.cuda.device_count()):
        major, minor = torch.cuda.get_device_capability(index)
        cc = f"{major}.{minor}"
        built = [tuple(int(p) for p in re.match(r"(\d+)\.(\d+)", a).groups()) for a in archs]
        # Machine code runs on its major version's later minors; PTX is
        # compiled by the driver for any newer GPU.
        covered = any(b[0] == major and b[1] <= minor for b in built) or (ptx and (major, minor) >= max(built))
        status = "covered" if covered else "NOT covered: rebuild with TORCH_CUDA_ARCH_LIST including " + cc
        print(f"GPU {index}: {torch.cuda.get_device_name(index)} (compute capability {cc}): {status}")
    return 0
