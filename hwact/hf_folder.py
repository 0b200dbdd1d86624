"""Intake of a Hugging Face model folder (what `save_pretrained` writes): config.json plus safetensors weights.

`hwact convert ./folder ...` (and inspect, export-onnx) reach `load_folder` when MODEL is a directory
holding config.json. `transformers` is the optional extra `hwact[hf]`; nothing from the folder runs:

  * config.json is read as JSON first. A config with `auto_map` (custom code shipped with the folder,
    `trust_remote_code`) is refused; so is a `model_type` transformers does not know.
  * The model class is `config.architectures[0]` (the base model of `model_type` when the config names
    none), and it must be one of transformers' own AutoModel classes: no other name is looked up.
  * Weights come from `model.safetensors`, or `model.safetensors.index.json` and the shards it names
    (plain file names inside the folder), read with safetensors only. A folder holding only
    `pytorch_model.bin` (or its index) is refused without --trust-checkpoint; with it those files are read
    with torch.load(weights_only=True). Weights are handed to transformers' `from_pretrained(None,
    state_dict=...)` (in float32) so that its renaming of old checkpoint keys and its weight tying apply,
    then checked strictly: a missing, unexpected or wrongly shaped key is an error naming it (a weight
    tied to one that is present is not missing).
  * Example inputs come from the config, keyed by the forward's parameter names:
        pixel_values      (1, num_channels, image_size, image_size) float  (image_size 224 when absent)
        input_ids         (1, min(max_position_embeddings, 128)) int64 in [0, vocab_size)
        attention_mask    the shape of input_ids, int64 0/1 (when the forward takes it)
        input_features    (1, num_mel_bins, 2 * max_source_positions) float  (Whisper)
        decoder_input_ids (1, 1) int64 in [0, vocab_size)  (encoder-decoder models: one decoder step)
    `--input-shape NAME=SHAPE[:dtype]` sets the input NAME (a parameter of the forward); an unnamed one
    replaces the default inputs in order; without a dtype an input keeps its default dtype; attention_mask
    follows input_ids' shape unless set itself.
  * The model is wrapped so that forward(<those names>) returns one tensor: the output's `logits`, else its
    `last_hidden_state`, else its first element. It is exported by hwact.ir.graph.trace (dynamic batch)
    with transformers' default attention; if that export fails, once more with eager attention.
Every failure a user can cause (bad JSON, unknown architecture, missing or mismatched weights) raises
InputError, one line, exit 2.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import logging
import os
import re
import warnings
from pathlib import Path

import torch

from hwact.errors import InputError
from hwact.ir.graph import InputSpec, first_line

CONFIG = "config.json"
SAFETENSORS, SAFETENSORS_INDEX = "model.safetensors", "model.safetensors.index.json"
PICKLE, PICKLE_INDEX = "pytorch_model.bin", "pytorch_model.bin.index.json"
MAX_SEQUENCE = 128
DEFAULT_IMAGE = 224
_NAMED_SHAPE = re.compile(r"\s*([A-Za-z_]\w*)=")
_SHOWN_KEYS = 3


def is_model_folder(path: Path) -> bool:
    """A directory with a config.json: a Hugging Face model folder for `hwact.load.load`."""
    return path.is_dir() and (path / CONFIG).exists()


def load_folder(path: Path, input_shapes: tuple[str, ...], trust: bool):
    """The folder's model as a hwact.load.Loaded (format "hf-folder"); see the module docstring.

    Its sha256 is that of the lines '<file name> <sha256 of the file>' of config.json and the weight files."""
    from hwact.load import _from_module, read_json

    transformers = _transformers(path)
    source = str(path)
    raw = read_json(path / CONFIG)
    if "auto_map" in raw:
        raise InputError(f"{path / CONFIG}: names custom model code (auto_map: "
                         f"{', '.join(map(str, raw['auto_map']))[:120]}); hwact never runs code from a model folder",
                         hint="use a model whose architecture transformers ships")
    config = _config(transformers, path, raw)
    model_class = _model_class(transformers, config, path)
    state, files = _read_weights(path, trust)
    model = _build(model_class, config, state, path)
    names, specs = _example_inputs(model, config, input_shapes, path)
    wrapped = _wrap(model, names)
    digest = _digest(path, [CONFIG, *files])
    try:
        return _from_module(wrapped, specs, source, "hf-folder", digest)
    except InputError as first:
        if getattr(model.config, "_attn_implementation", "eager") == "eager":
            raise
        try:  # some attention implementations do not export; eager attention is plain matmul/softmax
            model.set_attn_implementation("eager")
            return _from_module(wrapped, specs, source, "hf-folder", digest)
        except Exception:
            raise first from None


# ---------------------------------------------------------------------------------------------- config
def _transformers(path: Path):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")   # no hub access at run time, ever
    try:
        import transformers
    except ImportError:
        raise InputError(f"{path}: a Hugging Face model folder needs the transformers package",
                         hint="pip install 'hwact[hf]'") from None
    return transformers


@contextlib.contextmanager
def _quiet_transformers(transformers):
    """transformers' load report, warnings and progress bars: hwact reports problems itself, in one line."""
    log = logging.getLogger("transformers")
    level, bars = log.level, transformers.utils.logging.is_progress_bar_enabled()
    log.setLevel(logging.CRITICAL)
    transformers.utils.logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        log.setLevel(level)
        if bars:
            transformers.utils.logging.enable_progress_bar()


