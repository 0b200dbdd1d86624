"""Write a single-file ONNX model without holding a second copy of its weights in memory.

`ONNXProgram.save` builds the whole ModelProto (every weight copied into it) and then its serialized
bytes: about three copies of the weights at peak. Instead we save with external data (the exporter
streams each tensor to a side file) and then splice the tensors back into one protobuf file, one
tensor at a time. This relies on two protobuf facts: fields may appear in any order, and a repeated
message field is a sequence of `tag, length, bytes` entries. So the file is

    <ModelProto without graph> 0x3A <len(graph)> <GraphProto without initializers> (0x2A <len(t)> <t>)*

where 0x3A is field 7 (ModelProto.graph) and 0x2A field 5 (GraphProto.initializer), both length-delimited.
"""

from __future__ import annotations

from pathlib import Path

import onnx
from onnx.external_data_helper import ExternalDataInfo

_MODEL_GRAPH_TAG = b"\x3a"        # field 7, wire type 2
_GRAPH_INITIALIZER_TAG = b"\x2a"  # field 5, wire type 2


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _inline(tensor: onnx.TensorProto, data_dir: Path) -> bytes:
    """The serialized tensor with its external bytes read back in as raw_data."""
    if tensor.data_location != onnx.TensorProto.EXTERNAL:
        return tensor.SerializeToString()
    info = ExternalDataInfo(tensor)
    with open(data_dir / info.location, "rb") as f:
        f.seek(info.offset or 0)
        raw = f.read(info.length) if info.length else f.read()
    inline = onnx.TensorProto()
    inline.CopyFrom(tensor)
    del inline.external_data[:]
    inline.data_location = onnx.TensorProto.DEFAULT
    inline.raw_data = raw
    return inline.SerializeToString()


def inline_external_data(model_path: Path, out_path: Path) -> None:
    """Rewrite `model_path` (whose tensors live in external files beside it) as one file `out_path`."""
    model = onnx.load(str(model_path), load_external_data=False)
    data_dir = Path(model_path).parent
    tensors = list(model.graph.initializer)
    del model.graph.initializer[:]
    graph_bytes = model.graph.SerializeToString()
    sizes = [len(_inline(t, data_dir)) for t in tensors]
    graph_len = len(graph_bytes) + sum(len(_GRAPH_INITIALIZER_TAG) + len(_varint(n)) + n for n in sizes)
    model.ClearField("graph")
    with open(out_path, "wb") as out:
        out.write(model.SerializeToString())
        out.write(_MODEL_GRAPH_TAG + _varint(graph_len) + graph_bytes)
        for tensor in tensors:
            data = _inline(tensor, data_dir)
            out.write(_GRAPH_INITIALIZER_TAG + _varint(len(data)) + data)
