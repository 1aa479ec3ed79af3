"""The build record, the torch pin, the import-time version check and
`python -m macko_spmv info`.

setup.py writes macko_spmv/_build_config.py (torch, CUDA, architectures of
the build) and pins torch==X.Y.*; macko_spmv.ops compares the record with the
installed torch before loading _C. The mismatch cases are checked on made-up
records, so the real import is left alone.
"""

import importlib
import importlib.metadata
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import types

import pytest
import torch

import macko_spmv
from macko_spmv import _build_check, info, ops

INDEX = "https://example.org/macko/whl"


def record(**changes):
    """A build record like setup.py writes, for a cu126 wheel of torch 2.14."""
    values = dict(
        VERSION="0.1.0+cu126", VARIANT="cu126", TORCH_VERSION="2.14.1+cu126", TORCH_REQUIREMENT="torch==2.14.*",
        WITH_CUDA=True, CUDA_VERSION="12.6", CUDA_ARCH_LIST="7.5;8.0;8.6;8.9;9.0+PTX", WHEEL_INDEX=INDEX,
        WHEEL_VARIANTS=("cpu", "cu126", "cu128", "cu130"),
    )
    values.update(changes)
    return types.SimpleNamespace(**values)


def cpu_record(**changes):
    return record(**{"VERSION": "0.1.0+cpu", "VARIANT": "cpu", "TORCH_VERSION": "2.14.1+cpu", "WITH_CUDA": False,
                     "CUDA_VERSION": None, "CUDA_ARCH_LIST": None, **changes})


def real_record():
    try:
        return importlib.import_module("macko_spmv._build_config")
    except ImportError:
        pytest.skip("this build has no macko_spmv/_build_config.py (made by an older setup.py)")


# --- what can load with what ---------------------------------------------------


@pytest.mark.parametrize("torch_version, torch_cuda", [
    ("2.14.1+cu126", "12.6"),
    ("2.14.0", "12.8"),            # another patch release, a later CUDA 12 minor
    ("2.14.2+cu124", "12.4"),      # an earlier CUDA 12 minor: same runtime major
])  # fmt: skip
def test_same_torch_release_and_cuda_major_load(torch_version, torch_cuda):
    assert _build_check._build_mismatch(record(), torch_version, torch_cuda) is None


@pytest.mark.parametrize("torch_version, torch_cuda", [("2.14.1+cpu", None), ("2.14.1+cu130", "13.0")])
def test_cpu_build_loads_with_any_variant_of_its_torch(torch_version, torch_cuda):
    assert _build_check._build_mismatch(cpu_record(), torch_version, torch_cuda) is None


def test_other_torch_release_names_the_torch_needed_and_the_source_build():
    message = _build_check._build_mismatch(record(), "2.15.0+cu126", "12.6")
    assert "macko-spmv 0.1.0+cu126" in message and "torch 2.14.1+cu126" in message
    assert "installed torch 2.15.0+cu126" in message
    assert 'pip install "torch==2.14.*" --index-url https://download.pytorch.org/whl/cu126' in message
    assert "pip install --no-build-isolation" in message
    # Older torch too, and a CPU build the same way.
    assert "torch==2.14.*" in _build_check._build_mismatch(record(), "2.13.0", "12.6")
    assert "whl/cpu" in _build_check._build_mismatch(cpu_record(), "2.15.0+cpu", None)


def test_other_cuda_major_points_to_the_matching_wheel():
    message = _build_check._build_mismatch(record(), "2.14.1+cu130", "13.0")
    assert "CUDA 12 runtime" in message and "(CUDA 13.0)" in message
    assert f'pip install --no-deps --force-reinstall "macko-spmv==0.1.0" --index-url {INDEX}/cu130' in message
    assert "--no-build-isolation" in message
    assert message.endswith('or install the torch it was built for: pip install "torch==2.14.*" '
                            "--index-url https://download.pytorch.org/whl/cu126")
    message = _build_check._build_mismatch(record(VERSION="0.1.0", VARIANT="cu130", CUDA_VERSION="13.0"), "2.14.1", "12.8")
    assert f"--index-url {INDEX}/cu128" in message


def test_cuda_build_with_cpu_torch_points_to_the_cpu_wheel():
    message = _build_check._build_mismatch(record(), "2.14.1+cpu", None)
    assert "a CPU-only build" in message and "CUDA 12.x" in message
    assert f"--index-url {INDEX}/cpu" in message


