"""Networks timed by the benchmarks (no torchvision needed)."""

import torch
from torch import nn


def mlp() -> nn.Module:
    """MLP 784-256-256-10 (p = 269 322)."""
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(784, 256),
        nn.ReLU(),
        nn.Linear(256, 256),
        nn.ReLU(),
        nn.Linear(256, 10),
    )


def cnn() -> nn.Module:
    """Conv 32/64 3x3 on 1x28x28, global average pool, linear head (p = 19 466)."""
    return nn.Sequential(
        nn.Conv2d(1, 32, 3),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(64, 10),
    )


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet(nn.Module):
    """A CIFAR-style ResNet: ``widths`` per stage, ``blocks`` BasicBlocks each."""

    def __init__(self, widths=(16, 32, 64), blocks=(1, 1, 1), n_classes=10, c_in=3):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(c_in, widths[0], 3, 1, 1, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(),
        )
        layers, c = [], widths[0]
        for i, (w, b) in enumerate(zip(widths, blocks, strict=True)):
            for j in range(b):
                layers.append(BasicBlock(c, w, 2 if (j == 0 and i > 0) else 1))
                c = w
        self.layers = nn.Sequential(*layers)
        self.head = nn.Linear(c, n_classes)

    def forward(self, x):
        return self.head(self.layers(self.stem(x)).mean(dim=(2, 3)))


def small_resnet() -> nn.Module:
    """ResNet-8 style (16/32/64 channels, BatchNorm) for 3x16x16 inputs."""
    return ResNet()


def resnet18() -> nn.Module:
    """ResNet-18 (64/128/256/512, 2 blocks per stage) for 3x32x32 inputs."""
    return ResNet(widths=(64, 128, 256, 512), blocks=(2, 2, 2, 2))


def with_running_statistics(module: nn.Module, X: torch.Tensor) -> nn.Module:
    """Give BatchNorm layers running statistics from a pass over X, then eval."""
    module.train()
    with torch.no_grad():
        module(X[:256])
    return module.eval()


class _Logits(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, pixel_values):
        return self.model(pixel_values=pixel_values).logits


def transformers_resnet18(n_classes: int = 10) -> nn.Module:
    """ResNet-18 (basic blocks 2-2-2-2, 64-512 channels) from a ``transformers``
    config, returning its logits (p = 11.2 M)."""
    from transformers import ResNetConfig, ResNetForImageClassification

    config = ResNetConfig(
        layer_type="basic",
        depths=[2, 2, 2, 2],
        hidden_sizes=[64, 128, 256, 512],
        num_labels=n_classes,
    )
    return _Logits(ResNetForImageClassification(config))
