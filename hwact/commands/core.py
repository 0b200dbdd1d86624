"""Core commands: inspect, convert, export-onnx, bench, demo."""

from __future__ import annotations

import os
import time
from pathlib import Path

import click

from hwact.commands.params import FINITE, Count
from hwact.errors import InputError
from hwact.limits import MAX_BENCH_RUNS, MAX_EPOCHS, THREADS_PER_CPU, max_threads
from hwact.outputs import atomic_dir, check_output

_DEMO_DIR = "hwact-demo"


def model_options(func):
    """MODEL argument plus the options every command that loads a checkpoint takes."""
    func = click.option("--trust-checkpoint", is_flag=True,
                        help="Allow unpickling a full nn.Module (runs code from the file).")(func)
    func = click.option("--input-shape", "input_shapes", multiple=True, metavar="SHAPE",
                        help="Input shape like 1x3x224x224 or 1x128:int64; repeat for several inputs.")(func)
    func = click.option("--arch", help="Zoo architecture of a state_dict checkpoint: vit-tiny, vit-digits, vit-s16, "
                        "swin-tiny, swin-t, convnext-tiny, convnext-t, bert-tiny, bert-base, cnn-tiny, resnet18.")(func)
    return click.argument("model")(func)


def pass_options(func):
    func = click.option("--helu-alpha", type=FINITE, default=None, help="HeLU backward margin for gelu-to-helu.")(func)
    func = click.option("--skip", multiple=True, metavar="GLOB", help="Module paths to leave alone (repeatable).")(func)
    func = click.option("--only", multiple=True, metavar="GLOB", help="Only touch these module paths (repeatable).")(func)
    func = click.option("--calib", type=click.Path(dir_okay=False), help=".npz calibration data (arrays named after inputs, or x; y = labels).")(func)
    func = click.option("--recipe", help="A named list of passes (e.g. relu, helu).")(func)
    return click.option("--passes", help="Comma-separated pass names, run in order.")(func)


def _load(model, arch, input_shapes, trust_checkpoint, allow_onnx=False):
    from hwact.load import load

    loaded = load(model, arch=arch, input_shapes=tuple(input_shapes), trust=trust_checkpoint, allow_onnx=allow_onnx)
    # these commands work on the traced graph: without the eager module, its float weights are freed once the
    # passes replace them (84 MB that zoo:vit-s16's int8 convert held to the end)
    loaded.module = None
    return loaded


# ----------------------------------------------------------------------------------------------- inspect
@click.command()
@model_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
def inspect(model, arch, input_shapes, trust_checkpoint, as_json):
    """Op census, activation sites, parameters, FLOPs and per-target support of MODEL.

    MODEL is a checkpoint file, an ONNX file, or zoo:NAME (zoo:vit-tiny, zoo:vit-s16, zoo:swin-tiny, ...)."""
    from hwact.inspect import inspect_loaded, render_inspect
    from hwact.report import to_json

    info = inspect_loaded(_load(model, arch, input_shapes, trust_checkpoint, allow_onnx=True))
    click.echo(to_json(info, indent=2) if as_json else render_inspect(info))


# ----------------------------------------------------------------------------------------------- convert
@click.command()
@model_options
@pass_options
@click.option("--target", default="cpu", show_default=True, help="Target name (hwact/targets/*.toml).")
@click.option("-o", "--output", "outdir", required=True, type=click.Path(file_okay=False), help="Output folder.")
@click.option("--force", is_flag=True, help="Replace OUTDIR if it exists.")
@click.option("--recover", type=click.Choice(["kd"]), help="Recover accuracy after the passes by distilling from the original.")
@click.option("--data", help="Training data for --recover: digits, an .npz (x[, y]) or an ImageFolder directory.")
@click.option("--epochs", type=Count(1, MAX_EPOCHS), default=None, help="Distillation epochs per stage for --recover.")
@click.option("--schedule", type=click.Choice(["all", "staged"]), default=None,
              help="--recover: distil the converted graph at once (default), or re-swap stage by stage.")
