"""`frtf import` of arcface_torch PyTorch files: state dicts in every form arcface_torch leaves them.

model.pt / backbone.pth (a plain state dict), a training checkpoint (checkpoint_gpu_0.pt, the backbone
under "state_dict_backbone"), a DistributedDataParallel state dict ("module." prefixes) and the legacy
(pre-zip) serialisation.  The imported folder must give the embeddings PyTorch gives with the same
weights; and the import must work where torch is not installed (the file is read without torch; only
the parity check needs it).
"""

import json
import subprocess
import sys
import textwrap

import pytest

torch = pytest.importorskip("torch")

from import_helpers import (  # noqa: E402
    TOL, assert_same_embeddings, face_images, folder_embed, leftovers, read_json, subprocess_env,
    torch_reference,
)
from face_recognition_tf.pretrained import import_model  # noqa: E402

ref = torch_reference()

NAMES = {"r18": ("r18", None, None), "mbf": ("mobilefacenet", [1, 4, 6, 2], 2)}
FORMS = ["plain", "checkpoint", "ddp", "legacy"]


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("import_pth")


@pytest.fixture(scope="module")
def models():
    """name -> a randomised arcface_torch model (128-D), built once."""
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = ref.randomize(ref.get_model(name, num_features=128), seed=11 + len(name))
        return cache[name]

    return get


@pytest.fixture(scope="module")
def images():
    return face_images(4, seed=5)


@pytest.fixture(scope="module")
def expected(models, images):
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = ref.torch_embed(models(name), images)
        return cache[name]

    return get


def _save(model, path, form):
    if form == "legacy":
        torch.save(model.state_dict(), str(path), _use_new_zipfile_serialization=False)
    else:
        ref.export_state_dict(model, path, wrap=None if form == "plain" else form)
    head = path.read_bytes()[:2]
    assert (head == b"PK") == (form != "legacy"), head  # the legacy format really is the pickle stream
    return path


def _check_folder(out, name, images, expected):
    assert out.is_dir() and not leftovers(out)
    spec = read_json(out / "backbone.json")
    arch, blocks, scale = NAMES[name]
    assert spec["name"] == arch and spec["embedding_size"] == 128
    assert spec["input_shape"] == [112, 112, 3] and spec["bn_epsilon"] == 1e-5
    assert spec["input_mean"] == 127.5 and spec["input_std"] == 127.5
    if blocks:
        assert spec["blocks"] == blocks and spec["scale"] == scale
    assert_same_embeddings(folder_embed(out, images), expected)
    return spec


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("name", list(NAMES))
def test_import_state_dict(workdir, models, images, expected, name, form):
    src = _save(models(name), workdir / f"{name}_{form}.pth", form)
    out = workdir / f"{name}_{form}_model"
    report = import_model(src, out)
    parity = report["parity"]
    assert "PyTorch" in parity["reference"]
    assert parity["max_abs_diff"] is not None and 0 <= parity["max_abs_diff"] <= TOL
    info = read_json(out / "model.json")
    assert info["source"]["format"] == "pytorch" and info["source"]["file"] == src.name
    assert info["parity"] == parity
    assert info["input_normalization"]["formula"] == "(x - 127.5) / 127.5"
    _check_folder(out, name, images, expected(name))


def test_state_dict_under_an_unknown_suffix(workdir, models, images, expected):
    """No .pth/.pt suffix: the zip signature says it is a PyTorch file."""
    src = _save(models("mbf"), workdir / "backbone.weights", "plain")
    out = workdir / "weights_model"
    report = import_model(src, out)
    assert report["source"]["format"] == "pytorch"
    assert report["parity"]["max_abs_diff"] <= TOL
    _check_folder(out, "mbf", images, expected("mbf"))


def test_import_without_torch(workdir, models, images, expected):
    """With torch unimportable the file is still read and imported; only the parity check is skipped,
    and says why.  The embeddings are checked here, against PyTorch in this process."""
    src = _save(models("mbf"), workdir / "mbf_no_torch.pth", "checkpoint")
    out = workdir / "mbf_no_torch_model"
    # torch made unimportable as if not installed.  (sys.modules["torch"] = None would do it too, but
    # scipy, imported under Keras through scikit-learn, then calls getattr(sys.modules["torch"], ...)
    # and fails.)
    script = textwrap.dedent(f"""
        import importlib.abc, json, sys

        class NoTorch(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name == "torch" or name.startswith("torch."):
                    raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
                return None

        sys.meta_path.insert(0, NoTorch())
        try:
            import torch
        except ImportError:
            pass
        else:
            raise SystemExit("torch is still importable")
        from face_recognition_tf.pretrained import import_model
        report = import_model({str(src)!r}, {str(out)!r})
        assert "torch" not in sys.modules
        print("REPORT " + json.dumps(report["parity"]))
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            env=subprocess_env(), timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    line = next(line for line in result.stdout.splitlines() if line.startswith("REPORT "))
    parity = json.loads(line[len("REPORT "):])
    assert parity["max_abs_diff"] is None
    assert "not installed" in parity["reference"] and "PyTorch" in parity["reference"]
    assert read_json(out / "model.json")["parity"] == parity
    _check_folder(out, "mbf", images, expected("mbf"))
