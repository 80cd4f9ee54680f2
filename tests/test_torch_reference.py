"""The PyTorch reference models (tests/torch_reference.py) are faithful to insightface's arcface_torch.

The importer's tests trust these stand-ins for real model.pt / w600k_*.onnx files, so here they are held
to numbers measured on the original arcface_torch modules (recognition/arcface_torch/backbones/iresnet.py
and mobilefacenet.py): number of state-dict entries, parameter count and a digest of every key with its
shape in registration order.  The export helpers are checked to produce what they claim: BN folded into
the convs (or kept as BatchNormalization nodes), onnxruntime equal to torch.
"""

import hashlib
import os
import sys
from collections import Counter

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch_reference as ref  # noqa: E402

# measured on instances of the original arcface_torch modules (num_features=512):
# name: (state-dict entries, parameters, sha256 of "key:shape" lines in order, first 16 hex digits)
ARCFACE_TORCH = {
    "r18": (187, 24_025_600, "dc8bc15b11464dbd"),
    "r34": (331, 34_139_328, "ffb8c3eca78a61f9"),
    "r50": (475, 43_590_848, "a7874a3b20e3ccdb"),
    "r100": (925, 65_156_160, "c131b1e80ba72607"),
    "r200": (1807, 118_833_920, "9cb3b80f2ed9084c"),
    "mbf": (333, 2_059_520, "229ce022dd988d5a"),
    "mbf_large": (606, 6_314_880, "8e858032c8e49ef5"),
}