@click.option("--temperature", type=FINITE, default=None, help="--recover: distillation temperature T (default 4).")
@click.option("--ce-weight", type=FINITE, default=None, help="--recover: weight of hard-label cross-entropy (labels needed).")
@click.option("--calib-method", type=click.Choice(["minmax", "percentile", "mse"]), default=None,
              help="Activation range estimator for integer recipes (default: minmax).")
@click.option("--delta-threshold", type=FINITE, default=None, help="Delta models: run-time threshold (>= 0).")
@click.option("--key-interval", type=Count(0, 2**31 - 1), default=None,
              help="Delta models: full update every N frames (0 = never).")
@click.option("--pipeline-every", type=click.IntRange(min=0), default=None,
              help="Logic models on FPGA targets: a register stage every K gate layers (0 = combinational).")
@click.option("--tune-trials", type=Count(0, 100_000), default=None,
              help="tvm-* targets: MetaSchedule tuning trials, kept in a database later converts reuse (0 = untuned).")
def convert(model, arch, input_shapes, trust_checkpoint, passes, recipe, calib, only, skip, helu_alpha, target, outdir,
            force, recover, data, epochs, schedule, temperature, ce_weight, calib_method, delta_threshold, key_interval,
            pipeline_every, tune_trials):
    """Run passes on MODEL, export it for TARGET into OUTDIR with report.json and report.md."""
    check_output(outdir, force, inputs=(model, calib, data))   # first: fails in well under a second
    from hwact.pipeline import ConvertOptions, convert as run_convert
    from hwact.targets import load_target

    options = ConvertOptions(passes=passes, recipe=recipe, calib=calib, only=tuple(only), skip=tuple(skip),
                             helu_alpha=helu_alpha, calib_method=calib_method, delta_threshold=delta_threshold,
                             key_interval=key_interval, pipeline_every=pipeline_every, recover=recover, data=data,
                             epochs=epochs, schedule=schedule, temperature=temperature, ce_weight=ce_weight,
                             tune_trials=tune_trials)
    options.check()
    the_target = load_target(target)
    loaded = _load(model, arch, input_shapes, trust_checkpoint)
    click.echo(f"hwact: {loaded.source} ({loaded.format}) -> {outdir} for {the_target.name}")
    report = run_convert(loaded, options, the_target, Path(outdir), force, log=click.echo)
    _print_convert_summary(report, outdir)


def _print_convert_summary(report: dict, outdir) -> None:
    if "onnx" in report:
        onnx = report["onnx"]
        click.echo(f"  onnxruntime vs torch: max|err| {onnx['ort_max_abs_err']:.3g}, cosine {onnx['ort_cosine']:.6f}")
    support = report.get("target_support")
    if support and not support["deployable"]:
        blockers = ", ".join(f"{op} x{v['count']}" for op, v in support["not_native"].items())
        click.echo(f"  not yet deployable on {support['target']}: {blockers} (see report.md)")
    click.echo(f"wrote {', '.join(str(Path(outdir) / a) for a in report['artifacts'])}")


# ------------------------------------------------------------------------------------------- export-onnx
@click.command("export-onnx")
@model_options
@pass_options
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Path of the .onnx file.")
@click.option("--force", is_flag=True, help="Replace the output file if it exists.")
def export_onnx_command(model, arch, input_shapes, trust_checkpoint, passes, recipe, calib, only, skip, helu_alpha, output, force):
    """Export MODEL (optionally after passes) to one ONNX file, verified with onnxruntime."""
    check_output(output, force, inputs=(model, calib), kind="file")   # first: fails in well under a second
    from hwact.pipeline import ConvertOptions, export_onnx

    options = ConvertOptions(passes=passes, recipe=recipe, calib=calib, only=tuple(only), skip=tuple(skip),
                             helu_alpha=helu_alpha)
    loaded = _load(model, arch, input_shapes, trust_checkpoint)
    section = export_onnx(loaded, options, Path(output), force, log=click.echo)
    click.echo(f"wrote {output} ({section['bytes']} bytes); onnxruntime vs torch max|err| "
               f"{section['ort_max_abs_err']:.3g}")