def test_without_a_wheel_index_only_the_source_build_is_offered():
    message = _build_check._build_mismatch(record(WHEEL_INDEX=None, WHEEL_VARIANTS=()), "2.14.1+cu130", "13.0")
    assert f"--index-url {INDEX}" not in message
    assert message.splitlines()[1].startswith("Build macko-spmv from source against your torch: pip install")


@pytest.mark.parametrize("torch_cuda, wheel", [
    ("12.6", "cu126"), ("12.8", "cu128"), ("12.9", "cu128"),  # the newest not newer than torch's
    ("12.4", "cu126"),  # only newer ones: the oldest of those
    ("13.2", "cu130"), ("11.8", None), (None, "cpu"),
])  # fmt: skip
def test_wheel_for_a_torch_cuda(torch_cuda, wheel):
    assert _build_check._wheel_for(record(), torch_cuda) == wheel
    assert _build_check._wheel_for(record(WHEEL_VARIANTS=()), torch_cuda) is None


# --- the check at import ---------------------------------------------------------


def test_check_reads_the_record_and_the_installed_torch(monkeypatch):
    monkeypatch.setitem(sys.modules, "macko_spmv._build_config", record())
    monkeypatch.setattr(torch, "__version__", "2.14.1+cu126")
    monkeypatch.setattr(torch.version, "cuda", "12.6")
    _build_check.check_build()  # matches: no error
    monkeypatch.setattr(torch, "__version__", "2.15.1+cu126")
    with pytest.raises(ImportError, match=r"torch==2\.14\.\*"):
        _build_check.check_build()
    monkeypatch.setattr(torch, "__version__", "2.14.1+cu130")
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    with pytest.raises(ImportError, match=r"CUDA 12 runtime"):
        _build_check.check_build()


def test_the_real_record_matches_the_running_torch():
    real_record()
    _build_check.check_build()


def test_import_fails_before_loading_the_extension():
    """A fresh interpreter whose record says torch 1.0 (planted in sys.modules,
    the installed files untouched): `import macko_spmv` raises the message
    and never loads _C."""
    script = (
        "import sys, types\n"
        "fake = types.ModuleType('macko_spmv._build_config')\n"
        "fake.__dict__.update(VERSION='0.1.0', VARIANT='cpu', TORCH_VERSION='1.0.0',\n"
        "                     TORCH_REQUIREMENT='torch==1.0.*', WITH_CUDA=False, CUDA_VERSION=None,\n"
        "                     CUDA_ARCH_LIST=None, WHEEL_INDEX=None)\n"
        "sys.modules['macko_spmv._build_config'] = fake\n"
        "try:\n"
        "    import macko_spmv\n"
        "except ImportError as error:\n"
        "    print(error)\n"
        "    print('_C loaded:', 'macko_spmv._C' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "torch==1.0.*" in out.stdout and f"installed torch {torch.__version__}" in out.stdout
    assert "_C loaded: False" in out.stdout


# --- the build record and the installed metadata ---------------------------------


def test_record_matches_the_compiled_extension():
    config, compiled = real_record(), ops.build_info()
    assert config.TORCH_VERSION == compiled["torch"]
    assert config.CUDA_VERSION == compiled["cuda"]
    assert config.WITH_CUDA == (config.CUDA_VERSION is not None)
    assert config.CUDA_ARCH_LIST == compiled.get("arch")
    assert config.VERSION.split("+")[0] == macko_spmv.__version__
    assert config.TORCH_REQUIREMENT == "torch==%d.%d.*" % _build_check._release(config.TORCH_VERSION)
    if "+" in config.VERSION:
        assert config.VERSION.endswith("+" + config.VARIANT)


def static_initializer_vector_code(library):
    """The first instruction with a ymm or zmm register (AVX, AVX2,
    AVX-512) in each function that ``library``'s load-time initializers
    (GCC's _GLOBAL__sub_I_*) run, following direct calls inside the library,
    as (function, instruction) pairs; objdump reads the code."""
    listing = subprocess.run(["objdump", "-d", "--no-show-raw-insn", library], capture_output=True, text=True,
                             check=True).stdout  # fmt: skip
    functions, current = {}, None
    for line in listing.splitlines():
        header = re.match(r"^[0-9a-f]+ <(.+)>:$", line)
        if header:
            current = functions.setdefault(header.group(1), [])
        elif current is not None and line.startswith(" "):
            current.append(line.strip())
    pending = [name for name in functions if name.startswith("_GLOBAL__sub_I_")]
    assert pending, "no load-time initializer found: the listing is not what this check expects"
    seen, found = set(), []
    while pending:
        name = pending.pop()
        if name in seen or name not in functions:
            continue
        seen.add(name)
        for instruction in functions[name]:
            if re.search(r"%[yz]mm\d", instruction):
                found.append((name, instruction))
                break
            call = re.search(r"\b(?:call|jmp)\w*\s+[0-9a-f]+ <([^>+]+)>", instruction)
            if call and not call.group(1).endswith("@plt"):
                pending.append(call.group(1))
    return found


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64") or shutil.which("objdump") is None,
                    reason="reads x86-64 code with objdump")
