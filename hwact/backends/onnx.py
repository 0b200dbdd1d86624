"""ONNX backend: export a Graph with torch.onnx (dynamo exporter), check it, verify it with onnxruntime.

* opset 20 (GELU stays one `Gelu` op), dynamic batch dimension, one self-contained file below 2 GB
  (weights inside the protobuf), external data beside it above that.
* hwact ops are written through the translations registered in hwact.ir.ops.ONNX_TRANSLATIONS.
* `onnx.checker.check_model` must pass (run before the weights are inlined); `verify` runs onnxruntime against the torch graph on the same
  inputs (max abs error, cosine, top-1 agreement).
"""

from __future__ import annotations

import io
import logging
import os
import tempfile
import warnings
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
import onnx
import torch

from hwact.backends.onnx_stream import inline_external_data
from hwact.errors import UnsupportedError, VerificationError
from hwact.ir.graph import Graph, first_line
from hwact.ir.metrics import Outputs, collect, compare, nonfinite_batch, require_finite_reference, run_outputs
from hwact.ir.ops import ONNX_TRANSLATIONS, load_all_ops

OPSET = 20
_TWO_GB = 2 * 1024**3
FOLD_LIMIT = 1 << 24     # elements: above the largest weight of the models hwact converts
logging.getLogger("torch.onnx").setLevel(logging.ERROR)  # e.g. 'torchvision is not installed' notices


def export_onnx(graph: Graph, path: Path, opset: int = OPSET) -> Path:
    """Write `graph` to `path` (atomically: a temp file renamed when complete)."""
    load_all_ops()
    path = Path(path)
    names = [spec.name for spec in graph.inputs]
    try:
        ep = graph.export(dynamic_batch=True)
        integer = "hwact_integer" in graph.meta
        with warnings.catch_warnings(), redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            program = torch.onnx.export(ep, (), dynamo=True, opset_version=opset, input_names=names,
                                        custom_translation_table=dict(ONNX_TRANSLATIONS), verbose=False,
                                        optimize=not integer)
            if integer:
                _optimize_without_slice_split(program.model)
    except Exception as exc:
        raise UnsupportedError(f"ONNX export failed: {first_line(exc)}",
                               hint="run `hwact inspect` to see which ops the cpu target lacks") from exc
    weights = sum(t.numel() * t.element_size() for t in graph.module.state_dict().values())
    program.model.producer_name, program.model.producer_version = "hwact", __import__("hwact").__version__
    _strip_node_metadata(program.model, keep_namespace="hwact_integer" not in graph.meta)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.name}.") as work:
        staged = Path(work) / path.name
        with redirect_stdout(io.StringIO()):
            program.save(staged, external_data=True)  # streams each weight to a side file
        del program
        # checked in its external-data form: the checker then parses the graph, not a second copy of
        # every weight (on the single file it doubled the export's peak memory); the single file holds
        # the same graph and tensors byte for byte, and onnxruntime parses all of it in `verify`
        onnx.checker.check_model(str(staged))
        if weights < _TWO_GB:
            single = Path(work) / "single.onnx"
            inline_external_data(staged, single)
            staged.unlink()
            single.rename(staged)
            os.chmod(staged, 0o644)
            os.replace(staged, path)
        else:
            for produced in Path(work).iterdir():
                os.replace(produced, path.parent / produced.name)
    return path


def _optimize_without_slice_split(model) -> None:
    """What torch.onnx.export(optimize=True) runs (onnxscript's optimize_ir, then its fusions), without the
    rewrite rule slice-split: it matches its second Slice by scanning the whole graph for every node it
    visits, O(nodes^2) in Python, which took 73 s of the 78 s export of zoo:vit-s16 int8-shiftgelu (10,542
    nodes before folding; the rule merged nothing there, the model is the same 5,620 nodes).

    Constants are folded up to FOLD_LIMIT elements (onnxscript's default stops at 8,192 inputs): each int8
    weight's offset to uint8 (Cast, Add 128, Cast) is then stored folded, where onnxruntime used to fold it at
    session start through int64 temporaries: ViT-S/16's session took 376 MiB more memory that way (57 MiB
    now), and the model has 157 fewer nodes."""
    import onnx_ir.passes.common as common
    import onnxscript.rewriter.onnx_fusions
    from onnxscript import optimizer, rewriter
    from onnxscript.rewriter.rules.common import slice_split_rule

    rules = [rule for rule in rewriter._DEFAULT_REWRITE_RULES if rule is not slice_split_rule]
    optimizer.inline(model)
    for _ in range(2):
        optimizer.fold_constants(model, onnx_shape_inference=True, input_size_limit=FOLD_LIMIT,
                                 output_size_limit=FOLD_LIMIT)
        rewriter.rewrite(model, rules)      # also drops unused nodes, functions and opsets
    for step in (common.RemoveUnusedNodesPass(), common.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0),
                 common.LiftSubgraphInitializersToMainGraphPass(), common.DeduplicateInitializersPass(),
                 common.CommonSubexpressionEliminationPass(), common.OutputFixPass(), common.NameFixPass()):
        step(model)
    onnxscript.rewriter.onnx_fusions.fuse(model)


