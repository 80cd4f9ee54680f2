"""`frtf import` refuses what it cannot import faithfully, with one line that names the file and says why.

Broken files (truncated, random bytes), unsafe ones (a pickle that runs a shell command), the wrong kind
of file (a pickled nn.Module, a TorchScript archive, a detector, a ReLU6 MobileNetV2), an unexpected
embedding size, and an OUT that already exists.  Every refusal is a PretrainedModelError whose message
starts with the path, and leaves neither OUT nor a hidden `.OUT.*.tmp` work folder behind.
"""

import io
import os
import pickle
import shlex
import warnings
import zipfile

import numpy as np
import pytest

from import_helpers import leftovers, run_frtf, torch_reference
from face_recognition_tf.errors import PretrainedModelError
from face_recognition_tf.pretrained import import_model


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("import_errors")


@pytest.fixture(scope="module")
def torch_files(workdir):
    """An arcface_torch mbf (512-D) as ONNX and as a state dict, and the torch reference module."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnx")
    ref = torch_reference()
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = ref.randomize(ref.mbf(num_features=512), seed=2)
        onnx_path = workdir / "mbf512.onnx"
        ref.export_onnx(model, onnx_path)
        pth_path = workdir / "mbf512.pth"
        ref.export_state_dict(model, pth_path)
        legacy_path = workdir / "mbf512_legacy.pth"
        torch.save(model.state_dict(), str(legacy_path), _use_new_zipfile_serialization=False)
    finally:
        torch.set_num_threads(before)
    return {"torch": torch, "ref": ref, "model": model, "onnx": onnx_path, "pth": pth_path,
            "legacy": legacy_path}


def _refused(src, out, *expected, **kwargs):
    """Import must raise a one-line PretrainedModelError naming the file and saying `expected`, and
    leave nothing at or beside OUT."""
    with pytest.raises(PretrainedModelError) as info:
        import_model(src, out, **kwargs)
    message = str(info.value)
    assert message.startswith(f"{src}: "), message
    assert "\n" not in message, message
    for text in expected:
        assert text.lower() in message.lower(), (text, message)
    assert not os.path.lexists(out)
    assert leftovers(out) == []
    return message


def _cut(src, dst, fraction=0.5):
    raw = src.read_bytes()
    dst.write_bytes(raw[: int(len(raw) * fraction)])
    return dst


# ------------------------------------------------------------------------------------------------
# broken files
# ------------------------------------------------------------------------------------------------

def test_truncated_onnx(torch_files, workdir):
    src = _cut(torch_files["onnx"], workdir / "truncated.onnx")
    _refused(src, workdir / "out_truncated_onnx", "not a readable ONNX model", "truncated or corrupt")


def test_random_bytes_named_onnx(workdir):
    pytest.importorskip("onnx")
    src = workdir / "random.onnx"
    src.write_bytes(np.random.default_rng(0).integers(0, 256, 100_000, dtype=np.uint8).tobytes())
    _refused(src, workdir / "out_random_onnx", "not a readable ONNX model")


def test_empty_onnx(workdir):
    pytest.importorskip("onnx")
    src = workdir / "empty.onnx"
    src.write_bytes(b"")
    _refused(src, workdir / "out_empty_onnx", "not a readable ONNX model")


def test_missing_file(workdir):
    src = workdir / "no_such_model.onnx"
    _refused(src, workdir / "out_missing", "not found")


@pytest.mark.parametrize("which", ["pth", "legacy"])
def test_truncated_pth(torch_files, workdir, which):
    src = _cut(torch_files[which], workdir / f"truncated_{which}.pth")
    _refused(src, workdir / f"out_truncated_{which}", "truncated or corrupt")


# ------------------------------------------------------------------------------------------------
# unsafe and wrong kinds of files
# ------------------------------------------------------------------------------------------------

class _RunsCode:
    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def _legacy_torch_stream(obj) -> bytes:
    """torch.save's legacy layout: magic number, protocol version, system info, then the object."""
    return b"".join(pickle.dumps(x, protocol=2) for x in (
        0x1950A86A20F9469CFC6C, 1001, {"protocol_version": 1001, "little_endian": True}, obj))