# ------------------------------------------------------------------------------------------------- bench
@click.command()
@click.argument("artifact", type=click.Path())
@click.option("--compare", "other", type=click.Path(), help="A second artifact, run interleaved; prints the ratio.")
@click.option("--warmup", type=Count(0, MAX_BENCH_RUNS), default=10, show_default=True, help="Warm-up runs.")
@click.option("--iterations", type=Count(1, MAX_BENCH_RUNS), default=None,
              help="Timed runs (default: as many as --duration allows).")
@click.option("--duration", type=FINITE, default=3.0, show_default=True, help="Seconds to run when --iterations is not given.")
@click.option("--threads", type=int, default=0, help="onnxruntime intra-op threads (0 = its default).")
@click.option("--batch", type=int, default=1, show_default=True, help="Batch size.")
@click.option("--stream", type=click.Path(dir_okay=False), help="Frame sequence (.npz) for a delta-model folder.")
@click.option("--threshold", type=FINITE, default=None, help="Delta-model folder: run-time threshold to bench at.")
@click.option("--rpc", metavar="HOST:PORT", help="TVM folder: time it on a device from this TVM RPC tracker.")
@click.option("--key", metavar="KEY", help="With --rpc: the device key to request (e.g. rpi5).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON with machine and library versions.")
def bench(artifact, other, warmup, iterations, duration, threads, batch, stream, threshold, rpc, key, as_json):
    """Latency (P50/P90/P99/mean/min) and throughput of ARTIFACT (an .onnx file or a convert folder).

    A convert folder of a logic-gate or delta model is benchmarked by its own flow (compiled kernels)."""
    from hwact.bench.ort_runner import make_runner, measure
    from hwact.report import machine, to_json, versions

    if batch < 1 or warmup < 0 or (iterations is not None and iterations < 1) or duration <= 0 or threads < 0:
        raise InputError("--batch and --iterations must be >= 1, --warmup and --threads >= 0, --duration > 0")
    if threads > max_threads():  # onnxruntime hangs at thousands of threads and crashes at 100000
        raise InputError(f"--threads {threads}: at most {max_threads()} here ({THREADS_PER_CPU} per CPU, "
                         f"{os.cpu_count()} CPUs)", hint="0 lets onnxruntime choose")
    if bool(rpc) != bool(key):
        raise InputError("--rpc HOST:PORT and --key KEY go together")
    flow_result = _bench_flow(Path(artifact), stream, threshold, batch, iterations, duration, threads,
                              str(_onnx_of(other)) if other else None, rpc, key)
    if flow_result is not None:
        click.echo(to_json({**flow_result, "machine": machine(), "versions": versions()} if as_json else flow_result,
                              indent=2, default=str))
        return
    paths = [_onnx_of(artifact)] + ([_onnx_of(other)] if other else [])
    runners = [make_runner(p, batch, threads) for p in paths]
    results = measure(runners, warmup, iterations, None if iterations else duration, batch)
    out = {"batch": batch, "threads": threads, "results": [{"artifact": str(p), **r} for p, r in zip(paths, results)]}
    if other:
        out["ratio_p50"] = results[0]["p50_ms"] / results[1]["p50_ms"]
    if as_json:
        click.echo(to_json({**out, "machine": machine(), "versions": versions()}, indent=2))
        return
    for r in out["results"]:
        click.echo(f"{r['artifact']}: p50 {r['p50_ms']:.3f} ms  p90 {r['p90_ms']:.3f}  p99 {r['p99_ms']:.3f}  "
                   f"mean {r['mean_ms']:.3f}  min {r['min_ms']:.3f}  ({r['iterations']} runs, "
                   f"{r['throughput_per_s']:.1f} samples/s at batch {batch})")
    if other:
        click.echo(f"latency ratio (p50) {paths[0]} / {paths[1]}: {out['ratio_p50']:.3f} "
                   f"(interleaved in one process)")


