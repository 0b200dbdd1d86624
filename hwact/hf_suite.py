"""A public suite of Hugging Face architectures, small configs, for testing lowering on models hwact did not write.

Each entry builds a `transformers` model from a small config with random weights initialised the way a
trained model's activations look (not transformers' 0.02-std init, which makes every layer near zero):

    linear / conv / embedding   PyTorch's default init (reset_parameters)
    LayerNorm / GroupNorm       weight 1 + 0.2·N(0,1), bias 0.2·N(0,1)
    BatchNorm                   weight 1 + 0.2·N(0,1), bias 0.2·N(0,1), running mean 0.2·N(0,1),
                                running var U(0.5, 2)
    other parameters            (position tables, class tokens) 0.2·N(0,1)

wrapped so that forward returns the logits tensor, with example inputs (token ids in [0, vocab), an
attention mask with padded tails, images N(0,1)). `transformers` is the optional extra `hwact[hf]`.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable

import torch

SEQUENCE = 16
IMAGE = 32


@dataclass(frozen=True)
class Entry:
    name: str
    build: Callable[[], torch.nn.Module]      # the transformers model, eval mode, realistic init
    inputs: Callable[[int, torch.Generator], tuple]   # example inputs for a batch size
    input_names: tuple[str, ...]


class Logits(torch.nn.Module):
    """forward(<the model's input names>) -> model(**inputs).logits (or last_hidden_state)."""

    def __init__(self, model: torch.nn.Module, input_names: tuple[str, ...]):
        super().__init__()
        self.model = model
        self.input_names = input_names

    def forward(self, *inputs):
        output = self.model(**dict(zip(self.input_names, inputs)))
        return output.logits if hasattr(output, "logits") else output.last_hidden_state


def _named(input_names: tuple[str, ...]) -> type:
    """A Logits subclass whose forward's signature names the inputs (torch.export names placeholders so)."""
    def forward(self, *inputs):
        return Logits.forward(self, *inputs)
    forward.__signature__ = inspect.Signature(
        [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
        + [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD) for n in input_names])
    return type("Logits_" + "_".join(input_names), (Logits,), {"forward": forward})


def realistic_init(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """The init of the module docstring, seeded."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Embedding)):
                module.reset_parameters()
            elif isinstance(module, (torch.nn.LayerNorm, torch.nn.GroupNorm, torch.nn.BatchNorm1d,
                                     torch.nn.BatchNorm2d)) and getattr(module, "weight", None) is not None:
                module.weight.copy_(1 + 0.2 * torch.randn(module.weight.shape, generator=generator))
                module.bias.copy_(0.2 * torch.randn(module.bias.shape, generator=generator))
                if isinstance(module, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                    module.running_mean.copy_(0.2 * torch.randn(module.running_mean.shape, generator=generator))
                    module.running_var.copy_(0.5 + 1.5 * torch.rand(module.running_var.shape, generator=generator))
        seen = {id(p) for m in model.modules()
                if isinstance(m, (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Embedding,
                                  torch.nn.LayerNorm, torch.nn.GroupNorm, torch.nn.BatchNorm1d, torch.nn.BatchNorm2d))
                for p in m.parameters(recurse=False)}
        for parameter in model.parameters():
            if id(parameter) not in seen:
                parameter.copy_(0.2 * torch.randn(parameter.shape, generator=generator))
    return model.eval()


def _images(channels: int = 3, size: int = IMAGE):
    return lambda n, g: (torch.randn(n, channels, size, size, generator=g),)


def _tokens(vocab: int, with_mask: bool):
    def make(n, g):
        ids = torch.randint(0, vocab, (n, SEQUENCE), generator=g)
        if not with_mask:
            return (ids,)
        lengths = torch.randint(SEQUENCE // 2, SEQUENCE + 1, (n,), generator=g)
        mask = (torch.arange(SEQUENCE)[None, :] < lengths[:, None]).to(torch.int64)
        return ids, mask
    return make


def _entries() -> dict[str, Entry]:
    import transformers as T

    vit_like = dict(image_size=IMAGE, patch_size=8, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                    intermediate_size=128, num_labels=10)
    text = dict(vocab_size=500, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                num_labels=3, max_position_embeddings=64)
    table = [
        ("vit", lambda: T.ViTForImageClassification(T.ViTConfig(**vit_like)), _images(), ("pixel_values",)),
        ("deit", lambda: T.DeiTForImageClassification(T.DeiTConfig(**vit_like)), _images(), ("pixel_values",)),
        ("swin", lambda: T.SwinForImageClassification(T.SwinConfig(
            image_size=IMAGE, patch_size=4, embed_dim=32, depths=[1, 1], num_heads=[2, 4], window_size=4,
            num_labels=10)), _images(), ("pixel_values",)),
        ("convnext", lambda: T.ConvNextForImageClassification(T.ConvNextConfig(
            hidden_sizes=[16, 32], depths=[1, 1], num_stages=2, num_labels=10, image_size=IMAGE)), _images(),
         ("pixel_values",)),
        ("resnet", lambda: T.ResNetForImageClassification(T.ResNetConfig(
            embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1], layer_type="bottleneck", num_labels=10)),
         _images(), ("pixel_values",)),
        ("mobilenet_v2", lambda: T.MobileNetV2ForImageClassification(T.MobileNetV2Config(
            image_size=IMAGE, depth_multiplier=0.35, num_labels=10)), _images(), ("pixel_values",)),
        ("efficientnet", lambda: T.EfficientNetForImageClassification(T.EfficientNetConfig(
            image_size=IMAGE, width_coefficient=0.25, depth_coefficient=0.25, hidden_dim=320, num_labels=10)), _images(),
         ("pixel_values",)),
        ("bert", lambda: T.BertForSequenceClassification(T.BertConfig(**text)), _tokens(500, True),
         ("input_ids", "attention_mask")),
        ("distilbert", lambda: T.DistilBertForSequenceClassification(T.DistilBertConfig(
            vocab_size=500, dim=64, n_layers=2, n_heads=4, hidden_dim=128, num_labels=3,
            max_position_embeddings=64)), _tokens(500, False), ("input_ids",)),
        ("gpt2", lambda: T.GPT2LMHeadModel(T.GPT2Config(vocab_size=500, n_positions=64, n_embd=64, n_layer=2, bos_token_id=0, eos_token_id=0,
                                                        n_head=4)), _tokens(500, False), ("input_ids",)),
        ("whisper_encoder", lambda: T.WhisperForAudioClassification(T.WhisperConfig(
            num_mel_bins=16, d_model=64, encoder_layers=2, encoder_attention_heads=4, encoder_ffn_dim=128,
            max_source_positions=16, num_labels=5)),
         lambda n, g: (torch.randn(n, 16, 32, generator=g),), ("input_features",)),
    ]
    return {name: Entry(name, build, inputs, names) for name, build, inputs, names in table}


def names() -> list[str]:
    return list(_entries())


def build(name: str, seed: int = 0) -> tuple[torch.nn.Module, Entry]:
    """The wrapped model (forward returns logits) and its entry."""
    entry = _entries()[name]
    torch.manual_seed(seed)
    model = realistic_init(entry.build(), seed)
    return _named(entry.input_names)(model, entry.input_names).eval(), entry


def export(name: str, seed: int = 0, batch: int = 2) -> torch.export.ExportedProgram:
    """torch.export of the wrapped model with a dynamic batch dimension."""
    model, entry = build(name, seed)
    inputs = entry.inputs(batch, torch.Generator().manual_seed(seed))
    dim = torch.export.Dim("batch", min=1, max=1024)
    return torch.export.export(model, inputs, dynamic_shapes=tuple({0: dim} for _ in inputs))


def save_inputs(name: str, path, samples: int, seed: int) -> dict:
    """An .npz of `samples` inputs from the entry's generator, arrays named after the model's inputs
    (what `hwact convert --calib` reads); returns the arrays."""
    import numpy as np

    entry = _entries()[name]
    values = entry.inputs(samples, torch.Generator().manual_seed(seed))
    arrays = {key: value.numpy() for key, value in zip(entry.input_names, values)}
    np.savez(path, **arrays)
    return arrays


def agreement(reference, candidate) -> dict:
    """Cosine similarity of the flattened outputs and top-1 agreement over the last (class) axis."""
    reference = torch.as_tensor(reference, dtype=torch.float64)
    candidate = torch.as_tensor(candidate, dtype=torch.float64)
    cosine = torch.nn.functional.cosine_similarity(reference.flatten(), candidate.flatten(), dim=0)
    top1 = (reference.argmax(-1) == candidate.argmax(-1)).double().mean()
    return {"cosine": float(cosine), "top1": float(top1)}


def reference_outputs(pt2_path, recipe: str, arrays: dict):
    """The float model's outputs on `arrays`: the .pt2 as exported, after gelu-to-relu for int8-relu (the
    recipe's integer model is compared with the float model after the same GELU -> ReLU swap)."""
    from hwact.load import load
    from hwact.passes.base import make_pass

    graph = load(str(pt2_path)).graph
    if recipe == "int8-relu":
        graph, _ = make_pass("gelu-to-relu", {})(graph)
    with torch.no_grad():
        return graph(*(torch.from_numpy(arrays[spec.name]) for spec in graph.inputs))


def onnx_outputs(onnx_path, arrays: dict):
    import onnxruntime

    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    feeds = {i.name: arrays[i.name] for i in session.get_inputs()}
    return session.run(None, feeds)[0]


def save_files(name: str, folder, calibration: int = 16, held_out: int = 0) -> tuple:
    """Export `name` into folder/<name>.pt2 and write its calibration .npz (seed 0); with held_out > 0 also
    held-out inputs (seed 1). Returns (pt2 path, calibration path, held-out arrays or None)."""
    from pathlib import Path

    folder = Path(folder)
    pt2, calib = folder / f"{name}.pt2", folder / f"{name}_calib.npz"
    torch.export.save(export(name), pt2)
    save_inputs(name, calib, samples=calibration, seed=0)
    arrays = save_inputs(name, folder / f"{name}_held_out.npz", samples=held_out, seed=1) if held_out else None
    return pt2, calib, arrays
