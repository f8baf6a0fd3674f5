"""The emotion CNN: a VGG-style backbone sized for 40x40 grayscale faces, one linear head per label set."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F


@dataclass
class ModelConfig:
    widths: tuple[int, ...] = (32, 64, 128, 256)  # channels per stage; each stage halves the resolution
    convs_per_stage: tuple[int, ...] = (1, 2, 2, 2)  # one conv at full resolution keeps the stem cheap
    dropout: float = 0.3
    in_channels: int = 1


def conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class EmotionNet(nn.Module):
    def __init__(self, heads: dict[str, int], config: ModelConfig | None = None):
        super().__init__()
        self.config = config or ModelConfig()
        layers: list[nn.Module] = []
        cin = self.config.in_channels
        for width, n_convs in zip(self.config.widths, self.config.convs_per_stage, strict=True):
            for _ in range(n_convs):
                layers.append(conv_bn_relu(cin, width))
                cin = width
            layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.dropout = nn.Dropout(self.config.dropout)
        self.heads = nn.ModuleDict({name: nn.Linear(cin, k) for name, k in heads.items()})

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(torch.flatten(F.adaptive_avg_pool2d(self.features(x), 1), 1))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        z = self.embed(x)
        return {name: head(z) for name, head in self.heads.items()}


class ExportWrapper(nn.Module):
    """What goes into the ONNX file: raw normalised input -> one head's softmax, flip-averaged if `tta`."""

    def __init__(self, net: EmotionNet, head: str, tta: bool = True):
        super().__init__()
        self.net, self.head, self.tta = net, head, tta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs = F.softmax(self.net(x)[self.head], dim=1)
        if self.tta:
            probs = 0.5 * (probs + F.softmax(self.net(torch.flip(x, dims=[3]))[self.head], dim=1))
        return probs
