"""`hwact convert`: load -> passes (verified) -> backend artifacts -> report, written atomically."""

from __future__ import annotations

from pathlib import Path

import torch

from hwact import flows
from hwact.backends.onnx import export_onnx, verify
from hwact.errors import InputError, UnsupportedError
from hwact.ir import activations
from hwact.ir.graph import Graph, check_finite
from hwact.ir.summary import op_census, target_support
from hwact.load import Loaded
from hwact.npz import INTEGER, open_npz
from hwact.outputs import atomic_dir
from hwact.passes.manager import calibration_arrays, iter_calibration, load_calibration, random_batches, run_passes
from hwact.report import versions, write_report
from hwact.targets import Target


def calibration(graph: Graph, calib: str | None, samples: int = 16, batch: int = 4) -> list[tuple]:
    """Verification inputs: batches of 4 keep the activations of a 224x224 ViT-S/16 forward at ~40 MB."""
    if calib:
        return load_calibration(calib, graph.inputs, batch=batch, limit=max(samples, 64), fixed_batch=graph.fixed_batch)
    return random_batches(graph.inputs, samples, batch, fixed_batch=graph.fixed_batch)


def labelled_accuracy(graph: Graph, calib: str | None, batch: int = 64) -> float | None:
    """Top-1 accuracy on the calibration file's `y` labels, when it has them (inputs read a batch at a time)."""
    if not calib:
        return None
    with open_npz(calib) as archive:
        if "y" not in archive:
            return None
        _, samples = calibration_arrays(archive, graph.inputs)
        info = archive.info("y")
        if info.shape != (samples,) or info.dtype.kind not in INTEGER:
            raise InputError(f"{calib}: labels 'y' of shape {info.shape} and dtype {info.dtype}; expected one "
                             f"integer class per sample, shape ({samples},)")
        labels = torch.from_numpy(archive.read("y", kinds=INTEGER)).long()
        low, high = int(labels.min()), int(labels.max())
        correct = seen = 0
        with torch.no_grad():
            for args in iter_calibration(archive, graph.inputs, batch, fixed_batch=graph.fixed_batch):
                predicted = graph.module(*args)
                predicted = predicted[0] if isinstance(predicted, (tuple, list)) else predicted
                if predicted.dim() != 2 or low < 0 or high >= predicted.shape[1]:
                    raise InputError(f"{calib}: labels 'y' span {low}..{high}, the model's output "
                                     f"{tuple(predicted.shape)} is not (N, classes) over that range")
                truth = labels[seen:seen + predicted.shape[0]]
                correct += int((predicted.argmax(dim=1) == truth).sum())
                seen += predicted.shape[0]
    return correct / seen if seen else None


# options only one kind of model uses (the flow's name; None: the generic pass pipeline)
OPTION_OWNERS = {"delta_threshold": "delta", "key_interval": "delta", "pipeline_every": "logic",
                 "only": None, "skip": None, "recover": None}


def check_options_apply(source: str, flow_name: str | None, pass_names: list[str], options: dict,
                        calib: str | None) -> None:
    """Refuse an option the model's conversion would ignore (it would exit 0 having done nothing of it)."""
    kind = f"a {flow_name} model" if flow_name else "neither a delta nor a logic model"
    own_flow = f"a {flow_name} model converts through its own flow, without passes, calibration or recovery"
    for key, owner in OPTION_OWNERS.items():
        if options.get(key) not in (None, (), "") and owner != flow_name:
            raise InputError(f"--{key.replace('_', '-')} does not apply to {source}, {kind}",
                             hint=f"it is for {owner} models" if owner else own_flow)
    if flow_name and (pass_names or calib):
        raise InputError(f"{'--passes/--recipe' if pass_names else '--calib'} does not apply to {source}, {kind}",
                         hint=own_flow)


