"""``make gpu-check`` on a machine without a GPU: one line and exit 2, in seconds; and every module and
name its GPU path imports exists here, so the day a GPU is lent no step dies on an import."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "bench" / "gpu_check.py"


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: the check would run")
def test_refuses_without_a_gpu_in_one_line():
    res = subprocess.run([sys.executable, str(SCRIPT)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2, res.stdout + res.stderr
    lines = [line for line in (res.stdout + res.stderr).splitlines() if line.strip()]
    assert len(lines) == 1 and "no CUDA device" in lines[0] and "Traceback" not in lines[0], lines


def test_every_import_of_the_gpu_path_resolves():
    sys.path.insert(0, str(REPO / "tests"))
    sys.path.insert(0, str(REPO / "bench"))
    missing = []
    for node in ast.walk(ast.parse(SCRIPT.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module in ("mamba_ssm",):
                continue
            module = importlib.import_module(node.module)
            missing += [f"{node.module}.{a.name}" for a in node.names if not hasattr(module, a.name)
                        and importlib.util.find_spec(f"{node.module}.{a.name}") is None]
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name not in ("mamba_ssm", "triton") and importlib.util.find_spec(a.name) is None:
                    missing.append(a.name)
    assert not missing, missing
    gpu_check = importlib.import_module("gpu_check")
    assert gpu_check.no_gpu_reason() is None or "no CUDA device" in gpu_check.no_gpu_reason()