def test_loading_the_extension_needs_no_vector_extensions():
    """The CPU kernels for AVX2 and AVX-512 are chosen at run time; anything
    that runs when the library loads (before that choice) must be baseline
    x86-64, or the import dies with SIGILL on older CPUs."""
    found = static_initializer_vector_code(importlib.import_module("macko_spmv._C").__file__)
    assert not found, f"load-time code uses AVX/AVX-512 instructions: {found}"


def fake_gpus(monkeypatch, capabilities):
    """torch.cuda as with GPUs of these compute capabilities, named gpu0, gpu1, ..."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: len(capabilities))
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index: capabilities[index])
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index: f"gpu{index}")


# The build info as csrc/ops.cpp writes it, for a CUDA build with the default
# architecture list of the prebuilt wheels: values hold ";" and "+".
MULTI_ARCH_BUILD_INFO = (
    '{"torch": "2.14.1+cu130", "cuda": "13.0", "arch": "7.5;8.0;8.6;8.9;9.0;10.0;12.0+PTX", "openmp": true}'
)


def test_build_info_is_a_json_object_of_known_fields():
    raw = torch.ops.macko_spmv.build_info()
    assert json.loads(raw) == ops.build_info()
    compiled = ops.build_info()
    assert set(compiled) == {"torch", "cuda", "arch", "openmp"}
    assert compiled["torch"] == torch.__version__ and isinstance(compiled["openmp"], bool)
    assert (compiled["cuda"] is None) == (compiled["arch"] is None)


def test_multi_architecture_build_info_is_read_whole(capsys, monkeypatch):
    """Every CUDA wheel lists several architectures; `info` (and the
    benchmarks' metadata, through ops.build_info) must read them whole."""
    assert ops.parse_build_info(MULTI_ARCH_BUILD_INFO) == {
        "torch": "2.14.1+cu130", "cuda": "13.0", "arch": "7.5;8.0;8.6;8.9;9.0;10.0;12.0+PTX", "openmp": True}
    monkeypatch.setattr(ops, "_ops", types.SimpleNamespace(build_info=lambda: MULTI_ARCH_BUILD_INFO))
    monkeypatch.setattr(info, "build_config", lambda: record(
        VERSION="0.1.0", VARIANT="cu130", TORCH_VERSION="2.14.1+cu130", CUDA_VERSION="13.0",
        CUDA_ARCH_LIST="7.5;8.0;8.6;8.9;9.0;10.0;12.0+PTX"))
    gpus = [(7, 5), (8, 9), (9, 0), (10, 3), (12, 1), (13, 0), (7, 0)]
    fake_gpus(monkeypatch, gpus)
    assert info.main([]) == 0
    out = capsys.readouterr().out
    assert "built with torch 2.14.1+cu130, CUDA 13.0" in out and "warning" not in out
    assert "GPU architectures: 7.5;8.0;8.6;8.9;9.0;10.0;12.0+PTX" in out
    for index in range(6):
        assert f"GPU {index}: gpu{index} (compute capability {'%d.%d' % gpus[index]}): covered" in out
    assert "GPU 6: gpu6 (compute capability 7.0): NOT covered" in out


def test_installed_metadata_pins_the_torch_release():
    try:
        requires = importlib.metadata.requires("macko-spmv") or []
        version = importlib.metadata.version("macko-spmv")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("macko-spmv is not installed (run from the source tree)")
    major, minor = _build_check._release(torch.__version__)
    assert f"torch=={major}.{minor}.*" in requires, requires
    assert version.split("+")[0] == macko_spmv.__version__


# --- python -m macko_spmv info -----------------------------------------------------


def test_info_prints_versions_and_build(capsys):
    assert info.main([]) == 0
    out = capsys.readouterr().out.splitlines()
    config, compiled = info.build_config(), ops.build_info()
    version = config.VERSION if config else macko_spmv.__version__
    assert out[0].startswith(f"macko-spmv {version}")
    if config:
        assert f"variant {config.VARIANT}, requires {config.TORCH_REQUIREMENT}" in out[0]
    assert f"built with torch {compiled['torch']}, CUDA {compiled['cuda'] or 'none'}" in out
    assert f"running with torch {torch.__version__}, CUDA {torch.version.cuda}" in out
    assert not any(line.startswith("warning") for line in out)


def test_info_reports_gpu_coverage(capsys, monkeypatch):
    monkeypatch.setattr(info, "build_config", lambda: record(VERSION="0.1.0+cu128", VARIANT="cu128",
                                                            TORCH_VERSION="2.14.1+cu128", CUDA_VERSION="12.8",
                                                            CUDA_ARCH_LIST="8.0;9.0+PTX"))
    monkeypatch.setattr(ops, "build_info",
                        lambda: {"torch": "2.14.1+cu128", "cuda": "12.8", "arch": "8.0;9.0+PTX", "openmp": True})
    gpus = [(8, 6), (9, 0), (7, 5), (12, 0)]
    fake_gpus(monkeypatch, gpus)
    assert info.main([]) == 0
    out = capsys.readouterr().out
    assert "macko-spmv 0.1.0+cu128 (variant cu128, requires torch==2.14.*)" in out
    assert f"wheel index of this variant: {INDEX}/cu128" in out
    assert "GPU architectures: 8.0;9.0+PTX" in out
    assert "GPU 0: gpu0 (compute capability 8.6): covered" in out  # sm_80 code
    assert "GPU 1: gpu1 (compute capability 9.0): covered" in out
    assert "GPU 2: gpu2 (compute capability 7.5): NOT covered" in out
    assert "GPU 3: gpu3 (compute capability 12.0): covered" in out  # compute_90 PTX


def test_info_flags_a_stale_record(capsys, monkeypatch):
    monkeypatch.setattr(info, "build_config", lambda: record())
    monkeypatch.setattr(ops, "build_info", lambda: {"torch": "2.14.1+cpu", "cuda": None, "arch": None, "openmp": True})
    info.main([])
    out = capsys.readouterr().out
    assert "warning:" in out and "stale" in out
    assert "GPU kernels: not built (CPU-only extension)" in out


@pytest.mark.parametrize("command", ["demo", "bench", "e2e", "info"])
def test_every_command_prints_its_help(command, capsys):
    from macko_spmv.__main__ import main

    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: python -m macko_spmv {command}") and "built with torch" not in out


def test_python_dash_m_info_runs():
    out = subprocess.run([sys.executable, "-m", "macko_spmv", "info"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("macko-spmv ") and "built with torch" in out.stdout


# --- the prebuilt wheels: every architecture, set explicitly --------------------

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_wheel_workflow_sets_the_architectures_of_every_cuda_variant():
    """A build without TORCH_CUDA_ARCH_LIST compiles for the local GPU or one
    default architecture (setup.py); the wheels must name all of theirs."""
    yaml = pytest.importorskip("yaml")
    path = os.path.join(REPO, ".github", "workflows", "wheels.yml")
    if not os.path.isfile(path):
        pytest.skip("no .github/workflows/wheels.yml beside the tests (an installed copy)")
    with open(path) as f:
        workflow = yaml.safe_load(f)
    job = workflow["jobs"]["wheel"]
    variants = job["strategy"]["matrix"]["include"]
    cuda_variants = [v for v in variants if v["build_cuda"] == "1"]
    assert {v["variant"] for v in cuda_variants} == set(workflow["env"]["WHEEL_VARIANTS"].split()) - {"cpu"}
    for variant in cuda_variants:
        archs = variant["arch_list"].split(";")
        assert archs[0] == "7.5" and archs[-1].endswith("+PTX") and len(archs) >= 5, variant
    build = next(step for step in job["steps"] if step.get("run", "").startswith("python -m cibuildwheel"))
    assert build["env"]["TORCH_CUDA_ARCH_LIST"] == "${{ matrix.arch_list }}"
    tomllib = pytest.importorskip("tomllib")
    with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
        cibuildwheel = tomllib.load(f)["tool"]["cibuildwheel"]
    assert "TORCH_CUDA_ARCH_LIST" in cibuildwheel["environment-pass"]