def _config(transformers, path: Path, raw: dict):
    model_type = raw.get("model_type")
    if not isinstance(model_type, str) or not model_type:
        raise InputError(f"{path / CONFIG}: no model_type", hint="a config.json written by save_pretrained names one")
    if model_type not in transformers.CONFIG_MAPPING:
        raise InputError(f"{path / CONFIG}: model_type '{model_type[:60]}' is not an architecture transformers "
                         f"{transformers.__version__} knows", hint="upgrade transformers, or export a .pt2 instead")
    try:
        with _quiet_transformers(transformers):
            return transformers.AutoConfig.from_pretrained(str(path), local_files_only=True, trust_remote_code=False)
    except Exception as exc:
        raise InputError(f"{path / CONFIG}: transformers cannot read this config ({first_line(exc)})") from None


def _known_model_classes(transformers) -> set[str]:
    """The class names of every AutoModel mapping of this transformers (the only names looked up)."""
    from transformers.models.auto import modeling_auto

    known: set[str] = set()
    for attribute, mapping in vars(modeling_auto).items():
        if attribute.startswith("MODEL") and attribute.endswith("MAPPING_NAMES") and isinstance(mapping, dict):
            for value in mapping.values():
                known.update([value] if isinstance(value, str) else [v for v in value if isinstance(v, str)])
    return known


def _model_class(transformers, config, path: Path):
    from transformers.models.auto.modeling_auto import MODEL_MAPPING_NAMES

    architectures = getattr(config, "architectures", None) or []
    if architectures and not (isinstance(architectures, list) and isinstance(architectures[0], str)):
        raise InputError(f"{path / CONFIG}: 'architectures' is not a list of class names")
    name = architectures[0] if architectures else MODEL_MAPPING_NAMES.get(config.model_type)
    if not isinstance(name, str) or name not in _known_model_classes(transformers):
        raise InputError(f"{path / CONFIG}: architecture '{str(name)[:80]}' is not a model class transformers "
                         f"{transformers.__version__} knows", hint="hwact never runs code from a model folder; "
                         "upgrade transformers or export a .pt2 instead")
    model_class = getattr(transformers, name, None)
    if not (isinstance(model_class, type) and issubclass(model_class, transformers.PreTrainedModel)):
        raise InputError(f"{path / CONFIG}: architecture '{name}' is not available in this transformers install")
    return model_class


# ---------------------------------------------------------------------------------------------- weights
def _read_weights(path: Path, trust: bool) -> tuple[dict, list[str]]:
    """(state dict, the weight files read) from the folder; see the module docstring for the order."""
    if (path / SAFETENSORS).exists():
        return _read_safetensors(path / SAFETENSORS), [SAFETENSORS]
    if (path / SAFETENSORS_INDEX).exists():
        return _read_sharded(path, SAFETENSORS_INDEX, _read_safetensors)
    pickled = [name for name in (PICKLE, PICKLE_INDEX) if (path / name).exists()]
    if not pickled:
        raise InputError(f"{path}: no weights ({SAFETENSORS} or {SAFETENSORS_INDEX})",
                         hint="save the model with save_pretrained (safetensors is its default)")
    if not trust:
        raise InputError(f"{path}: holds {pickled[0]} only (a torch.save pickle), so it is refused",
                         hint="re-save with save_pretrained(safe_serialization=True), or pass --trust-checkpoint "
                         "to read it with torch.load(weights_only=True)")
    if pickled[0] == PICKLE:
        return _read_pickle(path / PICKLE), [PICKLE]
    return _read_sharded(path, PICKLE_INDEX, _read_pickle)


