"""The int8 recipes' preparation order: explicit-padding, then fold-bn, then canonicalize, so a conv1d with
string padding followed by a BatchNorm1d (audio front ends) folds and lowers integer-only."""

import json

import torch


class Conv1dBn(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv1d(4, 8, 3, padding="same")
        self.bn = torch.nn.BatchNorm1d(8)
        self.fc = torch.nn.Linear(8, 3)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.conv(x))).mean(-1))


def test_conv1d_same_then_batchnorm_lowers_integer_only(cli, tmp_path):
    torch.manual_seed(0)
    model = Conv1dBn().eval()
    model.bn.running_mean.normal_(0, 0.2)
    model.bn.running_var.uniform_(0.5, 2.0)
    batch = torch.export.Dim("batch", max=64)
    path = tmp_path / "conv1d.pt2"
    torch.export.save(torch.export.export(model, (torch.randn(2, 4, 16),), dynamic_shapes=({0: batch},)), path)
    for recipe in ("int8-relu", "int8-shiftgelu"):
        out = tmp_path / recipe
        code, _, stderr = cli("convert", path, "--recipe", recipe, "-o", out)
        assert code == 0, stderr
        report = json.loads((out / "report.json").read_text())
        folded = next(r for r in report["passes"] if r["name"] == "fold-bn")
        assert folded["changed"] == 1
        assert report["integer"]["float_nodes"] == [] and report["onnx"]["bit_exact"] is True