def _zip_torch_file(obj) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("archive/data.pkl", pickle.dumps(obj, protocol=2))
        archive.writestr("archive/version", "3\n")
        archive.writestr("archive/byteorder", "little")
    return buffer.getvalue()


@pytest.mark.parametrize("layout", ["legacy", "zip"])
def test_pickle_that_runs_code_is_refused_unrun(workdir, layout):
    marker = workdir / f"MARKER_{layout}"
    payload = {"conv1.weight": _RunsCode(f"touch {shlex.quote(str(marker))}")}
    src = workdir / f"evil_{layout}.pth"
    src.write_bytes(_legacy_torch_stream(payload) if layout == "legacy" else _zip_torch_file(payload))

    # the file really is dangerous: a plain unpickler runs the command
    control = workdir / f"CONTROL_{layout}"
    pickle.loads(pickle.dumps({"conv1.weight": _RunsCode(f"touch {shlex.quote(str(control))}")}, protocol=2))
    assert control.exists()

    message = _refused(src, workdir / f"out_evil_{layout}", "refused", "system", "could run code")
    assert not marker.exists(), message


def test_pickled_module_is_not_a_state_dict(torch_files, workdir):
    torch = torch_files["torch"]
    src = workdir / "whole_model.pth"
    torch.save(torch_files["model"], str(src))  # the module object, not its state_dict()
    _refused(src, workdir / "out_whole_model", "pickled model", "state_dict")


def test_torchscript_archive(torch_files, workdir):
    torch = torch_files["torch"]
    src = workdir / "scripted.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit is deprecated, but still saved by users
        torch.jit.save(torch.jit.trace(torch.nn.Linear(4, 2).eval(), torch.zeros(1, 4)), str(src))
    _refused(src, workdir / "out_scripted", "TorchScript", "state_dict")


def test_checkpoint_without_a_state_dict(torch_files, workdir):
    src = workdir / "no_weights.pth"
    torch_files["torch"].save({"epoch": 3, "global_step": 10, "lr": [0.1]}, str(src))
    _refused(src, workdir / "out_no_weights", "no state dict", "epoch")


def test_relu6_mobilenet_v2(torch_files, workdir):
    ref = torch_files["ref"]
    src = workdir / "mobilenet_v2.onnx"
    ref.export_onnx(ref.randomize(ref.mobilenet_v2_face(), 0), src)
    message = _refused(src, workdir / "out_mnv2", "not a supported", "supported:")
    assert "ReLU6" in message and "Clip" in message, message


def test_detector_with_several_outputs(torch_files, workdir):
    ref = torch_files["ref"]
    src = workdir / "detector.onnx"
    proto = ref.export_onnx(ref.randomize(ref.tiny_detector(), 0), src)
    assert len(proto.graph.output) == 6
    _refused(src, workdir / "out_detector", "one output", "has 6", "supported")


def test_unknown_state_dict(torch_files, workdir):
    torch = torch_files["torch"]
    src = workdir / "sequential.pth"
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.Flatten(),
                              torch.nn.Linear(8, 4))
    torch.save(net.state_dict(), str(src))
    _refused(src, workdir / "out_sequential", "not a supported face recognition architecture", "0.weight")


