"""PyTorch stand-ins for the insightface / arcface_torch face models, and the ways users export them.

The importer (`face_recognition_tf.pretrained`) reads files made by arcface_torch: `model.pt` /
`backbone.pth` state dicts, training checkpoints and ONNX exports such as w600k_r50.onnx.  Its tests
cannot download those, so this module rebuilds the arcface_torch backbones from their published
structure (recognition/arcface_torch/backbones/iresnet.py and mobilefacenet.py) and produces files the
same way arcface_torch does.  What has to match the real thing, and is checked by
tests/test_torch_reference.py against numbers measured on the original modules:

* every state-dict key, its shape and the order of registration (a state dict saved from the real
  `IResNet` / `MobileFaceNet` loads into these with ``strict=True`` and vice versa);
* the forward computation (BN eps 1e-5, PReLU, pre-activation IR blocks with no activation after the
  add, MobileFaceNet's GDC head whose flatten is ``x.view(x.size(0), -1)``);
* the ONNX export recipe of arcface_torch's torch2onnx.py (input named "data",
  ``keep_initializers_as_inputs=False``, batch dimension renamed to ``'None'`` afterwards).

The code is written from the structure, not copied.  Two models the importer must refuse are here too:
a MobileNetV2-style embedder (ReLU6, 128-D) and a small SCRFD-like detector with several outputs.

Helpers: randomize, export_onnx, export_state_dict, torch_embed, onnx_embed, onnx_run.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from torch import nn

# the supported architectures live in the package (the .pth import checks itself against them)
from face_recognition_tf.pretrained.torch_models import (  # noqa: E402,F401
    BN_EPS,
    IRESNET_LAYERS,
    MBF_BLOCKS,
    MBF_LARGE_BLOCKS,
    IResNet,
    MobileFaceNet,
    get_model,
    iresnet,
    iresnet18,
    iresnet34,
    iresnet50,
    iresnet100,
    iresnet200,
    mbf,
    mbf_large,
    mobilefacenet,
)

__all__ = [
    "IRESNET_LAYERS", "MBF_BLOCKS", "MBF_LARGE_BLOCKS",
    "IResNet", "iresnet", "iresnet18", "iresnet34", "iresnet50", "iresnet100", "iresnet200",
    "MobileFaceNet", "mobilefacenet", "mbf", "mbf_large", "get_model",
    "mobilenet_v2_face", "tiny_detector",
    "randomize", "export_onnx", "export_state_dict", "torch_embed", "onnx_embed", "onnx_run",
    "preprocess",
]


# --------------------------------------------------------------------------------------------------
# Models the importer must refuse
# --------------------------------------------------------------------------------------------------

class _InvertedResidual(nn.Module):
    def __init__(self, in_c, out_c, stride, expand):
        super().__init__()
        hidden = in_c * expand
        self.use_shortcut = stride == 1 and in_c == out_c
        self.conv = nn.Sequential(
            nn.Conv2d(in_c, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False), nn.BatchNorm2d(hidden),
            nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, out_c, 1, bias=False), nn.BatchNorm2d(out_c),
        )

    def forward(self, x):
        y = self.conv(x)
        return x + y if self.use_shortcut else y


class MobileNetV2Face(nn.Module):
    """A small MobileNetV2-style face embedder: ReLU6 activations, global average pooling, 128-D."""

    def __init__(self, num_features: int = 128):
        super().__init__()
        self.input_size = 112
        self.num_features = num_features
        cfg = [(16, 1, 1, 1), (24, 2, 2, 6), (32, 2, 2, 6), (64, 2, 2, 6), (96, 1, 1, 6)]  # c, n, s, t
        layers = [nn.Conv2d(3, 32, 3, 2, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU6(inplace=True)]
        in_c = 32
        for c, n, s, t in cfg:
            for i in range(n):
                layers.append(_InvertedResidual(in_c, c, s if i == 0 else 1, t))
                in_c = c
        layers += [nn.Conv2d(in_c, 320, 1, bias=False), nn.BatchNorm2d(320), nn.ReLU6(inplace=True)]
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.embedding = nn.Linear(320, num_features)

    def forward(self, x):
        return self.embedding(torch.flatten(self.pool(self.features(x)), 1))


def mobilenet_v2_face(num_features: int = 128) -> MobileNetV2Face:
    return MobileNetV2Face(num_features)


class TinyDetector(nn.Module):
    """SCRFD-like: a conv trunk and, at strides 8 and 16, score (sigmoid), bbox and 5-point keypoint
    heads with 2 anchors per position, flattened as SCRFD's export does.  Outputs, in SCRFD's order:
    score_8, score_16, bbox_8, bbox_16, kps_8, kps_16."""

    strides = (8, 16)
    anchors = 2

    def __init__(self, input_size: int = 160):
        super().__init__()
        self.input_size = input_size

        def down(i, o):
            return nn.Sequential(nn.Conv2d(i, o, 3, 2, 1, bias=False), nn.BatchNorm2d(o), nn.ReLU(inplace=True))

        self.stem = nn.Sequential(down(3, 16), down(16, 32), down(32, 48))  # stride 8
        self.stage16 = down(48, 64)                                          # stride 16
        self.neck8 = nn.Conv2d(48, 32, 1)
        self.neck16 = nn.Conv2d(64, 32, 1)
        self.score = nn.ModuleList([nn.Conv2d(32, self.anchors * 1, 3, 1, 1) for _ in self.strides])
        self.bbox = nn.ModuleList([nn.Conv2d(32, self.anchors * 4, 3, 1, 1) for _ in self.strides])
        self.kps = nn.ModuleList([nn.Conv2d(32, self.anchors * 10, 3, 1, 1) for _ in self.strides])

    def forward(self, x):
        f8 = self.stem(x)
        f16 = self.stage16(f8)
        feats = [torch.relu(self.neck8(f8)), torch.relu(self.neck16(f16))]
        scores, boxes, points = [], [], []
        for i, f in enumerate(feats):
            scores.append(torch.sigmoid(self.score[i](f)).permute(0, 2, 3, 1).reshape(-1, 1))
            boxes.append(self.bbox[i](f).permute(0, 2, 3, 1).reshape(-1, 4))
            points.append(self.kps[i](f).permute(0, 2, 3, 1).reshape(-1, 10))
        return (*scores, *boxes, *points)


def tiny_detector(input_size: int = 160) -> TinyDetector:
    return TinyDetector(input_size)


# --------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------

@torch.no_grad()
def randomize(model: nn.Module, seed: int = 0, *, keep_frozen: bool = False) -> nn.Module:
    """Give every parameter and BN statistic seeded random values and put the model in eval mode.

    BN: weight U[0.5, 1.5], bias N(0, 0.1), running_mean N(0, 0.1), running_var U[0.5, 2].
    PReLU slopes U[-0.1, 0.6] (per channel).  Conv / Linear weights N(0, 1/fan_in) so activations
    stay O(1) through deep nets; biases N(0, 0.05).  `keep_frozen=True` leaves parameters with
    requires_grad False alone (IResNet's `features.weight`, which is 1 in every real checkpoint).
    """
    g = torch.Generator().manual_seed(seed)

    def normal(t, std):
        t.copy_(torch.randn(t.shape, generator=g) * std)

    def uniform(t, lo, hi):
        t.copy_(torch.rand(t.shape, generator=g) * (hi - lo) + lo)

    def touch(p):
        return p is not None and (p.requires_grad or not keep_frozen)

    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            if touch(m.weight):
                uniform(m.weight, 0.5, 1.5)
            if touch(m.bias):
                normal(m.bias, 0.1)
            normal(m.running_mean, 0.1)
            uniform(m.running_var, 0.5, 2.0)
        elif isinstance(m, nn.PReLU):
            uniform(m.weight, -0.1, 0.6)
        elif isinstance(m, (nn.Conv2d, nn.Linear)):
            fan_in = m.weight[0].numel()
            normal(m.weight, fan_in ** -0.5)
            if m.bias is not None:
                normal(m.bias, 0.05)
    return model.eval()


def _input_size(model) -> int:
    return int(getattr(model, "input_size", 112))


def export_onnx(model: nn.Module, path, *, fold_bn: bool = True, opset: int = 11, dynamic_batch: bool = True,
                input_name: str = "data", output_names=None, simplify: bool = False,
                input_size: int | None = None):
    """Export as arcface_torch's torch2onnx.py does (TorchScript exporter, eval mode, a (1, 3, 112, 112)
    input named "data", keep_initializers_as_inputs=False, then graph.input[0]'s batch dimension set to
    dim_param 'None').  Returns the saved onnx.ModelProto.

    fold_bn=True  : the default export: TrainingMode.EVAL, do_constant_folding=True; a BN right after a
                    conv is folded into it (IResNet's pre-conv BNs, bn2 and features stay).
    fold_bn=False : TrainingMode.PRESERVE with the model in eval mode and do_constant_folding=False:
                    every BN stays a BatchNormalization node in inference form (running statistics),
                    and PReLU slopes arrive through Unsqueeze nodes.  (TrainingMode.TRAINING is no
                    use: its BatchNormalization nodes normalise with the batch's own statistics.)
    dynamic_batch : also trace dim 0 of the input as dynamic, so MobileFaceNet's x.view(x.size(0), -1)
                    stays a Shape/Gather/Unsqueeze/Concat/Reshape subgraph and the file runs at any
                    batch size, as the published insightface files do (today's exporter otherwise
                    folds it into a constant (1, -1) reshape that only runs at batch 1).  Set False
                    for a batch-1 file.
    """
    import onnx

    model = model.eval()
    size = input_size or _input_size(model)
    dummy = torch.from_numpy(
        preprocess(np.random.default_rng(0).integers(0, 256, (1, size, size, 3), dtype=np.uint8)))
    kwargs = dict(
        input_names=[input_name],
        keep_initializers_as_inputs=False,
        verbose=False,
        opset_version=opset,
        dynamo=False,
    )
    if output_names is not None:
        kwargs["output_names"] = list(output_names)
    if dynamic_batch:
        kwargs["dynamic_axes"] = {input_name: {0: "None"}}
    if fold_bn:
        kwargs.update(do_constant_folding=True, training=torch.onnx.TrainingMode.EVAL)
    else:
        kwargs.update(do_constant_folding=False, training=torch.onnx.TrainingMode.PRESERVE)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notices
        torch.onnx.export(model, (dummy,), str(path), **kwargs)

    proto = onnx.load(str(path))
    if dynamic_batch:
        proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "None"  # as torch2onnx.py
    if simplify:
        from onnxsim import simplify as onnx_simplify  # optional, as in torch2onnx.py

        proto, ok = onnx_simplify(proto)
        assert ok, "Simplified ONNX model could not be validated"
    onnx.save(proto, str(path))
    return proto


def export_state_dict(model: nn.Module, path, *, wrap: str | None = None, num_classes: int = 100,
                      epoch: int = 20, global_step: int = 12345):
    """torch.save the backbone's state dict the way arcface_torch leaves it on disk.

    wrap=None         : model.pt / backbone.pth, the plain `backbone.module.state_dict()`.
    wrap="checkpoint" : checkpoint_gpu_{rank}.pt of train_v2.py (save_all_states): epoch, global_step,
                        state_dict_backbone, state_dict_softmax_fc (PartialFC_V2's {"weight": C x D}),
                        state_optimizer, state_lr_scheduler.
    wrap="ddp"        : the DistributedDataParallel wrapper's own state dict, keys prefixed "module.".
    Returns what was saved.
    """
    sd = model.state_dict()
    if wrap is None:
        obj = sd
    elif wrap == "ddp":
        obj = {f"module.{k}": v for k, v in sd.items()}
    elif wrap == "checkpoint":
        dim = int(getattr(model, "num_features", 512))
        g = torch.Generator().manual_seed(1)
        fc = {"weight": torch.randn((num_classes, dim), generator=g) * 0.01}
        opt = torch.optim.SGD(
            [{"params": list(model.parameters())}, {"params": [nn.Parameter(fc["weight"].clone())]}],
            lr=0.1, momentum=0.9, weight_decay=5e-4)
        scheduler = {
            "base_lr": 0.1, "warmup_lr_init": 0.0001, "max_steps": 100000, "warmup_steps": 0,
            "power": 2, "base_lrs": [0.1, 0.1], "last_epoch": global_step, "verbose": False,
            "_step_count": global_step + 1, "_get_lr_called_within_step": False, "_last_lr": [0.05, 0.05],
        }
        obj = {
            "epoch": epoch,
            "global_step": global_step,
            "state_dict_backbone": sd,
            "state_dict_softmax_fc": fc,
            "state_optimizer": opt.state_dict(),
            "state_lr_scheduler": scheduler,
        }
    else:
        raise ValueError(f"wrap must be None, 'checkpoint' or 'ddp', got {wrap!r}")
    torch.save(obj, str(path))
    return obj


def preprocess(images_uint8_nhwc, mean=127.5, std=127.5) -> np.ndarray:
    """uint8 RGB NHWC -> float32 NCHW, (x - mean) / std (insightface: 127.5 / 127.5)."""
    x = np.asarray(images_uint8_nhwc)
    if x.ndim == 3:
        x = x[None]
    x = (x.astype(np.float32) - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


@torch.no_grad()
def torch_embed(model: nn.Module, images_uint8_nhwc) -> np.ndarray:
    """Embeddings (N, D) of uint8 RGB NHWC images by the torch model in eval mode."""
    model.eval()
    out = model(torch.from_numpy(preprocess(images_uint8_nhwc)))
    if isinstance(out, (tuple, list)):
        out = out[0]
    return out.detach().cpu().numpy().astype(np.float32)


def _session(path):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    # one thread: test machines are small and shared, where spinning thread pools cost seconds
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def onnx_run(path, nchw_float32: np.ndarray) -> list:
    """All outputs of the ONNX file for a float32 NCHW batch."""
    sess = _session(path)
    return sess.run(None, {sess.get_inputs()[0].name: np.ascontiguousarray(nchw_float32, np.float32)})


def onnx_embed(path, images_uint8_nhwc, mean=127.5, std=127.5) -> np.ndarray:
    """Embeddings (N, D) of uint8 RGB NHWC images through onnxruntime (first output)."""
    return np.asarray(onnx_run(path, preprocess(images_uint8_nhwc, mean, std))[0], np.float32)
