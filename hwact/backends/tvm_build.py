"""Apache TVM (0.27, Relax) builds of an exported model.onnx: import, compile, tune, export, cache.

    import   relax.frontend.onnx.from_onnx with every input's shape fixed (batch 1 unless the graph has
             a fixed batch) and hwact's additions for integer graphs (tvm_onnx.py: ConvInteger, scalar
             integer operands); an op without a converter is refused up front, listed
    target   a target TOML's `[backend.tvm] target` table, a TVM target as a JSON dict (mcpu = "host":
             this machine's CPU as LLVM names it, so its features come with it)
    tune     MetaSchedule with a global trial budget split evenly over the tuning tasks (search()); the
             database lives in the cache under a key of (model.onnx bytes, input shapes, target), so a
             later build of the same model for the same target reuses it instead of tuning again
    build    tvm.compile (untuned: TVM's default schedules), or the MetaSchedule pipeline that applies
             the tuned database; export_library with the target's cross compiler when it names one

The cache is $HWACT_CACHE/tvm (default ~/.cache/hwact/tvm): tune/KEY/ holds a tuning database,
lib/KEY-tTRIALS.so a library `hwact bench` built (it never loads the library of an output folder).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from hwact.backends import tvm_onnx
from hwact.errors import InputError, ToolMissingError, UnsupportedError

TUNE_TIMEOUT_S = 4 * 3600
BUILD_TIMEOUT_S = 60        # one candidate kernel's build in MetaSchedule
TARGET_KEYS = {"kind", "mtriple", "mcpu", "mattr", "arch", "num-cores", "max_num_threads", "thread_warp_size"}


def tvm():
    """The tvm package; ToolMissingError when the optional extra is not installed."""
    try:
        import tvm as module
        from tvm import relax  # noqa: F401 - Relax is the only compiler path in 0.27
    except ImportError as exc:
        raise ToolMissingError("apache-tvm is not installed (the tvm-* targets need it)",
                               hint="pip install -e '.[tvm]'") from exc
    return module


def cache_dir() -> Path:
    return Path(os.environ.get("HWACT_CACHE", Path.home() / ".cache" / "hwact")) / "tvm"


def check_target_spec(spec, where: str) -> dict:
    """A target table as TVM takes it: string or list-of-string values under known keys (it may come from
    a hostile tvm.json, so nothing else passes)."""
    if not isinstance(spec, dict) or not isinstance(spec.get("kind"), str):
        raise InputError(f"{where}: the TVM target must be a table with a 'kind' (llvm, cuda)")
    for key, value in spec.items():
        ok = isinstance(value, (str, int)) or (isinstance(value, list) and all(isinstance(v, str) for v in value))
        if key not in TARGET_KEYS or not ok:
            raise InputError(f"{where}: TVM target key '{key}' is not one hwact passes on",
                             hint=f"known keys: {', '.join(sorted(TARGET_KEYS))}")
    return dict(spec)


def resolve_target(spec: dict, where: str) -> dict:
    """The target table with mcpu = "host" replaced by this machine's CPU name (e.g. znver4) and its core
    count (MetaSchedule needs num-cores to tune for a CPU)."""
    spec = check_target_spec(spec, where)
    if spec.get("mcpu") == "host":
        spec["mcpu"] = str(tvm().target.codegen.llvm_get_system_cpu())
        spec.setdefault("num-cores", os.cpu_count() or 1)
    return spec


def make_target(spec: dict, where: str):
    """The tvm.target.Target of a (resolved) target table; UnsupportedError when TVM cannot build for it."""
    try:
        return tvm().target.Target(spec)
    except Exception as exc:  # noqa: BLE001 - TVM raises ValueError/TVMError with a multi-line message
        raise UnsupportedError(f"{where}: TVM cannot compile for target {json.dumps(spec)} "
                               f"({str(exc).splitlines()[0][:160]})") from exc


def missing_converters(model) -> list[str]:
    """The op types of an ONNX model that the import (TVM's Relax ONNX frontend with hwact's additions,
    tvm_onnx.py) has no converter for."""
    known = tvm_onnx.known_ops()
    return sorted({node.op_type for node in model.graph.node if node.op_type not in known})


@dataclass
class Signature:
    """What the compiled `main` takes: inputs (name, shape, dtype) in order, with shapes fixed."""
    inputs: list[tuple[str, list[int], str]]

    def as_json(self) -> list[dict]:
        return [{"name": name, "shape": shape, "dtype": dtype} for name, shape, dtype in self.inputs]

    @classmethod
    def from_json(cls, rows, where: str) -> "Signature":
        try:
            inputs = [(str(r["name"]), [int(d) for d in r["shape"]], str(r["dtype"])) for r in rows]
        except (TypeError, KeyError, ValueError) as exc:
            raise InputError(f"{where}: 'inputs' is not a list of {{name, shape, dtype}}") from exc
        if any(d < 1 or d > 2**20 for _, shape, _ in inputs for d in shape):
            raise InputError(f"{where}: an input dimension out of range")
        return cls(inputs)


def import_onnx(path: Path, signature: Signature, where: str):
    """model.onnx as a Relax IRModule with the signature's shapes (weights kept in the module), imported
    with hwact's additions to the frontend (ConvInteger, scalar integer operands: tvm_onnx.py)."""
    import onnx
    from tvm.relax.frontend.onnx import from_onnx

    model = onnx.load(str(path))
    missing = missing_converters(model)
    if missing:
        raise UnsupportedError(f"{where}: TVM's Relax ONNX frontend has no converter for {', '.join(missing)}",
                               hint="hwact's TVM import takes the ops of hwact's float and integer ONNX")
    shapes = {name: shape for name, shape, _ in signature.inputs}
    dtypes = {name: dtype for name, _, dtype in signature.inputs}
    with tvm_onnx.converters():
        return from_onnx(model, shape_dict=shapes, dtype_dict=dtypes, keep_params_in_input=False)


