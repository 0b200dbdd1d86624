"""Convolutional nets with BatchNorm and ReLU: a small VGG-style CNN and ResNet-18 (He et al.)."""

from __future__ import annotations

import torch.nn as nn


def conv_bn_relu(cin, cout, stride=1, bias=False):
    return [nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=bias), nn.BatchNorm2d(cout), nn.ReLU()]


class SmallCNN(nn.Module):
    def __init__(self, in_chans=3, num_classes=10, widths=(16, 32, 64)):
        super().__init__()
        layers, cin = [], in_chans
        for i, w in enumerate(widths):
            layers += conv_bn_relu(cin, w, stride=1 if i == 0 else 2, bias=(i == 0))
            cin = w
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(cin, num_classes)
        self.head_norm = nn.BatchNorm1d(num_classes)

    def forward(self, x):
        return self.head_norm(self.head(self.features(x).mean(dim=(2, 3))))


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x))))) + identity)


class ResNet(nn.Module):
    def __init__(self, in_chans=3, num_classes=1000, widths=(64, 128, 256, 512), blocks=(2, 2, 2, 2)):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_chans, widths[0], 7, 2, 3, bias=False), nn.BatchNorm2d(widths[0]),
                                  nn.ReLU(), nn.MaxPool2d(3, 2, 1))
        layers, cin = [], widths[0]
        for i, (w, n) in enumerate(zip(widths, blocks)):
            for j in range(n):
                layers.append(BasicBlock(cin, w, 2 if (j == 0 and i > 0) else 1))
                cin = w
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        return self.fc(self.layers(self.stem(x)).mean(dim=(2, 3)))
