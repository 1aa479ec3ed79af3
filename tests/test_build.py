"""setup.py's decisions: where it builds, what it builds, for which GPUs.

setup.py is imported as a module (its setup() call runs only as __main__),
so each decision is checked on made-up inputs without building anything.
"""

import importlib.util
import os
import re
import sys

import pytest

SETUP_PY = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "setup.py")


@pytest.fixture(scope="module")
def setup_py():
    if not os.path.isfile(SETUP_PY):
        pytest.skip("no setup.py beside the tests (an installed copy)")
    spec = importlib.util.spec_from_file_location("macko_setup", SETUP_PY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- the environment: the user's torch, never an isolated one -------------------


def test_build_runs_beside_the_users_torch(setup_py):
    assert setup_py.build_env_problem(None, None, "80.9.0") is None


def test_missing_torch_says_to_install_it_and_build_without_isolation(setup_py):
    message = setup_py.build_env_problem(ImportError("No module named 'torch'"), None, "80.9.0")
    assert "torch cannot be imported here (No module named 'torch')" in message
    assert "pip install torch" in message and "pip install --no-build-isolation" in message


def test_isolated_build_is_refused_even_with_a_torch(setup_py):
    isolated = "/tmp/pip-build-env-abc123/overlay/lib/python3.11/site-packages"
    message = setup_py.build_env_problem(None, isolated, "80.9.0")
    assert "isolated build environment" in message and isolated in message
    assert "pip install --no-build-isolation" in message


@pytest.mark.parametrize("paths, prefix, found", [
    (["/usr/lib/python311.zip", "/work/.venv/lib/python3.11/site-packages"], "/work/.venv", None),
    (["/tmp/pip-build-env-x1y2/site", "/tmp/pip-build-env-x1y2/overlay/lib/python3.11/site-packages"],
     "/work/.venv", "/tmp/pip-build-env-x1y2/site"),  # pip
    (["/tmp/build-env-k9/lib/python3.11/site-packages"], "/tmp/build-env-k9", "/tmp/build-env-k9"),  # pypa/build
])  # fmt: skip
def test_isolated_build_env_is_recognised(setup_py, paths, prefix, found):
    assert setup_py.isolated_build_env(paths, prefix) == found


def test_old_setuptools_is_named(setup_py):
    message = setup_py.build_env_problem(None, None, "68.2.0")
    assert "setuptools 68.2.0 is too old" in message and "pip install --upgrade setuptools" in message
    assert setup_py.build_env_problem(None, None, "77.0.3") is None


def test_build_requirements_leave_torch_out():
    """An isolated build installs these; torch among them would be built
    against and then replace the user's."""
    tomllib = pytest.importorskip("tomllib")
    with open(os.path.join(os.path.dirname(SETUP_PY), "pyproject.toml"), "rb") as f:
        requires = tomllib.load(f)["build-system"]["requires"]
    names = [re.match(r"[A-Za-z0-9_.-]+", requirement)[0].lower() for requirement in requires]
    assert "setuptools" in names and "torch" not in names, requires


def test_setup_py_in_an_isolated_env_stops_before_building(tmp_path):
    """setup.py run as pip's isolated build runs it (pip's sys.path
    mimicked): the message and exit code 1, before anything is built."""
    if not os.path.isfile(SETUP_PY):
        pytest.skip("no setup.py beside the tests (an installed copy)")
    import subprocess

    fake_env = tmp_path / "pip-build-env-test" / "site"
    fake_env.mkdir(parents=True)
    script = (
        "import runpy, sys\n"
        f"sys.path.insert(0, {str(fake_env)!r})\n"
        "sys.argv = ['setup.py', 'egg_info']\n"
        f"runpy.run_path({SETUP_PY!r}, run_name='__main__')\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                         cwd=os.path.dirname(SETUP_PY))
    assert out.returncode == 1, out.stderr
    assert "isolated build environment" in out.stderr and "--no-build-isolation" in out.stderr
    assert "building with CUDA" not in out.stderr and "CPU-only extension" not in out.stderr


# --- CUDA or not, and for which architectures -------------------------------------


def test_cuda_is_built_with_a_toolkit_and_a_cuda_torch(setup_py):
    assert setup_py.decide_cuda(None, "/usr/local/cuda", "13.0", "2.14.1") == (True, "")
    assert setup_py.decide_cuda("0", "/usr/local/cuda", "13.0", "2.14.1") == (False, "MACKO_BUILD_CUDA=0")
    with_cuda, why = setup_py.decide_cuda(None, None, "13.0", "2.14.1")
    assert not with_cuda and "no CUDA toolkit found" in why
    with_cuda, why = setup_py.decide_cuda(None, "/usr/local/cuda", None, "2.14.1+cpu")
    assert not with_cuda and "torch 2.14.1+cpu is a CPU-only build" in why
    with pytest.raises(RuntimeError, match="MACKO_BUILD_CUDA=1 but no CUDA toolkit found"):
        setup_py.decide_cuda("1", None, "13.0", "2.14.1")


def test_unexpected_cpu_only_build_warns_loudly(setup_py):
    """A CUDA torch without the toolkit: a banner that says what the build
    lacks, what GPU calls will do and how to fix or silence it."""
    _, why = setup_py.decide_cuda(None, None, "13.0", "2.14.1")
    banner = setup_py.cpu_only_warning(None, why, "13.0")
    assert banner.startswith("*" * 78) and "WITHOUT its CUDA kernels: no CUDA toolkit found" in banner
    assert "this build has no CUDA kernels" in banner and "CUDA_HOME" in banner and "MACKO_BUILD_CUDA=0" in banner
    # Asked for, or all that a CPU-only torch can use: no banner.
    assert setup_py.cpu_only_warning("0", "MACKO_BUILD_CUDA=0", "13.0") is None
    assert setup_py.cpu_only_warning(None, "torch 2.14.1+cpu is a CPU-only build", None) is None


def test_architectures_of_the_visible_gpus_only(setup_py):
    assert setup_py.choose_arch_list(None, [(9, 0)]) == ("9.0", "the visible GPU's only")
    archs, why = setup_py.choose_arch_list("", [(8, 6), (12, 0), (8, 6), (10, 0)])
    assert archs == "8.6;10.0;12.0" and why == "the visible GPUs' only"


def test_an_explicit_list_wins(setup_py):
    wheel_list = "7.5;8.0;8.6;8.9;9.0;10.0;12.0+PTX"
    assert setup_py.choose_arch_list(wheel_list, [(9, 0)]) == (wheel_list, "TORCH_CUDA_ARCH_LIST as set")


def test_no_gpu_and_no_list_builds_one_architecture(setup_py):
    archs, why = setup_py.choose_arch_list(None, ())
    assert archs == setup_py.NO_GPU_ARCH_LIST == "8.0+PTX"
    assert "no GPU visible" in why and "TORCH_CUDA_ARCH_LIST" in why