def tuning_key(onnx_path: Path, signature: Signature, spec: dict) -> str:
    digest = hashlib.sha256(Path(onnx_path).read_bytes())
    digest.update(json.dumps([signature.as_json(), spec], sort_keys=True).encode())
    return digest.hexdigest()[:20]


def tune(onnx_path: Path, signature: Signature, spec: dict, key: str, trials: int, log=print) -> dict:
    """MetaSchedule the model's kernels with `trials` measured candidates in all (search()), into the cache's
    database for `key`; a database that already holds at least `trials` is reused as it is. The search
    runs in a child process (python -m hwact.backends.tvm_build): a crash inside TVM becomes a one-line
    error, and so does a search that measured no candidate. Returns what the report says: trials, tasks,
    trials per task, measured records, database, reused, wall seconds."""
    work_dir = cache_dir() / "tune" / key
    done_path = work_dir / "hwact-trials.json"
    done = json.loads(done_path.read_text()) if done_path.is_file() else {"trials": 0}
    if done["trials"] >= trials:
        log(f"  tvm: reusing the tuning database of {done['trials']} trials ({work_dir})")
        return {**done, "database": str(work_dir), "reused": True}
    work_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    log(f"  tvm: MetaSchedule tuning, {trials} trials ({work_dir})")
    request = json.dumps({"onnx": str(onnx_path), "inputs": signature.as_json(), "target": spec,
                          "work_dir": str(work_dir), "trials": trials})
    child = subprocess.run([sys.executable, "-m", "hwact.backends.tvm_build", request], timeout=TUNE_TIMEOUT_S,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if child.returncode != 0:
        said = [line.strip() for line in child.stdout.splitlines()
                if line.strip() and not line.lstrip().startswith(("File ", "Traceback", "!!!")) and "Warning" not in line]
        how = (f"it crashed with signal {-child.returncode} inside TVM" if child.returncode < 0
               else f"exit {child.returncode}{': ' + said[-1][:160] if said else ''}")
        raise UnsupportedError(f"TVM's MetaSchedule tuning failed ({how})",
                               hint="--tune-trials 0 builds untuned; docs/tvm.md says where this was seen")
    done = {"trials": trials, **json.loads((work_dir / "hwact-search.json").read_text()),
            "measured": measured_records(work_dir), "wall_s": round(time.perf_counter() - start, 2)}
    if not done["measured"]:
        raise UnsupportedError("TVM's MetaSchedule tuning measured no candidate (every build or run failed)",
                               hint=f"the search's logs are in {work_dir / 'logs'}")
    done_path.write_text(json.dumps(done))
    return {**done, "database": str(work_dir), "reused": False}


def measured_records(work_dir: Path) -> int:
    """How many tuning records in work_dir's JSON database hold a measured run time (a candidate whose build
    or run failed is recorded with 1e10 s)."""
    path = work_dir / "database_tuning_record.json"
    lines = path.read_text().splitlines() if path.is_file() else []
    run_seconds = [json.loads(line)[1][1] for line in lines if line.strip()]   # [workload, [trace, run_secs, ..]]
    return sum(1 for seconds in run_seconds if seconds and max(seconds) < 1e9)


def tuning_pipeline(target, work_dir: Path, trials: int):
    """Relax's static-shape tuning pipeline: legalize and fuse, MetaSchedule `trials` candidates (0: none),
    then apply the database in `work_dir` to the kernels it holds records for."""
    return tvm().relax.pipeline.static_shape_tuning_pipeline(total_trials=trials, target=target,
                                                             work_dir=str(work_dir), cpu_weight_prepack=False)


def search(mod, target, work_dir: Path, trials: int) -> dict:
    """MetaSchedule over the kernels of `mod`, legalized and fused as tuning_pipeline does: `trials` measured
    candidates in all, split evenly over the tuning tasks (ceil(trials / tasks) each, measured in batches
    of at most 64), so that a small budget reaches every kernel rather than the first few the task
    scheduler picks (its default batch is 64 per task). Records go to the JSON database in work_dir.
    Candidates are built by one worker process: with TVM's default of one per core, every build here
    ran into the builder's timeout (30 s, a 16x64 MatMul included) and nothing was measured."""
    module = tvm()
    from tvm.s_tir import meta_schedule

    relax = module.relax
    with target:
        mod = module.transform.Sequential([relax.transform.DecomposeOpsForInference(),
                                           relax.transform.CanonicalizeBindings(), relax.pipeline.zero_pipeline()])(mod)
    tasks = len(meta_schedule.relax_integration.extract_tasks(mod, target))
    per_task = max(1, -(-trials // max(tasks, 1)))
    builder = meta_schedule.builder.LocalBuilder(max_workers=1, timeout_sec=BUILD_TIMEOUT_S)
    meta_schedule.relax_integration.tune_relax(mod, {}, target, str(work_dir), max_trials_global=trials,
                                               max_trials_per_task=per_task, num_trials_per_iter=min(64, per_task),
                                               builder=builder)
    return {"tasks": tasks, "trials_per_task": per_task}


def compile_module(mod, target, key: str | None):
    """The VM executable: untuned (key None), or with the tuned database of `key` applied."""
    if key is not None:
        mod = tuning_pipeline(target, cache_dir() / "tune" / key, 0)(mod)
    return tvm().compile(mod, target=target)


def export(executable, path: Path, cross_compiler: str | None) -> Path:
    """The executable as a shared library; cross compiled (e.g. aarch64-linux-gnu-g++) when asked."""
    if cross_compiler:
        if shutil.which(cross_compiler) is None:
            package = "g++-" + cross_compiler.rsplit("-", 1)[0] if cross_compiler.endswith("g++") else cross_compiler
            raise ToolMissingError(f"{cross_compiler} is not installed", hint=f"apt-get install {package}")
        executable.export_library(str(path), fcompile=tvm().support.cc.cross_compiler(cross_compiler))
    else:
        executable.export_library(str(path))
    return path


if __name__ == "__main__":   # the tuning child of tune(): writes the database into work_dir
    job = json.loads(sys.argv[1])
    module = import_onnx(Path(job["onnx"]), Signature.from_json(job["inputs"], "tune"), job["onnx"])
    split = search(module, make_target(job["target"], "tune"), Path(job["work_dir"]), int(job["trials"]))
    (Path(job["work_dir"]) / "hwact-search.json").write_text(json.dumps(split))