def _torchvision_resnet18(torch):
    """torchvision's ResNet-18 module layout (conv1, bn1, layer1..4 of BasicBlocks, fc): the same
    top-level key names as an IR-ResNet, but no bn2 / features, a 7x7 stem and a 1000-class fc."""
    nn = torch.nn

    class Basic(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            if stride != 1 or cin != cout:
                self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    class ResNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
            self.bn1 = nn.BatchNorm2d(64)
            cin = 64
            for i, cout in enumerate((64, 128, 256, 512), start=1):
                stage = nn.Sequential(Basic(cin, cout, 1 if i == 1 else 2), Basic(cout, cout, 1))
                setattr(self, f"layer{i}", stage)
                cin = cout
            self.fc = nn.Linear(512, 1000)

    return ResNet()


def test_torchvision_resnet_state_dict(torch_files, workdir):
    src = workdir / "torchvision_resnet18.pth"
    torch_files["torch"].save(_torchvision_resnet18(torch_files["torch"]).state_dict(), str(src))
    _refused(src, workdir / "out_torchvision", "not a supported")


# ------------------------------------------------------------------------------------------------
# what the caller asked for
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("which", ["onnx", "pth"])
def test_unexpected_embedding_size(torch_files, workdir, which):
    pytest.importorskip("onnxruntime")
    src = torch_files[which]
    message = _refused(src, workdir / f"out_size_{which}", "512", "256", embedding_size=256)
    assert message.index("512") < message.index("256"), message  # "gives 512-D ..., 256-D were expected"


@pytest.mark.parametrize("kind", ["file", "folder"])
def test_out_already_exists(workdir, kind):
    src = workdir / "any_model.onnx"  # OUT is checked first, whatever SRC holds
    src.write_bytes(b"not read")
    out = workdir / f"existing_{kind}"
    if kind == "file":
        out.write_bytes(b"precious")
    else:
        out.mkdir()
        (out / "notes.txt").write_text("precious")
    before = sorted((p.relative_to(out).as_posix(), p.read_bytes()) for p in out.rglob("*") if p.is_file()) \
        if kind == "folder" else out.read_bytes()
    with pytest.raises(PretrainedModelError) as info:
        import_model(src, out)
    message = str(info.value)
    assert message.startswith(f"{out}: ") and "already exists" in message and "\n" not in message
    after = sorted((p.relative_to(out).as_posix(), p.read_bytes()) for p in out.rglob("*") if p.is_file()) \
        if kind == "folder" else out.read_bytes()
    assert after == before
    assert leftovers(out) == []


def test_parity_failure_writes_nothing(torch_files, workdir):
    """A graph that differs from the architecture in what the loader does not read (the stem conv
    padded (2, 2, 0, 0) instead of (1, 1, 1, 1): same output shape, other values) is caught by the
    parity check, and nothing is written."""
    pytest.importorskip("onnxruntime")
    from onnx import helper

    proto = onnx_load(torch_files["onnx"])
    stem = next(node for node in proto.graph.node if node.op_type == "Conv")
    pads = next(a for a in stem.attribute if a.name == "pads")
    assert list(pads.ints) == [1, 1, 1, 1]
    stem.attribute.remove(pads)
    stem.attribute.append(helper.make_attribute("pads", [2, 2, 0, 0]))
    src = workdir / "other_padding.onnx"
    onnx_save(proto, src)
    _refused(src, workdir / "out_other_padding", "differs from the original", "nothing was written")


def onnx_load(path):
    import onnx

    return onnx.load(str(path))


def onnx_save(proto, path):
    import onnx

    onnx.save(proto, str(path))


# ------------------------------------------------------------------------------------------------
# the command line
# ------------------------------------------------------------------------------------------------

def test_cli_error_is_one_line(workdir):
    pytest.importorskip("onnx")
    bad = workdir / "BAD.onnx"
    bad.write_bytes(np.random.default_rng(1).integers(0, 256, 50_000, dtype=np.uint8).tobytes())
    out = workdir / "cli_out"
    result = run_frtf("import", bad, out)
    assert result.returncode == 2, (result.returncode, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"frtf import: error: {bad}: "), lines[0]
    assert "not a readable ONNX model" in lines[0]
    assert not os.path.lexists(out) and leftovers(out) == []
