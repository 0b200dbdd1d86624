"""`hwact bench OUT [--rpc HOST:PORT --key KEY]` for a convert folder of a tvm-* target.

The folder's model.onnx is compiled again here for the target its tvm.json names (with the tuning
database of this machine's cache when the convert was tuned; the folder's own library is never loaded,
as files given to hwact are untrusted) into hwact's cache. Then, on the same random inputs:

    local   the library in TVM's VM on this CPU, timed with time_evaluator (one call per repeat, so the
            repeats give p50/p90), side by side with model.onnx in onnxruntime
    --rpc   a device of KEY requested from the TVM RPC tracker at HOST:PORT: the library is uploaded,
            loaded and timed there; onnxruntime's row is still this machine's

Either way the TVM outputs are first checked against onnxruntime's (float: FLOAT_TOLERANCE x
max(1, max|reference|); integer: bit for bit), and their SHA-256 is reported, so a remote run can be
compared with a local one bit for bit.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
from pathlib import Path

import numpy as np

from hwact.backends import tvm_build
from hwact.backends.base import BenchRequest
from hwact.backends.tvm_backend import LIBRARY, METADATA, as_list, compare, runs_here
from hwact.bench.ort_runner import make_runner, measure, stats
from hwact.errors import InputError
from hwact.limits import MAX_BENCH_RUNS

CONNECT_TIMEOUT_S = 5.0
SESSION_TIMEOUT_S = 600


def read_metadata(outdir: Path) -> dict:
    from hwact.load import read_json

    path = outdir / METADATA
    if not path.is_file() or path.stat().st_size > 10**6:
        raise InputError(f"{outdir}: no {METADATA} (a regular file of at most 1 MB) from a tvm-* convert")
    metadata = read_json(path)
    if not isinstance(metadata, dict):
        raise InputError(f"{path}: not a JSON object")
    return metadata


def library(onnx_path: Path, signature: tvm_build.Signature, spec: dict, cross_compiler: str | None,
            trials: int) -> tuple[Path, bool]:
    """hwact's own build of the folder's model for `spec`, cached; (path, whether it is tuned)."""
    key = tvm_build.tuning_key(onnx_path, signature, spec)
    record = tvm_build.cache_dir() / "tune" / key / "hwact-trials.json"
    tuned = trials > 0 and record.is_file()
    done = json.loads(record.read_text())["trials"] if tuned else 0     # the database may grow: a library each
    path = tvm_build.cache_dir() / "lib" / f"{key}-t{done}.so"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        mod = tvm_build.import_onnx(onnx_path, signature, str(onnx_path))
        target = tvm_build.make_target(spec, str(onnx_path))
        staged = path.with_suffix(f".{os.getpid()}.so")
        tvm_build.export(tvm_build.compile_module(mod, target, key if tuned else None), staged, cross_compiler)
        staged.replace(path)
    return path, tuned


def request_device(address: str, key: str):
    """An RPC session on a device of `key` from the tracker at HOST:PORT; InputError when there is none."""
    from tvm import rpc

    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InputError(f"--rpc {address}: expected HOST:PORT of a TVM RPC tracker")
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        raise InputError(f"--rpc {address}: no RPC tracker answers there ({exc.strerror or exc})") from exc
    try:
        tracker = rpc.connect_tracker(host, int(port))
        keys = sorted(tracker.summary().get("queue_info", {}))
    except Exception as exc:  # noqa: BLE001 - a non-tracker server answers with garbage or hangs up
        raise InputError(f"--rpc {address}: not a TVM RPC tracker ({str(exc).splitlines()[0][:120]})") from exc
    if key not in keys:
        raise InputError(f"--key {key}: no device of that key at the tracker {address}",
                         hint=f"registered keys: {', '.join(keys) or 'none'}")
    return tracker.request(key, priority=1, session_timeout=SESSION_TIMEOUT_S)


def digest(arrays: list[np.ndarray]) -> list[str]:
    return [hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest() for a in arrays]


def bench(outdir: Path, request: BenchRequest) -> dict:
    outdir = Path(outdir)
    if request.threads:
        os.environ["TVM_NUM_THREADS"] = str(request.threads)   # read when TVM's thread pool starts
    tvm = tvm_build.tvm()
    metadata = read_metadata(outdir)
    where = str(outdir / METADATA)
    spec = tvm_build.check_target_spec(metadata.get("target"), where)
    signature = tvm_build.Signature.from_json(metadata.get("inputs"), where)
    cross_compiler = metadata.get("cross_compiler")
    if cross_compiler not in (None, "aarch64-linux-gnu-g++"):
        raise InputError(f"{where}: cross compiler {cross_compiler!r} is not one hwact uses")
    trials = metadata.get("tune_trials", 0)
    trials = trials if isinstance(trials, int) and trials >= 0 else 0
    onnx_path = outdir / "model.onnx"
    if not onnx_path.is_file():
        raise InputError(f"{outdir}: no model.onnx next to {METADATA}")
    compiled_batch = signature.inputs[0][1][0]
    if request.batch != compiled_batch:
        raise InputError(f"{outdir}: the TVM library is compiled for batch {compiled_batch}, not {request.batch}",
                         hint=f"pass --batch {compiled_batch}")
    if not request.rpc and not runs_here(spec):
        raise InputError(f"{outdir}: built for {spec.get('mtriple', spec['kind'])}, which this machine cannot run",
                         hint="time it on the device: --rpc HOST:PORT --key KEY (docs/tvm.md)")
    onnxruntime = make_runner(onnx_path, request.batch, request.threads)
    missing = [name for name, _, _ in signature.inputs if name not in onnxruntime.feeds]
    if missing:
        raise InputError(f"{where}: inputs {missing} are not model.onnx's inputs")
    path, tuned = library(onnx_path, signature, spec, cross_compiler, trials)

    if request.rpc:
        session = request_device(request.rpc, request.key or "")
        session.upload(str(path), target=LIBRARY)
        module, device = session.load_module(LIBRARY), (session.cuda(0) if spec["kind"] == "cuda" else session.cpu(0))
        place = f"rpc {request.rpc} key {request.key}"
    else:
        module, device, place = tvm.runtime.load_module(str(path)), tvm.cpu(0), "local"
    vm = tvm.relax.VirtualMachine(module, device)
    feeds = [tvm.runtime.tensor(np.ascontiguousarray(onnxruntime.feeds[name]), device)
             for name, _, _ in signature.inputs]
    produced = as_list(vm["main"](*feeds))
    expected = onnxruntime.session.run(None, onnxruntime.feeds)
    error = compare(expected, produced, bool(metadata.get("integer")), f"{outdir}: TVM ({place}) vs onnxruntime")

    once = vm.time_evaluator("main", device, number=1, repeat=3)(*feeds).mean
    repeats = request.iterations or int(min(MAX_BENCH_RUNS, max(10, request.duration / max(once, 1e-6))))
    timed = vm.time_evaluator("main", device, number=1, repeat=repeats)(*feeds)
    ort_row = measure([onnxruntime], 3, request.iterations, None if request.iterations else request.duration,
                      request.batch, progress=False)[0]
    rows = [{"artifact": f"{LIBRARY} (TVM, {place}, {'tuned' if tuned else 'untuned'})",
             **stats(list(timed.results), request.batch)},
            {"artifact": f"{onnx_path} (onnxruntime, this machine)", **ort_row}]
    result = {"backend": "tvm", "target": spec, "device": place, "batch": request.batch,
              "tuned": tuned, "tune_trials": trials if tuned else 0,
              "outputs_match_onnxruntime": True, "max_abs_err_vs_onnxruntime": error,
              "outputs_sha256": digest(produced), "results": rows,
              "ratio_p50_tvm_over_onnxruntime": rows[0]["p50_ms"] / rows[1]["p50_ms"]}
    if trials and not tuned:
        result["note"] = "the convert was tuned, but this machine's cache has no tuning database for it: timed untuned"
    return result