def _bench_flow(folder: Path, stream: str | None, threshold: float | None, batch: int, iterations: int | None,
                duration: float, threads: int = 0, compare: str | None = None, rpc: str | None = None,
                key: str | None = None) -> dict | None:
    """Benchmark a convert folder with the runner of the backend that wrote it (None: an ONNX folder)."""
    from hwact.backends.base import Backend, BenchRequest, get_backend
    from hwact.load import read_json

    report_path = folder / "report.json"
    names: list = []
    if folder.is_dir() and report_path.exists():
        if not report_path.is_file() or report_path.stat().st_size > 16 * 10**6:   # a FIFO would block the read
            raise InputError(f"{report_path}: not a report hwact wrote (a regular file of at most 16 MB)")
        names = read_json(report_path).get("backends") or []
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise InputError(f"{report_path}: 'backends' is not a list of backend names")
    runners = [get_backend(n) for n in names if get_backend(n).bench.__func__ is not Backend.bench.__func__]
    if (stream or threshold is not None) and [r.name for r in runners] != ["delta-c"]:
        raise InputError(f"--stream and --threshold apply to a delta model's convert folder; {folder} is not one")
    if rpc and [r.name for r in runners] != ["tvm"]:
        raise InputError(f"--rpc and --key apply to a convert folder of a tvm-* target; {folder} is not one")
    if not runners:
        return None
    return runners[0].bench(folder, BenchRequest(stream, threshold, batch, iterations, duration, threads, compare,
                                                 rpc=rpc, key=key))


def _onnx_of(artifact: str) -> Path:
    path = Path(artifact)
    if path.is_dir():
        path = path / "model.onnx"
    if not path.exists():
        raise InputError(f"{artifact}: no such ONNX file or convert folder with model.onnx")
    if path.stat().st_size == 0:
        raise InputError(f"{artifact}: empty file")
    return path


# -------------------------------------------------------------------------------------------------- demo
@click.command()
@click.option("-o", "--output", "outdir", default=_DEMO_DIR, show_default=True, type=click.Path(file_okay=False))
@click.option("--force", is_flag=True, help="Replace OUTDIR if it exists.")
def demo(outdir, force):
    """Built-in default: zoo ViT -> gelu-to-relu + fold-bn -> ONNX -> benchmark original vs converted."""
    check_output(outdir, force)   # first: fails in well under a second
    from hwact.bench.ort_runner import make_runner, measure
    from hwact.load import load
    from hwact.pipeline import ConvertOptions, convert as run_convert, export_onnx
    from hwact.targets import load_target

    out = Path(outdir)
    original, converted = out / "original.onnx", out / "converted"
    start = time.perf_counter()
    click.echo("hwact demo: the zoo ViT (vit-tiny, random weights), GELU -> ReLU, BatchNorm folding, ONNX, benchmark\n")
    with atomic_dir(out, force) as tmp:   # both models, or nothing
        loaded = load("zoo:vit-tiny")   # traced once: the original is exported before the passes change it
        export_onnx(loaded, ConvertOptions(), tmp / original.name, force=False, log=click.echo)
        report = run_convert(loaded, ConvertOptions(recipe="relu"), load_target("cpu"), tmp / converted.name,
                             force=False, log=click.echo)
    _print_convert_summary(report, converted)
    click.echo("\nbenchmark (onnxruntime, batch 1, interleaved A/B):")
    runners = [make_runner(original, 1, 0), make_runner(converted / "model.onnx", 1, 0)]
    first, second = measure(runners, warmup=20, iterations=300, duration=None, batch=1)
    click.echo(f"  original  p50 {first['p50_ms']:.3f} ms   converted p50 {second['p50_ms']:.3f} ms   "
               f"ratio converted/original {second['p50_ms'] / first['p50_ms']:.3f}")
    click.echo(f"\ndone in {time.perf_counter() - start:.1f} s. Wrote:\n  {original}\n  "
               + "\n  ".join(str(converted / a) for a in report["artifacts"]))
    click.echo("\nNext:\n"
               f"  hwact inspect zoo:vit-s16                      # op census, activation sites, target support\n"
               f"  hwact bench {converted} --compare {original}\n"
               f"  hwact convert MODEL.pt2 --recipe relu -o OUT   # your own checkpoint")


COMMANDS = [inspect, convert, export_onnx_command, bench, demo]
