"""Build a .tosa flatbuffer from hwact's neutral description, with the tosa-tools serializer.

Run by hwact (hwact/backends/tosa_tools.py) with the Python of the TOSA environment (.venv-tosa: tosa-tools
pins numpy < 2.2, which the main environment must not get), never imported by hwact itself:

    python serialize.py DESCRIPTION.json CONSTANTS.npz OUT.tosa NAMES.json

DESCRIPTION.json (written by hwact/backends/tosa_lower.py) decides everything; this script only maps it
onto the serializer's calls:

    {"format": "hwact-tosa-description", "version": 1,
     "tensors": [{"name": "conv_1_acc", "shape": [1, 8, 8, 16], "dtype": "INT32"}, ...],
     "consts":  [{"name": "conv_1_w", "dtype": "INT8", "key": "conv_1_w"}, ...],   # values in CONSTANTS.npz
     "inputs":  ["quantize"],  "outputs": ["requantize_3"],
     "ops": [{"op": "CONV2D", "inputs": [...], "outputs": [...],
              "attr": ["Conv2dAttribute", [[1, 1, 1, 1], [1, 1], [1, 1], false, {"DType": "INT32"}]]}, ...]}

An attribute argument {"DType": "INT32"} / {"RoundingMode": ...} / {"NanPropagationMode": ...} is that
enum member of the serializer. The serializer names tensors itself (input-0, layer-3, ...); NAMES.json
gives the names of the inputs and outputs, in order, for the reference model run, and maps every
serializer name back to hwact's tensor name (Vela's per-layer report uses the serializer's).
"""

import json
import sys

import numpy as np
import tosa_serializer as ts

ENUMS = {"DType": ts.DType, "RoundingMode": ts.RoundingMode, "NanPropagationMode": ts.NanPropagationMode}
ATTRIBUTES = {"Conv2dAttribute", "DepthwiseConv2dAttribute", "MatMulAttribute", "MaxPool2dAttribute",
              "ReduceSumAttribute", "TransposeAttribute", "ConcatAttribute", "TableAttribute", "AddAttribute",
              "SubAttribute", "MulAttribute", "SliceAttribute", "TileAttribute", "ReshapeAttribute",
              "RescaleAttribute", "ClampAttribute", "IdentityAttribute", "ReduceMaxAttribute", "PadAttribute",
              "ClzAttribute", "LogicalLeftShiftAttribute", "ArithmeticRightShiftAttribute", "MaximumAttribute",
              "MinimumAttribute", "ReduceMinAttribute"}


def decode(value):
    if isinstance(value, dict):
        (kind, member), = value.items()
        return ENUMS[kind].__members__[member]
    if isinstance(value, list):
        return [decode(v) for v in value]
    return value


def main(description_path, constants_path, out_path, names_path):
    description = json.loads(open(description_path).read())
    if description.get("format") != "hwact-tosa-description" or description.get("version") != 1:
        raise SystemExit(f"{description_path}: not an hwact TOSA description (version 1)")
    constants = np.load(constants_path, allow_pickle=False)
    ser = ts.TosaSerializer("", targetMajor=1, targetMinor=0, targetPatch=0, targetDraft=False)
    names = {}                                   # hwact name -> serializer tensor
    shapes = {t["name"]: t for t in description["tensors"]}
    for name in description["inputs"]:
        names[name] = ser.addPlaceholder(shapes[name]["shape"], ts.DType.__members__[shapes[name]["dtype"]])
    for const in description["consts"]:
        values = constants[const["key"]]
        if const["dtype"] == "SHAPE":
            names[const["name"]] = ser.addConst([len(values)], ts.DType.SHAPE, values.astype(np.int64).tolist(),
                                                name=const["name"])
        else:
            names[const["name"]] = ser.addConst(list(values.shape), ts.DType.__members__[const["dtype"]], values,
                                                name=const["name"])
    for tensor in description["tensors"]:
        if tensor["name"] not in names:
            names[tensor["name"]] = ser.addIntermediate(tensor["shape"], ts.DType.__members__[tensor["dtype"]])
    for op in description["ops"]:
        kind, args = op["attr"]
        if kind not in ATTRIBUTES:
            raise SystemExit(f"{description_path}: attribute {kind!r} is not one this script builds")
        attribute = ts.TosaSerializerAttribute()
        getattr(attribute, kind)(*decode(args))
        ser.addOperator(ts.Op.__members__[op["op"]], [names[n].name for n in op["inputs"]],
                        [names[n].name for n in op["outputs"]], attribute)
    for name in description["outputs"]:
        ser.addOutputTensor(names[name])
    with open(out_path, "wb") as handle:
        handle.write(ser.serialize())
    with open(names_path, "w") as handle:
        json.dump({"inputs": [names[n].name for n in description["inputs"]],
                   "outputs": [names[n].name for n in description["outputs"]],
                   "tensors": {names[t["name"]].name: t["name"] for t in description["tensors"]}}, handle)


if __name__ == "__main__":
    main(*sys.argv[1:5])