def _regular_file(file: Path) -> None:
    if not file.is_file():  # a FIFO would block the read
        raise InputError(f"{file}: {'no such file' if not file.exists() else 'not a regular file'}")


def _read_safetensors(file: Path) -> dict:
    from safetensors.torch import load_file

    _regular_file(file)
    try:
        return load_file(str(file))
    except Exception as exc:
        raise InputError(f"{file}: corrupt or truncated safetensors file ({first_line(exc)})") from None


def _read_pickle(file: Path) -> dict:
    _regular_file(file)
    try:
        state = torch.load(str(file), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise InputError(f"{file}: not a plain state_dict (torch.load with weights_only=True: "
                         f"{first_line(exc)})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InputError(f"{file}: not a state_dict (expected a dict of name -> tensor)")
    return state


def _read_sharded(path: Path, index_name: str, read) -> tuple[dict, list[str]]:
    """Every shard the index names (each a plain file name in the folder), checked against its weight_map."""
    from hwact.load import read_json

    weight_map = read_json(path / index_name).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()):
        raise InputError(f"{path / index_name}: no 'weight_map' of key -> shard file name")
    shards = sorted(set(weight_map.values()))
    for shard in shards:
        if Path(shard).name != shard or shard in (".", ".."):
            raise InputError(f"{path / index_name}: shard '{shard[:80]}' is not a file name inside the folder")
    state: dict = {}
    for shard in shards:
        part = read(path / shard)
        listed = {k for k, v in weight_map.items() if v == shard}
        if set(part) != listed:
            odd = sorted(set(part) ^ listed)
            raise InputError(f"{path / shard}: its keys differ from {index_name} (e.g. {odd[0]})")
        state.update(part)
    return state, [index_name, *shards]


def _build(model_class, config, state: dict, path: Path) -> torch.nn.Module:
    """The model with `state` loaded by transformers (key renames, tying), refused unless every key fits."""
    import transformers

    kinds = sorted(k for k, v in state.items() if v.is_complex())
    if kinds:
        raise InputError(f"{path}: weight {kinds[0]} holds complex numbers")
    try:
        with _quiet_transformers(transformers):
            model, info = model_class.from_pretrained(None, config=config, state_dict=state, dtype=torch.float32,
                                                      output_loading_info=True, ignore_mismatched_sizes=True,
                                                      local_files_only=True)
    except Exception as exc:
        raise InputError(f"{path}: transformers could not build {model_class.__name__} from these weights "
                         f"({first_line(exc)})") from None
    problems = []
    for label, keys in (("missing", info.get("missing_keys")), ("unexpected", info.get("unexpected_keys"))):
        keys = sorted(map(str, keys or ()))
        if keys:
            problems.append(f"{len(keys)} {label} ({', '.join(keys[:_SHOWN_KEYS])}{', ...' if len(keys) > _SHOWN_KEYS else ''})")
    mismatched = sorted(info.get("mismatched_keys") or (), key=str)
    if mismatched:
        first = mismatched[0]
        shown = (f"{first[0]}: {tuple(first[1])} in the file, {tuple(first[2])} in the model"
                 if isinstance(first, tuple) and len(first) == 3 else str(first))
        problems.append(f"{len(mismatched)} with the wrong shape (e.g. {shown})")
    if info.get("error_msgs"):
        problems.append(str(info["error_msgs"][0]).strip().split("\n")[0][:200])
    if problems:
        raise InputError(f"{path}: weights do not match {model_class.__name__}: " + "; ".join(problems),
                         hint="the weights were saved from a different architecture or config")
    return model.float().eval()


# ---------------------------------------------------------------------------------------------- inputs
def _example_inputs(model, config, input_shapes: tuple[str, ...], path: Path) -> tuple[list[str], list[InputSpec]]:
    """Input names (the forward's, in its order) and shapes; see the module docstring."""
    from hwact.load import parse_input_shape

    parameters = list(inspect.signature(model.forward).parameters)
    defaults = _default_inputs(config, parameters)
    by_name = {spec.name: spec for spec in defaults}
    explicit: set[str] = set()
    unnamed = iter(defaults)
    for i, text in enumerate(input_shapes):
        named = _NAMED_SHAPE.match(text)
        spec = parse_input_shape(text, i)
        if named is None:
            target = next(unnamed, None)
            if target is None:
                raise InputError(f"--input-shape {text}: more unnamed shapes than the {len(defaults)} inputs hwact "
                                 f"gives {type(model).__name__} ({', '.join(d.name for d in defaults) or 'none'})",
                                 hint="name it: NAME=SHAPE, NAME a parameter of the model's forward")
            name = target.name
        else:
            name = named.group(1)
            if name not in parameters:
                known = [p for p in parameters if p not in ("self", "kwargs", "args")]
                raise InputError(f"--input-shape {text}: {type(model).__name__}.forward takes no '{name}'",
                                 hint="its inputs: " + ", ".join(known[:12]))
        default = by_name.get(name)
        dtype = spec.dtype if ":" in text or default is None else default.dtype
        high = None if dtype.is_floating_point else (default.high if default and default.high else 2)
        by_name[name] = InputSpec(name, spec.shape, dtype, high)
        explicit.add(name)
    if "input_ids" in explicit and "attention_mask" in by_name and "attention_mask" not in explicit:
        by_name["attention_mask"] = InputSpec("attention_mask", by_name["input_ids"].shape, torch.int64, 2)
    if not by_name:
        raise InputError(f"{path}: cannot tell the inputs of {type(model).__name__} from its config",
                         hint="pass --input-shape NAME=SHAPE[:dtype] for each input of its forward")
    names = [p for p in parameters if p in by_name]
    return names, [by_name[n] for n in names]


def _default_inputs(config, parameters: list[str]) -> list[InputSpec]:
    specs = []
    if "pixel_values" in parameters:
        size = getattr(config, "image_size", None) or DEFAULT_IMAGE
        height, width = (size, size) if isinstance(size, int) else tuple(size)[:2]
        specs.append(InputSpec("pixel_values", (1, getattr(config, "num_channels", 3) or 3, int(height), int(width))))
    if "input_ids" in parameters:
        positions = next((getattr(config, a) for a in ("max_position_embeddings", "n_positions", "max_seq_len")
                          if isinstance(getattr(config, a, None), int)), MAX_SEQUENCE)
        sequence = (1, max(1, min(positions, MAX_SEQUENCE)))
        specs.append(InputSpec("input_ids", sequence, torch.int64, int(getattr(config, "vocab_size", 2) or 2)))
        if "attention_mask" in parameters:
            specs.append(InputSpec("attention_mask", sequence, torch.int64, 2))
    if "input_features" in parameters and getattr(config, "num_mel_bins", None):
        frames = 2 * int(getattr(config, "max_source_positions", 1500))
        specs.append(InputSpec("input_features", (1, int(config.num_mel_bins), frames)))
    if specs and "decoder_input_ids" in parameters and getattr(config, "is_encoder_decoder", False):
        specs.append(InputSpec("decoder_input_ids", (1, 1), torch.int64, int(getattr(config, "vocab_size", 2) or 2)))
    return specs


# ---------------------------------------------------------------------------------------------- wrapper
class HFLogits(torch.nn.Module):
    """forward(<input names>) -> the model's logits (else last_hidden_state, else its first output)."""

    def __init__(self, model: torch.nn.Module, names: list[str]):
        super().__init__()
        self.model = model
        self.names = tuple(names)

    def forward(self, *inputs):
        output = self.model(**dict(zip(self.names, inputs)))
        for field in ("logits", "last_hidden_state"):
            value = getattr(output, field, None)
            if isinstance(value, torch.Tensor):
                return value
        return output if isinstance(output, torch.Tensor) else output[0]


def _wrap(model: torch.nn.Module, names: list[str]) -> torch.nn.Module:
    """An HFLogits whose forward's signature lists `names` (torch.export names its inputs after it)."""
    def forward(self, *inputs):
        return HFLogits.forward(self, *inputs)

    forward.__signature__ = inspect.Signature(
        [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
        + [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD) for n in names])
    named = type(f"{type(model).__name__}Logits", (HFLogits,), {"forward": forward})
    return named(model, names).eval()


def _digest(path: Path, files: list[str]) -> str:
    lines = []
    for name in files:
        sha = hashlib.sha256()
        with (path / name).open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                sha.update(block)
        lines.append(f"{name} {sha.hexdigest()}\n")
    return hashlib.sha256("".join(lines).encode()).hexdigest()
