"""The TOSA tools hwact runs as processes: the tosa-tools serializer, the TOSA reference model and Vela.

They live in their own environment (docs/ethos-u.md says why: tosa-tools pins numpy < 2.2, the main
environment has numpy 2.4): `make tosa-env` creates it at <repo>/.venv-tosa. hwact finds it at
$HWACT_TOSA_ENV, else <repo>/.venv-tosa, else .venv-tosa next to the running environment (sys.prefix).

    serialize(description, constants, out.tosa)      -> tensor names of inputs and outputs
    reference_run(model.tosa, names, inputs, folder) -> output arrays          (tosa_reference_model)
    vela(model.tosa, folder, accelerator, system, memory) -> summary row        (vela, explicit configs)
"""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np

from hwact.errors import ToolMissingError, VerificationError

ENV_VARIABLE = "HWACT_TOSA_ENV"
SERIALIZER = Path(__file__).parent / "tosa_tool" / "serialize.py"
TIMEOUT_S = 600
VELA_CONFIG = "Arm/vela.ini"           # Vela's built-in system configs and memory modes (named by the target)


def tosa_env() -> Path:
    """The TOSA environment's folder; ToolMissingError naming `make tosa-env` when there is none."""
    given = os.environ.get(ENV_VARIABLE)
    candidates = [Path(given)] if given else [Path(__file__).resolve().parents[2] / ".venv-tosa",
                                              Path(sys.prefix).parent / ".venv-tosa"]
    for folder in candidates:
        if (folder / "bin" / "python").exists() and (folder / "bin" / "vela").exists():
            return folder
    where = f"${ENV_VARIABLE}={given}" if given else " or ".join(str(c) for c in candidates)
    raise ToolMissingError(f"the TOSA tools (tosa-tools, ethos-u-vela) are not installed at {where}",
                           hint="run `make tosa-env` in the hwact checkout (or set HWACT_TOSA_ENV)")


def _run(command: list, what: str, cwd: Path | None = None) -> str:
    try:
        done = subprocess.run([str(c) for c in command], capture_output=True, text=True, timeout=TIMEOUT_S, cwd=cwd)
    except subprocess.TimeoutExpired:
        raise VerificationError(f"{what} ran past {TIMEOUT_S} s") from None
    if done.returncode != 0:
        detail = (done.stderr.strip() or done.stdout.strip()).splitlines()
        raise VerificationError(f"{what} failed (exit {done.returncode}): {' | '.join(detail[-3:])[:400]}")
    return done.stdout


def serialize(description: Path, constants: Path, out: Path) -> dict:
    env = tosa_env()
    names = out.with_suffix(".names.json")
    _run([env / "bin" / "python", SERIALIZER, description, constants, out, names], "the TOSA serializer")
    body = json.loads(names.read_text())
    names.unlink()
    return body


def reference_run(model: Path, names: dict, inputs: list[np.ndarray], folder: Path) -> list[np.ndarray]:
    """The network in `model` run by tosa_reference_model on `inputs` (stored values, in order)."""
    env = tosa_env()
    folder.mkdir(parents=True, exist_ok=True)
    in_files = []
    for index, array in enumerate(inputs):
        in_files.append(folder / f"in{index}.npy")
        np.save(in_files[-1], array)
    out_files = [f"out{index}.npy" for index in range(len(names["outputs"]))]
    _run([env / "bin" / "tosa_reference_model", "--tosa_file", model.resolve(), "--ifm_name", ",".join(names["inputs"]),
          "--ifm_file", ",".join(str(f.resolve()) for f in in_files), "--ofm_name", ",".join(names["outputs"]),
          "--ofm_file", ",".join(out_files), "--output_dir", folder.resolve(), "--terminate_early"],
         "tosa_reference_model")
    return [np.load(folder / name, allow_pickle=False) for name in out_files]


def vela(model: Path, folder: Path, accelerator: str, system_config: str, memory_mode: str) -> dict:
    """Compile `model` with Vela into `folder` (console log in vela.log, per-layer CSV with
    --verbose-performance); the summary CSV's row (column -> text)."""
    env = tosa_env()
    log = _run([env / "bin" / "vela", model.resolve(), "--config", VELA_CONFIG, "--accelerator-config", accelerator, "--system-config",
                system_config, "--memory-mode", memory_mode, "--output-dir", folder.resolve(), "--verbose-performance"],
               f"vela ({accelerator})")
    (folder / "vela.log").write_text(log)
    summaries = sorted(folder.glob(f"{model.stem}_summary_*.csv"))
    if not summaries:
        raise VerificationError(f"vela wrote no summary CSV into {folder}")
    with summaries[0].open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows:
        raise VerificationError(f"{summaries[0]}: empty Vela summary")
    return {key.strip(): value.strip() for key, value in rows[0].items() if key}


def vela_version() -> str:
    return _run([tosa_env() / "bin" / "vela", "--version"], "vela --version").strip()


def vela_layers(folder: Path, tensors: dict[str, str] | None = None) -> list[dict]:
    """Vela's per-layer estimate (<net>_per-layer.csv): operator, target, cycles, MACs, utilisation, and the
    hwact tensor its output is (`tensors`: serializer name -> hwact name; Vela appends suffixes such as
    `_transpose` to the layers it adds)."""
    files = sorted(folder.glob("*_per-layer.csv"))
    if not files:
        return []
    with files[0].open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    try:
        return [{"operator": row["Original Operator"], "npu_operator": row["NNG Operator"], "target": row["Target"],
                 "cycles": int(float(row["Op Cycles"])), "cycles_pct": round(float(row["Network% (cycles)"]), 2),
                 "macs": int(float(row["MAC Count"])), "mac_util_pct": round(float(row["Util% (MAC)"]), 2),
                 "name": row["Name"], "hwact_tensor": _hwact_tensor(row["Name"], tensors or {})} for row in rows]
    except (KeyError, ValueError) as exc:
        raise VerificationError(f"{files[0]}: unexpected per-layer CSV ({exc})") from None


def _hwact_tensor(name: str, tensors: dict[str, str]) -> str:
    base = re.match(r"(input|layer)-\d+", name)
    return tensors.get(base.group(0), "") if base else ""
