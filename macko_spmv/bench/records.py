"""What identifies a benchmark run: the machine, the versions, the date, the
command, and the folder its files go to (meta.json beside the CSV); and
the command-line helpers the benchmarks share."""

import argparse
import datetime
import json
import os
import platform
import re
import shlex
import subprocess

import torch


def cpu_name():
    """"CPU <model name>" from /proc/cpuinfo, else what platform knows."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return "CPU " + line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "CPU " + (platform.processor() or platform.machine())


def device_name(device):
    """The GPU's name for a CUDA device, cpu_name() for the CPU."""
    device = torch.device(device)
    return torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()


def nvidia_driver_version():
    """The driver version from nvidia-smi, or None where it cannot be asked."""
    try:
        answer = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=30, check=True,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return answer.stdout.strip().splitlines()[0] if answer.stdout.strip() else None


def utc_now():
    return datetime.datetime.now(datetime.timezone.utc)


def environment(device):
    """The facts every CSV row carries: gpu (the device's name), torch, cuda
    and date (UTC)."""
    return {
        "gpu": device_name(device),
        "torch": torch.__version__,
        "cuda": torch.version.cuda or "none",
        "date": utc_now().date().isoformat(),
    }


def run_facts(device):
    """meta.json's facts about the machine and the software (besides what
    environment() gives): device, driver, macko-spmv version and build, the
    CPU compress kernels in use, the MACKO_* environment variables (the
    library's switches, e.g. MACKO_PDL), python, and when the run started."""
    import macko_spmv

    device = torch.device(device)
    return {
        "device": str(device),
        "driver": nvidia_driver_version() if device.type == "cuda" else None,
        "macko_spmv": macko_spmv.__version__,
        "macko_spmv_build": macko_spmv.ops.build_info(),
        "cpu_kernels": torch.ops.macko_spmv._cpu_kernels(),
        "macko_environment": {k: v for k, v in sorted(os.environ.items()) if k.startswith("MACKO_")},
        "python": platform.python_version(),
        "started_utc": utc_now().isoformat(timespec="seconds"),
    }


def slug(text):
    """text as a file-name part: lower case, runs of other characters as '-'."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def default_out_dir(prefix, env):
    """benchmarks/results/<prefix><device slug>-<date>."""
    return os.path.join("benchmarks", "results", f"{prefix}{slug(env['gpu'])}-{env['date']}")


def equivalent_command(tool, argv):
    """The command line that reruns a tool with the same arguments."""
    return shlex.join(["python", "-m", "macko_spmv", tool, *argv])


def write_json(path, content):
    with open(path, "w") as file:
        json.dump(content, file, indent=2, default=str)
        file.write("\n")


def read_meta(results_dir):
    """DIR/meta.json as a dict, {} where there is none."""
    path = os.path.join(results_dir, "meta.json")
    if not os.path.exists(path):
        return {}
    with open(path) as file:
        return json.load(file)


# --------------------------------------------------------------------------
# Command line


def comma_list(convert, valid, what):
    """An argparse type: comma-separated items, each ``convert``-ed and
    ``valid``; ``what`` says what is expected, in the error."""

    def parse(text):
        try:
            items = [convert(item.strip()) for item in text.split(",") if item.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"{what}; got {text!r}") from None
        if not items or not all(valid(item) for item in items):
            raise argparse.ArgumentTypeError(f"{what}; got {text!r}")
        return items

    return parse


def positive_int(text):
    """An argparse type: a whole number >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return value


def select_device(name, hint):
    """The torch.device of --device (CUDA: made current, the index filled in),
    or SystemExit saying what to do (``hint``) where it is not available."""
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit(f"no CUDA device is available; {hint}")
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        torch.cuda.set_device(device)
    elif device.type != "cpu":
        raise SystemExit(f"--device must be cuda or cpu, got {name!r}")
    return device