TOL = 1e-4


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """On a small shared CPU (2 cores, pytest-xdist workers beside us) torch's OpenMP pool spins and
    waits: MobileFaceNet's depthwise convs run 20x slower with 2 threads than with 1."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _digest(state_dict):
    lines = "\n".join(f"{k}:{tuple(v.shape)}" for k, v in state_dict.items())
    return hashlib.sha256(lines.encode()).hexdigest()[:16]


def _meta(name):
    with torch.device("meta"):  # shapes and keys only: no memory, no init time for r200
        return ref.get_model(name)


def _images(n, size=112, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def _ops(proto):
    return Counter(node.op_type for node in proto.graph.node)


def _bn_fed_by_conv(proto):
    made_by = {out: node.op_type for node in proto.graph.node for out in node.output}
    return [n.name for n in proto.graph.node if n.op_type == "BatchNormalization" and made_by.get(n.input[0]) == "Conv"]


def _bn_modules(model):
    return sum(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())


@pytest.mark.parametrize("name", list(ARCFACE_TORCH))
def test_state_dict_matches_arcface_torch(name):
    entries, params, digest = ARCFACE_TORCH[name]
    model = _meta(name)
    sd = model.state_dict()
    assert len(sd) == entries
    assert sum(p.numel() for p in model.parameters()) == params
    assert _digest(sd) == digest


def test_iresnet_key_spot_checks():
    model = _meta("r50")
    sd = model.state_dict()
    keys = list(sd)
    assert keys[:7] == ["conv1.weight", "bn1.weight", "bn1.bias", "bn1.running_mean", "bn1.running_var",
                        "bn1.num_batches_tracked", "prelu.weight"]
    assert keys[7:13] == ["layer1.0.bn1.weight", "layer1.0.bn1.bias", "layer1.0.bn1.running_mean",
                          "layer1.0.bn1.running_var", "layer1.0.bn1.num_batches_tracked", "layer1.0.conv1.weight"]
    assert keys[-7:] == ["fc.weight", "fc.bias", "features.weight", "features.bias", "features.running_mean",
                         "features.running_var", "features.num_batches_tracked"]
    assert tuple(sd["layer1.0.downsample.0.weight"].shape) == (64, 64, 1, 1)
    assert tuple(sd["layer4.0.downsample.0.weight"].shape) == (512, 256, 1, 1)
    assert "layer2.0.downsample.1.num_batches_tracked" in sd
    assert not any(k.startswith("layer1.1.downsample") for k in sd)
    assert tuple(sd["layer3.13.conv2.weight"].shape) == (256, 256, 3, 3)
    assert tuple(sd["layer3.13.prelu.weight"].shape) == (256,)
    assert "layer3.14.bn1.weight" not in sd
    assert tuple(sd["fc.weight"].shape) == (512, 512 * 7 * 7)
    assert model.features.weight.requires_grad is False
    assert model.fc_scale == 49
    block = [k[len("layer2.0."):] for k in keys if k.startswith("layer2.0.") and k.endswith(("weight", "bias"))]
    assert block == ["bn1.weight", "bn1.bias", "conv1.weight", "bn2.weight", "bn2.bias", "prelu.weight",
                     "conv2.weight", "bn3.weight", "bn3.bias", "downsample.0.weight", "downsample.1.weight",
                     "downsample.1.bias"]
    assert all(m.eps == 1e-5 for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm))


def test_mobilefacenet_key_spot_checks():
    sd = _meta("mbf").state_dict()
    keys = list(sd)
    assert keys[:7] == ["layers.0.layers.0.weight", "layers.0.layers.1.weight", "layers.0.layers.1.bias",
                        "layers.0.layers.1.running_mean", "layers.0.layers.1.running_var",
                        "layers.0.layers.1.num_batches_tracked", "layers.0.layers.2.weight"]
    assert tuple(sd["layers.0.layers.0.weight"].shape) == (128, 3, 3, 3)
    assert tuple(sd["layers.1.layers.0.weight"].shape) == (128, 2, 3, 3)  # groups=64 on 128 channels
    assert tuple(sd["layers.2.layers.0.layers.0.weight"].shape) == (128, 128, 1, 1)
    assert tuple(sd["layers.2.layers.1.layers.0.weight"].shape) == (128, 1, 3, 3)
    assert tuple(sd["layers.4.layers.2.layers.0.weight"].shape) == (256, 256, 1, 1)
    assert tuple(sd["layers.5.layers.5.layers.1.layers.2.weight"].shape) == (256,)
    assert "layers.3.layers.3.layers.2.layers.1.running_var" in sd
    assert "layers.3.layers.4.layers.0.layers.0.weight" not in sd  # blocks[1] == 4
    assert tuple(sd["conv_sep.layers.0.weight"].shape) == (512, 256, 1, 1)
    assert tuple(sd["features.layers.0.layers.0.weight"].shape) == (512, 1, 7, 7)
    assert tuple(sd["features.layers.2.weight"].shape) == (512, 512)
    assert "features.layers.2.bias" not in sd
    assert keys[-5:] == ["features.layers.3.weight", "features.layers.3.bias", "features.layers.3.running_mean",
                         "features.layers.3.running_var", "features.layers.3.num_batches_tracked"]

    large = _meta("mbf_large").state_dict()
    assert tuple(large["layers.0.layers.0.weight"].shape) == (256, 3, 3, 3)
    assert tuple(large["layers.1.layers.1.layers.0.layers.0.weight"].shape) == (128, 256, 1, 1)  # a Residual
    assert tuple(large["layers.6.layers.1.layers.0.weight"].shape) == (512, 1, 3, 3)
    assert tuple(large["conv_sep.layers.0.weight"].shape) == (512, 512, 1, 1)


def test_narrow_iresnet_keeps_the_key_names():
    small = ref.iresnet("r18", num_features=32, width=8)
    full = _meta("r18")
    assert list(small.state_dict()) == list(full.state_dict())
    assert tuple(small.fc.weight.shape) == (32, 64 * 49)
    out = ref.torch_embed(ref.randomize(small, 0), _images(2))
    assert out.shape == (2, 32) and np.isfinite(out).all()


def test_randomize_is_seeded_and_not_identity():
    a = ref.randomize(ref.mbf(), 7)
    b = ref.randomize(ref.mbf(), 7)
    assert not a.training
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(va, vb), k
    bns = [m for m in a.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert all(float(m.running_var.min()) >= 0.5 and float(m.running_var.max()) <= 2.0 for m in bns)
    assert all(float(m.running_mean.abs().max()) > 0 and float((m.weight.detach() - 1).abs().max()) > 0 for m in bns)
    prelus = [m for m in a.modules() if isinstance(m, torch.nn.PReLU)]
    assert all(float(m.weight.detach().std()) > 0 for m in prelus)
    c = ref.randomize(ref.mbf(), 8)
    assert not torch.equal(a.conv_sep.layers[1].running_var, c.conv_sep.layers[1].running_var)

    r = ref.randomize(ref.iresnet("r18", width=8), 0, keep_frozen=True)
    assert torch.equal(r.features.weight, torch.ones_like(r.features.weight))


EXPORTS = [
    ("r18", True, 11),
    ("r18", False, 11),
    ("mbf", True, 11),
    ("mbf", False, 11),
    ("mbf", True, 9),
    ("mbf", False, 18),
]


@pytest.mark.parametrize("name,fold_bn,opset", EXPORTS)
def test_onnx_export_matches_torch(tmp_path, name, fold_bn, opset):
    model = ref.randomize(ref.get_model(name), 3)
    path = tmp_path / f"{name}.onnx"
    proto = ref.export_onnx(model, path, fold_bn=fold_bn, opset=opset)

    # torch2onnx.py's file: one input "data" with batch 'None', weights as initializers only
    assert [i.name for i in proto.graph.input] == ["data"]
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "None" and [d.dim_value for d in dims[1:]] == [3, 112, 112]
    assert proto.opset_import[0].version == opset

    ops = _ops(proto)
    if fold_bn:
        assert _bn_fed_by_conv(proto) == []
        # IResNet: each block's leading BN, bn2 and features stay; MobileFaceNet: only features' BN1d
        assert ops["BatchNormalization"] == (10 if name == "r18" else 1)
    else:
        assert ops["BatchNormalization"] == _bn_modules(model)
        assert len(_bn_fed_by_conv(proto)) > 0
    if name == "mbf":  # x.view(x.size(0), -1)
        for op in ("Shape", "Gather", "Unsqueeze", "Concat", "Reshape"):
            assert ops[op] >= 1, op

    images = _images(3, seed=opset)
    expected = ref.torch_embed(model, images)
    got = ref.onnx_embed(path, images)
    assert got.shape == expected.shape == (3, 512)
    assert np.abs(got - expected).max() < TOL


def test_static_batch_export(tmp_path):
    model = ref.randomize(ref.mbf(), 1)
    proto = ref.export_onnx(model, tmp_path / "m.onnx", dynamic_batch=False)
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 1
    images = _images(1)
    assert np.abs(ref.onnx_embed(tmp_path / "m.onnx", images) - ref.torch_embed(model, images)).max() < TOL


def test_onnx_embed_normalisation(tmp_path):
    model = ref.randomize(ref.mbf(), 2)
    ref.export_onnx(model, tmp_path / "m.onnx")
    images = _images(2)
    x = ref.preprocess(images)
    assert x.shape == (2, 3, 112, 112) and x.dtype == np.float32
    assert np.allclose(x[0, :, 5, 7], (images[0, 5, 7].astype(np.float32) - 127.5) / 127.5)
    direct = ref.onnx_run(tmp_path / "m.onnx", x)[0]
    assert np.array_equal(direct, ref.onnx_embed(tmp_path / "m.onnx", images))
    assert np.abs(ref.onnx_embed(tmp_path / "m.onnx", images, mean=0.0, std=255.0) - direct).max() > 1e-3


@pytest.mark.parametrize("wrap", [None, "ddp", "checkpoint"])
def test_export_state_dict(tmp_path, wrap):
    model = ref.randomize(ref.mbf(num_features=128), 4)
    path = tmp_path / "backbone.pth"
    ref.export_state_dict(model, path, wrap=wrap)
    loaded = torch.load(path, map_location="cpu", weights_only=True)
    if wrap == "checkpoint":
        assert {"epoch", "global_step", "state_dict_backbone", "state_dict_softmax_fc", "state_optimizer",
                "state_lr_scheduler"} <= set(loaded)
        assert tuple(loaded["state_dict_softmax_fc"]["weight"].shape)[1] == 128
        sd = loaded["state_dict_backbone"]
    elif wrap == "ddp":
        assert all(k.startswith("module.") for k in loaded)
        sd = {k[len("module."):]: v for k, v in loaded.items()}
    else:
        sd = loaded
    assert list(sd) == list(model.state_dict())
    fresh = ref.mbf(num_features=128)
    fresh.load_state_dict(sd, strict=True)
    images = _images(2)
    assert np.array_equal(ref.torch_embed(fresh, images), ref.torch_embed(model, images))


def test_unsupported_models_export(tmp_path):
    mnv2 = ref.randomize(ref.mobilenet_v2_face(), 0)
    proto = ref.export_onnx(mnv2, tmp_path / "mnv2.onnx")
    ops = _ops(proto)
    assert ops["Clip"] > 0 and "PRelu" not in ops  # ReLU6
    images = _images(2)
    out = ref.onnx_embed(tmp_path / "mnv2.onnx", images)
    assert out.shape == (2, 128)
    assert np.abs(out - ref.torch_embed(mnv2, images)).max() < TOL

    det = ref.randomize(ref.tiny_detector(), 0)
    proto = ref.export_onnx(det, tmp_path / "det.onnx")
    assert len(proto.graph.output) == 6
    assert [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim[1:]] == [3, 160, 160]
    outs = ref.onnx_run(tmp_path / "det.onnx", ref.preprocess(_images(1, size=160)))
    assert [o.shape for o in outs] == [(800, 1), (200, 1), (800, 4), (200, 4), (800, 10), (200, 10)]
