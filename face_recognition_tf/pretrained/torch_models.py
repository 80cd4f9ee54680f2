"""arcface_torch's IR-ResNet and MobileFaceNet as PyTorch modules, to check a ``.pth`` import.

A state dict has no graph, so ``frtf import backbone.pth`` checks its result against PyTorch running the
same weights in these modules (when torch is installed; the import itself never needs it).  They follow
arcface_torch's published ``backbones/iresnet.py`` and ``mobilefacenet.py`` module for module: the same
state-dict keys, shapes and registration order (``load_state_dict(strict=True)`` works both ways), BN
eps 1e-5, MobileFaceNet's ``x.view(x.size(0), -1)`` flatten.  Written from the structure, not copied;
tests/test_torch_reference.py pins them to figures measured on the originals.
"""

from __future__ import annotations

import torch
from torch import nn

from face_recognition_tf.models.iresnet import IRESNET_LAYERS
from face_recognition_tf.models.mobilefacenet import MBF_BLOCKS, MBF_LARGE_BLOCKS

BN_EPS = 1e-5


# --------------------------------------------------------------------------------------------------
# IR-ResNet (arcface_torch backbones/iresnet.py)
# --------------------------------------------------------------------------------------------------

def _bn2d(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS)


class _IRBlock(nn.Module):
    """Pre-activation IR block: BN, 3x3 conv, BN, PReLU, 3x3 conv (carrying the stride), BN, + shortcut.

    Attribute order fixes the state-dict order: bn1, conv1, bn2, prelu, conv2, bn3, downsample.
    """

    def __init__(self, in_channels: int, channels: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.bn1 = _bn2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride=1, padding=1, bias=False)
        self.bn2 = _bn2d(channels)
        self.prelu = nn.PReLU(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn3 = _bn2d(channels)
        self.downsample = downsample  # None registers nothing, as in the original

    def forward(self, x):
        branch = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        shortcut = x if self.downsample is None else self.downsample(x)
        return branch + shortcut


class IResNet(nn.Module):
    """arcface_torch's IResNet with IBasicBlock.

    `width` (64 in every real model) scales the stem/stage widths (w, 2w, 4w, 8w) for tiny test models;
    `input_size` (112 in every real model) sets `fc_scale` = (input_size / 16) ** 2, the number of
    spatial positions the fc layer sees (7 * 7 for 112).  Key names do not depend on either.
    """

    def __init__(self, layers, num_features: int = 512, dropout: float = 0.0, *, width: int = 64,
                 input_size: int = 112, fc_scale: int | None = None):
        super().__init__()
        if input_size % 16:
            raise ValueError(f"input_size must be a multiple of 16 (four stride-2 stages), got {input_size}")
        self.input_size = input_size
        self.fc_scale = fc_scale if fc_scale is not None else (input_size // 16) ** 2
        self.num_features = num_features
        self.conv1 = nn.Conv2d(3, width, 3, stride=1, padding=1, bias=False)
        self.bn1 = _bn2d(width)
        self.prelu = nn.PReLU(width)
        in_channels = width
        for stage, count in enumerate(layers, start=1):
            channels = width * 2 ** (stage - 1)
            setattr(self, f"layer{stage}", self._stage(in_channels, channels, count))
            in_channels = channels
        self.bn2 = _bn2d(in_channels)
        self.dropout = nn.Dropout(p=dropout, inplace=True)
        self.fc = nn.Linear(in_channels * self.fc_scale, num_features)
        self.features = nn.BatchNorm1d(num_features, eps=BN_EPS)
        nn.init.constant_(self.features.weight, 1.0)
        self.features.weight.requires_grad = False
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.1)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    @staticmethod
    def _stage(in_channels: int, channels: int, count: int) -> nn.Sequential:
        # every stage starts with stride 2, so its first block always has a projection shortcut
        projection = nn.Sequential(nn.Conv2d(in_channels, channels, 1, stride=2, bias=False), _bn2d(channels))
        blocks = [_IRBlock(in_channels, channels, 2, projection)]
        blocks += [_IRBlock(channels, channels) for _ in range(count - 1)]
        return nn.Sequential(*blocks)

    def forward(self, x):
        x = self.prelu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = self.bn2(x)
        x = torch.flatten(x, 1)  # NCHW order: the fc weight's columns are (channel, row, column)
        x = self.dropout(x)
        return self.features(self.fc(x))


def iresnet(layers="r50", num_features: int = 512, dropout: float = 0.0, **kwargs) -> IResNet:
    """IR-ResNet by stage depths, e.g. (3, 4, 14, 3), or by name ("r18" ... "r200")."""
    if isinstance(layers, str):
        layers = IRESNET_LAYERS[layers]
    return IResNet(tuple(layers), num_features=num_features, dropout=dropout, **kwargs)


def iresnet18(**kwargs):
    return iresnet("r18", **kwargs)


def iresnet34(**kwargs):
    return iresnet("r34", **kwargs)


def iresnet50(**kwargs):
    return iresnet("r50", **kwargs)


def iresnet100(**kwargs):
    return iresnet("r100", **kwargs)


def iresnet200(**kwargs):
    return iresnet("r200", **kwargs)


# --------------------------------------------------------------------------------------------------
# MobileFaceNet (arcface_torch backbones/mobilefacenet.py)
# --------------------------------------------------------------------------------------------------
# Every building block keeps its parts in an nn.Sequential named `layers`, which is where keys such as
# "layers.3.layers.0.layers.1.layers.2.weight" come from.

def _conv_bn(in_c, out_c, kernel, stride, padding, groups, activation: bool) -> nn.Sequential:
    parts = [nn.Conv2d(in_c, out_c, kernel, stride=stride, padding=padding, groups=groups, bias=False),
             nn.BatchNorm2d(out_c, eps=BN_EPS)]
    if activation:
        parts.append(nn.PReLU(out_c))
    return nn.Sequential(*parts)


class _ConvUnit(nn.Module):
    """Conv + BN (+ PReLU when `activation`): the original's ConvBlock / LinearBlock."""

    def __init__(self, in_c, out_c, kernel=1, stride=1, padding=0, groups=1, activation=True):
        super().__init__()
        self.layers = _conv_bn(in_c, out_c, kernel, stride, padding, groups, activation)

    def forward(self, x):
        return self.layers(x)


class _Bottleneck(nn.Module):
    """1x1 expand to `hidden` (ConvBlock), depthwise 3x3 (ConvBlock), 1x1 project (LinearBlock);
    the original's DepthWise.  `residual` adds the input back (no activation after the add)."""

    def __init__(self, in_c, out_c, hidden, stride, residual=False):
        super().__init__()
        self.residual = residual
        self.layers = nn.Sequential(
            _ConvUnit(in_c, hidden, 1),
            _ConvUnit(hidden, hidden, 3, stride, 1, groups=hidden),
            _ConvUnit(hidden, out_c, 1, activation=False),
        )

    def forward(self, x):
        y = self.layers(x)
        return x + y if self.residual else y


class _Repeat(nn.Module):
    """`count` residual stride-1 bottlenecks on `channels` channels: the original's Residual."""

    def __init__(self, channels, count, hidden):
        super().__init__()
        self.layers = nn.Sequential(*[_Bottleneck(channels, channels, hidden, 1, True) for _ in range(count)])

    def forward(self, x):
        return self.layers(x)


class _Flatten(nn.Module):
    def forward(self, x):
        # deliberately the original's form: exports as Shape/Gather/Unsqueeze/Concat/Reshape
        return x.view(x.size(0), -1)


class _GlobalDepthwiseHead(nn.Module):
    """GDC: depthwise 7x7 conv + BN (a LinearBlock), flatten, Linear without bias, BatchNorm1d."""

    def __init__(self, num_features, channels=512, kernel=7):
        super().__init__()
        self.layers = nn.Sequential(
            _ConvUnit(channels, channels, kernel, 1, 0, groups=channels, activation=False),
            _Flatten(),
            nn.Linear(channels, num_features, bias=False),
            nn.BatchNorm1d(num_features, eps=BN_EPS),
        )

    def forward(self, x):
        return self.layers(x)


class MobileFaceNet(nn.Module):
    """arcface_torch's MobileFaceNet: `mbf` is blocks (1, 4, 6, 2) scale 2, `mbf_large` (2, 8, 12, 4)
    scale 4.  The bottleneck hidden widths (128, 256, 512) and the stem's 64 groups are fixed numbers
    in the original, independent of `scale`, and are kept so here."""

    def __init__(self, num_features: int = 512, blocks=MBF_BLOCKS, scale: int = 2):
        super().__init__()
        self.input_size = 112
        self.num_features = num_features
        c1, c2 = 64 * scale, 128 * scale
        self.layers = nn.ModuleList()
        self.layers.append(_ConvUnit(3, c1, 3, 2, 1))
        if blocks[0] == 1:
            self.layers.append(_ConvUnit(c1, c1, 3, 1, 1, groups=64))
        else:
            self.layers.append(_Repeat(c1, blocks[0], hidden=128))
        self.layers.append(_Bottleneck(c1, c1, 128, 2))
        self.layers.append(_Repeat(c1, blocks[1], hidden=128))
        self.layers.append(_Bottleneck(c1, c2, 256, 2))
        self.layers.append(_Repeat(c2, blocks[2], hidden=256))
        self.layers.append(_Bottleneck(c2, c2, 512, 2))
        self.layers.append(_Repeat(c2, blocks[3], hidden=256))
        self.conv_sep = _ConvUnit(c2, 512, 1)
        self.features = _GlobalDepthwiseHead(num_features)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return self.features(self.conv_sep(x))


def mobilefacenet(num_features: int = 512, blocks=MBF_BLOCKS, scale: int = 2) -> MobileFaceNet:
    return MobileFaceNet(num_features=num_features, blocks=tuple(blocks), scale=scale)


def mbf(num_features: int = 512) -> MobileFaceNet:
    return mobilefacenet(num_features, MBF_BLOCKS, 2)


def mbf_large(num_features: int = 512) -> MobileFaceNet:
    return mobilefacenet(num_features, MBF_LARGE_BLOCKS, 4)


def get_model(name: str, num_features: int = 512, **kwargs) -> nn.Module:
    """arcface_torch's names: r18 r34 r50 r100 r200 mbf mbf_large."""
    if name in IRESNET_LAYERS:
        return iresnet(name, num_features=num_features, **kwargs)
    if name == "mbf":
        return mbf(num_features)
    if name == "mbf_large":
        return mbf_large(num_features)
    raise ValueError(f"unknown network {name!r}")


def build_torch_model(spec: dict) -> nn.Module:
    """The PyTorch module for a ``build_backbone`` spec that ``frtf import`` recognised."""
    size = int(spec.get("input_shape", [112])[0])
    if spec["name"] in IRESNET_LAYERS:
        return iresnet(spec["name"], num_features=int(spec["embedding_size"]), input_size=size)
    if spec["name"] in ("mobilefacenet", "mbf_large"):
        blocks = spec.get("blocks") or (MBF_LARGE_BLOCKS if spec["name"] == "mbf_large" else MBF_BLOCKS)
        return mobilefacenet(int(spec["embedding_size"]), tuple(blocks), int(spec.get("scale") or 2))
    raise ValueError(f"no PyTorch reference for backbone {spec['name']!r}")