def _strip_node_metadata(model, keep_namespace: bool = True) -> None:
    """Drop the exporter's per-node debug metadata (Python stack traces with this machine's paths, FX node
    text): it made files path-dependent and, for integer graphs of many small nodes, 90 % of the bytes.
    A float export keeps each node's module path ("namespace"); an integer export (graph.meta holds
    "hwact_integer") keeps no metadata at all: its namespaces (the whole nn.Module class path, repeated on
    every one of its many small nodes) were 44 % of zoo:vit-tiny's int8-shiftgelu model.onnx."""
    for node in model.graph.all_nodes():
        for key in [k for k in node.metadata_props if not (keep_namespace and k == "namespace")]:
            del node.metadata_props[key]


def ort_session(path: Path, threads: int = 0, low_memory: bool = False):
    """An onnxruntime CPU session. `low_memory`, for checks, not speed: no weight pre-packing, no arena, no
    memory pattern (one block per run for all planned intermediates, ~140 MiB for ViT-S/16's integer model)
    and intra-op threads that sleep while they wait instead of spinning (spinning threads fight any other job
    on the cores; the 8 calibration batches of that model took as long on 2 threads this way as two runs on
    one thread each at a time, with 260 instead of 400 MiB peak, on the 2-core machine under a load of 2.5)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if low_memory:
        options.add_session_config_entry("session.disable_prepacking", "1")
        options.enable_cpu_mem_arena = False
        options.enable_mem_pattern = False
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_onnx(session, batches: list[tuple]) -> Outputs:
    """The outputs of an onnxruntime session on every batch (the torch tensors fed as numpy arrays)."""
    names = [i.name for i in session.get_inputs()]
    runs = (session.run(None, {n: a.numpy() for n, a in zip(names, args)}) for args in batches)
    return collect([torch.from_numpy(np.asarray(o)) for o in outs] for outs in runs)


def verify(graph: Graph, path: Path, batches: list[tuple], tolerance: float | None = 1e-4,
           name: str | None = None, reference_runs: list | None = None) -> dict:
    """Compare onnxruntime on `path` with the torch graph; raise when the max abs error exceeds
    tolerance·max(1, max|y_torch|) (relative to the output's magnitude, so large logits are fair).

    `name` is what errors call the file (its final name; `path` may be a temporary file that will not exist);
    `reference_runs`: the graph's outputs on `batches` when known (EmitContext.reference), else it runs."""
    name = name or Path(path).name
    reference = collect(reference_runs) if reference_runs is not None else run_outputs(graph, batches)
    require_finite_reference(reference, batches, what="the torch graph's outputs")
    produced = run_onnx(ort_session(path, low_memory=True), batches)
    broken = nonfinite_batch(produced)
    if broken is not None:
        raise VerificationError(f"{name}: onnxruntime's outputs are NaN/Inf on calibration batch {broken + 1} "
                                f"of {len(batches)}, where the torch graph's are finite")
    metrics = compare(reference, produced)
    limit = None if tolerance is None else tolerance * max(1.0, float(reference.flat.abs().max()))
    if limit is not None and not metrics["max_abs_err"] <= limit:  # NaN fails too
        raise VerificationError(f"{name}: onnxruntime differs from the torch graph by {metrics['max_abs_err']:.3g} "
                                f"(limit {limit:.3g})")
    return metrics


def onnx_op_census(path: Path) -> dict[str, int]:
    model = onnx.load(str(path), load_external_data=False)
    census: dict[str, int] = {}
    for node in model.graph.node:
        key = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"
        census[key] = census.get(key, 0) + 1
    return dict(sorted(census.items()))
