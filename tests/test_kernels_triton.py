"""srcore's Triton kernels under Triton's interpreter on CPU, against the torch references.

The kernels run in one child process started with TRITON_INTERPRET=1 (see
``triton_interpreter_cases.py``: Triton fixes interpreted or compiled when it is first imported,
which in this process may already have happened); each test checks one case's errors.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_selective_scan import HALF_TOLERANCE
from triton_interpreter_cases import INVOLUTION_CASES, NSS_CASES, SCAN_CASES

from srcore.ops import selective_scan

pytest.importorskip("triton", reason="the Triton kernel tests need triton (pip install triton)")

REL_TOL = 1e-4
HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def interpreted_errors() -> dict[str, dict[str, float]]:
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run([sys.executable, str(HERE / "triton_interpreter_cases.py")], env=env,
                          cwd=HERE.parent, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("case", [*(f"scan/{n}" for n in SCAN_CASES), "scan/dispatch",
                                  *(f"nss/{n}" for n in NSS_CASES), "nss/mair_vmm",
                                  *(f"involution/{n}" for n in INVOLUTION_CASES)])
def test_kernel_matches_reference(interpreted_errors, case):
    errors = interpreted_errors[case]
    assert errors and max(errors.values()) <= REL_TOL, errors


def test_scan_triton_backend_refuses_cpu_tensors_without_the_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    u = torch.randn(1, 2, 4)
    with pytest.raises(ValueError, match="TRITON_INTERPRET"):
        selective_scan(u, u, -torch.ones(2, 3), torch.randn(1, 3, 4), torch.randn(1, 3, 4), backend="triton")


@pytest.mark.parametrize("name", ["bf16", "fp16"])
def test_half_inputs_accumulate_in_fp32_and_keep_their_dtype(interpreted_errors, name):
    errors = interpreted_errors[f"dtype/{name}"]
    assert errors["dtype_kept"] == 1.0 and errors["y"] <= HALF_TOLERANCE[name], errors
