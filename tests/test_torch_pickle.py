"""The torch-free .pth reader against files written by the real torch.save, and against hostile files."""

import collections
import io
import os
import pickle
import zipfile

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from face_recognition_tf.errors import PretrainedModelError  # noqa: E402
from face_recognition_tf.pretrained.torch_pickle import read_state_dict, read_torch_file  # noqa: E402


class _Small(torch.nn.Module):
    """The layer kinds of an insightface IResNet / MobileFaceNet."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, bias=False)
        self.bn = torch.nn.BatchNorm2d(4)
        self.prelu = torch.nn.PReLU(4)
        self.fc = torch.nn.Linear(16, 8)
        self.features = torch.nn.BatchNorm1d(8)


def _module():
    torch.manual_seed(0)
    model = _Small()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
        model.bn.running_mean.normal_()
        model.bn.running_var.uniform_(0.5, 2.0)
        model.bn.num_batches_tracked.fill_(7)
    return model


def _assert_same(arrays, state_dict):
    assert list(arrays) == list(state_dict.keys())
    for key, tensor in state_dict.items():
        expected = tensor.detach().numpy()
        assert arrays[key].dtype == expected.dtype, key
        assert arrays[key].flags.c_contiguous, key
        np.testing.assert_array_equal(arrays[key], expected, err_msg=key)


def _message(path):
    with pytest.raises(PretrainedModelError) as info:
        read_torch_file(path)
    message = str(info.value)
    assert message.startswith(str(path)) and "\n" not in message
    return message


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_state_dict_of_a_real_module(tmp_path, legacy):
    model = _module()
    path = tmp_path / "model.pt"
    torch.save(model.state_dict(), path, _use_new_zipfile_serialization=not legacy)
    raw = read_torch_file(path)
    assert type(raw) is collections.OrderedDict
    _assert_same(raw, model.state_dict())
    assert raw["bn.num_batches_tracked"].dtype == np.int64 and raw["bn.num_batches_tracked"].shape == ()
    _assert_same(read_state_dict(path), model.state_dict())


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_dtypes_views_and_scalars(tmp_path, legacy):
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    obj = {
        "base": base,
        "odd_columns": base[:, 1::2],  # non-contiguous view of the same storage
        "row2": base[2],  # a storage offset
        "transposed": base.t(),
        "half": torch.linspace(-2, 2, 7, dtype=torch.float16),
        "bf16": torch.tensor([1.5, -3.25, 1e30, 0.0], dtype=torch.bfloat16),
        "scalar": torch.tensor(2.5),
        "long": torch.tensor([1, -2, 2**40]),
        "mask": torch.tensor([True, False]),
        "empty": torch.zeros(0, 3),
        "expanded": torch.arange(3.0).expand(4, 3),  # stride 0
        "param": torch.nn.Parameter(torch.ones(2, 2)),
        "size": torch.Size([2, 3]),
        "meta": [1, 2.5, "x", None, True, (3, 4)],
    }
    path = tmp_path / "mixed.pth"
    torch.save(obj, path, _use_new_zipfile_serialization=not legacy)
    out = read_torch_file(path)
    for key in ("base", "odd_columns", "row2", "transposed", "half", "scalar", "long", "mask", "empty",
                "expanded", "param"):
        expected = obj[key].detach().numpy()
        assert out[key].dtype == expected.dtype and out[key].shape == expected.shape, key
        assert out[key].flags.c_contiguous, key
        np.testing.assert_array_equal(out[key], expected, err_msg=key)
    assert out["bf16"].dtype == np.float32
    np.testing.assert_array_equal(out["bf16"], obj["bf16"].float().numpy())
    assert out["size"] == (2, 3) and type(out["size"]) is tuple
    assert out["meta"] == [1, 2.5, "x", None, True, (3, 4)]


def test_untyped_storage_and_big_endian_archive(tmp_path):
    path = tmp_path / "u16.pt"
    torch.save({"u16": torch.tensor([1, 2, 60000], dtype=torch.int32).to(torch.uint16)[1:]}, path)
    np.testing.assert_array_equal(read_torch_file(path)["u16"], np.array([2, 60000], np.uint16))

    # torch on a big-endian machine writes "big" and byte-swapped storages; fake one by rewriting
    data = {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3), "h": torch.arange(3, dtype=torch.bfloat16)}
    torch.save(data, path)
    big = tmp_path / "big.pt"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(big, "w") as dst:
        for info in src.infolist():
            payload = src.read(info)
            if info.filename.endswith("/byteorder"):
                payload = b"big"
            elif "/data/" in info.filename:
                width = 4 if len(payload) == 24 else 2  # "w" is 6 float32, "h" 3 bfloat16
                payload = np.frombuffer(payload, f"<u{width}").astype(f">u{width}").tobytes()
            dst.writestr(info, payload)
    out = read_torch_file(big)
    np.testing.assert_array_equal(out["w"], data["w"].numpy())
    np.testing.assert_array_equal(out["h"], np.arange(3, dtype=np.float32))


def test_checkpoint_and_ddp_prefix(tmp_path):
    model = _module()
    wrapped = collections.OrderedDict(("module." + k, v) for k, v in model.state_dict().items())
    path = tmp_path / "checkpoint_gpu_0.pt"
    torch.save({"epoch": 3, "global_step": 100, "state_dict_backbone": wrapped,
                "state_dict_softmax_fc": {"weight": torch.ones(2)}, "optimizer": {"state": {}}}, path)
    _assert_same(read_state_dict(path), model.state_dict())

    path = tmp_path / "plain.pt"
    torch.save({"state_dict": model.state_dict(), "best": 0.5}, path)
    _assert_same(read_state_dict(path), model.state_dict())


def test_a_dict_without_a_state_dict(tmp_path):
    path = tmp_path / "opt.pt"
    torch.save({"epoch": 3, "optimizer": {"state": {}, "param_groups": []}}, path)
    with pytest.raises(PretrainedModelError) as info:
        read_state_dict(path)
    assert str(info.value) == f"{path}: holds a dict with keys epoch, optimizer but no state dict"
    torch.save([torch.ones(1)], path)
    with pytest.raises(PretrainedModelError, match="holds a list, not a state dict"):
        read_state_dict(path)


def test_broken_files(tmp_path):
    assert "no such file" in _message(tmp_path / "missing.pth")

    good = tmp_path / "good.pth"
    torch.save(_module().state_dict(), good)
    raw = good.read_bytes()
    cut = tmp_path / "cut.pth"
    cut.write_bytes(raw[: len(raw) // 2])
    assert "truncated or corrupt" in _message(cut)

    legacy = tmp_path / "legacy.pth"
    torch.save(_module().state_dict(), legacy, _use_new_zipfile_serialization=False)
    for fraction in (2, 10):
        cut.write_bytes(legacy.read_bytes()[: -len(legacy.read_bytes()) // fraction])
        assert "truncated or corrupt" in _message(cut)

    missing_record = tmp_path / "missing_record.pth"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(missing_record, "w") as dst:
        for info in src.infolist():
            if not info.filename.endswith("/data/1"):
                dst.writestr(info, src.read(info))
    message = _message(missing_record)
    assert "data/1" in message and "missing" in message

    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    assert "empty" in _message(empty)

    noise = tmp_path / "noise.pth"
    noise.write_bytes(bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8)))
    assert "not a PyTorch file" in _message(noise)

    json_file = tmp_path / "config.pth"
    json_file.write_text('{"weights": [1, 2, 3]}')
    assert "not a PyTorch file" in _message(json_file)

    npz = tmp_path / "arrays.pth"
    with open(npz, "wb") as f:
        np.savez(f, a=np.ones(2))
    assert "not a PyTorch file" in _message(npz)

    plain = tmp_path / "plain_pickle.pth"
    plain.write_bytes(pickle.dumps({"a": 1}, protocol=2))
    assert "not a PyTorch file" in _message(plain)

    tar = tmp_path / "old.pth"
    tar.write_bytes(b"tensors".ljust(257, b"\0") + b"ustar\x0000" + b"\0" * 300)
    assert "tar-format" in _message(tar)

    f8 = tmp_path / "f8.pth"
    torch.save({"w": torch.zeros(2, dtype=torch.float8_e4m3fn)}, f8)
    assert "unsupported dtype torch.float8_e4m3fn" in _message(f8)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit is deprecated, its files still exist
def test_a_torchscript_archive(tmp_path):
    script = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), script)
    assert "TorchScript" in _message(script)


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_pickles_that_would_run_code_are_refused(tmp_path):
    marker = tmp_path / "pwned"
    hostile = {"weight": torch.ones(2), "payload": _RunsCode(marker)}
    for name, write in [
        ("zip.pth", lambda p: torch.save(hostile, p)),
        ("legacy.pth", lambda p: torch.save(hostile, p, _use_new_zipfile_serialization=False)),
        ("plain.pth", lambda p: p.write_bytes(pickle.dumps(_RunsCode(marker), protocol=2))),
        ("plain4.pth", lambda p: p.write_bytes(pickle.dumps(_RunsCode(marker), protocol=4))),
    ]:
        path = tmp_path / name
        write(path)
        message = _message(path)
        assert f"the pickle asks for {os.system.__module__}.system, which could run code" in message, message
        assert "refused" in message
        assert not marker.exists()


def test_zip_with_a_hostile_data_pkl(tmp_path):
    path = tmp_path / "model.pth"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        archive.writestr("model/data.pkl", b"cbuiltins\neval\n(S'1+1'\ntR.")
        archive.writestr("model/version", b"3\n")
    path.write_bytes(buf.getvalue())
    message = _message(path)
    assert "builtins.eval" in message and "could run code" in message


def test_a_pickled_module_is_refused_with_a_hint(tmp_path):
    for legacy in (False, True):
        path = tmp_path / f"whole_{legacy}.pth"
        torch.save(_module(), path, _use_new_zipfile_serialization=not legacy)
        message = _message(path)
        assert "refused" in message and "_Small" in message
        assert "save model.state_dict() instead" in message