def convert(loaded: Loaded, pass_names: list[str], options: dict, target: Target, outdir: Path, force: bool,
            calib: str | None = None, log=print) -> dict:
    graph = loaded.graph
    check_finite(graph, loaded.source)
    flow = flows.find_flow(graph)
    check_options_apply(loaded.source, flow.NAME if flow else None, pass_names, options, calib)
    with atomic_dir(outdir, force) as tmp:
        if flow is not None:
            if target.name not in flow.TARGETS:
                raise UnsupportedError(f"{loaded.source}: a {flow.NAME} model converts to targets "
                                       f"{', '.join(flow.TARGETS)}, not '{target.name}'")
            body = {"flow": flow.NAME, **flow.convert(graph, target, tmp, options)}
        else:
            body = _convert_generic(graph, pass_names, options, target, tmp, calib, log)
        report = {"input": loaded.describe(), "target": target.name, **body, "versions": versions()}
        report["artifacts"] = sorted(set(body.get("artifacts", [])) | {"report.json", "report.md"})
        write_report(tmp, report)
    return report


def _convert_generic(graph: Graph, pass_names: list[str], options: dict, target: Target, tmp: Path,
                     calib: str | None, log) -> dict:
    integer_passes = [n for n in pass_names if n in ("calibrate", "fold-quant-scales")]
    if options.get("recover") and integer_passes:
        raise InputError(f"--recover {options['recover']} fine-tunes a float graph; the recipe lowers it to "
                         f"integers ({', '.join(integer_passes)}), which has no gradients",
                         hint="recover with --recipe relu|helu first, then convert that output with the integer recipe")
    batches = calibration(graph, calib)
    body: dict = {"ops_before": op_census(graph),
                  "activations_before": [s.describe() for s in activations.find_sites(graph)]}
    accuracy_before = labelled_accuracy(graph, calib)
    teacher = graph.copy() if options.get("recover") else None
    graph, records = run_passes(graph, pass_names, options, batches, log=lambda r: log(_pass_line(r)))
    body["passes"] = [r.as_dict() for r in records]
    if teacher is not None:
        from hwact.train.recover import recover_accuracy

        graph, body["recovery"] = recover_accuracy(graph, teacher, options["data"], options, log)
    body["ops_after"] = op_census(graph)
    body["activations_after"] = [s.describe() for s in activations.find_sites(graph)]
    if accuracy_before is not None:
        body["accuracy"] = {"before": accuracy_before, "after": labelled_accuracy(graph, calib)}
    integer = "hwact_integer" in graph.meta
    model_path = export_onnx(graph, tmp / "model.onnx")
    # an integer graph must match its reference bit for bit (only the output dequantize is float)
    metrics = verify(graph, model_path, batches, tolerance=0.0 if integer else 1e-4)
    body["onnx"] = {"path": "model.onnx", "opset": 20, "bytes": model_path.stat().st_size,
                    "batch": graph.fixed_batch or "dynamic",
                    "ort_max_abs_err": metrics["max_abs_err"], "ort_cosine": metrics["cosine"],
                    "ort_top1_agreement": metrics["top1_agreement"]}
    if integer:
        from hwact.passes.assert_integer_only import float_compute_nodes

        body["onnx"]["bit_exact"] = metrics["max_abs_err"] == 0.0
        body["integer"] = {"float_nodes": [n.name for n in float_compute_nodes(graph)],
                           "layers": graph.meta["hwact_integer"],
                           "nonlinear": graph.meta.get("hwact_nonlinear", [])}
    if "hwact_cle" in graph.meta:
        body["cle"] = graph.meta["hwact_cle"]
    body["target_support"] = target_support(graph, target)
    body["artifacts"] = ["model.onnx"]
    return body


def _pass_line(record) -> str:
    if not record.changed:
        return f"  {record.name:16s} {record.note}"
    top1 = "" if record.top1_agreement is None else f"  top1 {record.top1_agreement:.3f}"
    note = f"  ({record.note})" if record.note else ""
    return (f"  {record.name:16s} changed {record.changed:4d}  max|err| {record.max_abs_err:.3g}  "
            f"cos {record.cosine:.6f}{top1}  {record.seconds:.2f}s{note}")
