"""`frtf export MODEL OUT.onnx --layout insightface`: a file insightface's model zoo uses as it uses its own.

insightface (`model_zoo.get_model` -> `ArcFaceONNX`) routes a one-input, one-output graph with a square
input of side >= 112 (a multiple of 16) to recognition, and decides the preprocessing from the graph: when
one of its first 8 nodes is named "Sub..." and one "Mul..." it feeds raw pixels, else (x - 127.5) / 127.5.
Its `get_feat` builds the batch with cv2.dnn.blobFromImages from BGR images (swapRB=True).  That recipe is
emulated here and must give our Keras model's embeddings; `frtf import` of the export must rebuild the same
model (round trip).  Checked for an imported insightface r18 and for models built here (our own
(x - 127.5) / 128 input, BN epsilon 2e-5, and a per-channel normalisation).
"""

import os

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
cv2 = pytest.importorskip("cv2")

from import_helpers import (  # noqa: E402
    assert_same_embeddings, face_images, folder_embed, keras_embed, leftovers, read_json, run_frtf,
    torch_reference,
)
from face_recognition_tf import cli  # noqa: E402
from face_recognition_tf.errors import ConfigError, FaceRecognitionError  # noqa: E402
from face_recognition_tf.export import export_model  # noqa: E402
from face_recognition_tf.model_io import load_embedding_model  # noqa: E402
from face_recognition_tf.models import build_backbone  # noqa: E402
from face_recognition_tf.pretrained import import_model  # noqa: E402

PER_CHANNEL = ([123.675, 116.28, 103.53], [58.395, 57.12, 57.375])


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("insightface_layout")


@pytest.fixture(scope="module")
def images():
    return face_images(4, seed=7)


def _randomise(model, seed):
    """Trained-looking weights, as tests/torch_reference.py's randomize gives the PyTorch models: kernels
    N(0, 1/fan_in) (activations stay O(1) through the net), BatchNorm statistics and affine parameters,
    PReLU slopes.  (A fresh model's BN statistics are 0/1 and its embeddings hardly depend on the image.)"""
    import keras

    rng = np.random.default_rng(seed)
    for layer in model.layers:
        kernel = getattr(layer, "kernel", None)
        if kernel is not None:
            shape = tuple(kernel.shape)
            depthwise = isinstance(layer, keras.layers.DepthwiseConv2D)
            fan_in = shape[0] * shape[1] if depthwise else int(np.prod(shape[:-1]))
            kernel.assign(rng.normal(0, fan_in ** -0.5, shape))
            if getattr(layer, "bias", None) is not None:
                layer.bias.assign(rng.normal(0, 0.05, tuple(layer.bias.shape)))
        if isinstance(layer, keras.layers.BatchNormalization):
            shape = tuple(layer.moving_mean.shape)
            layer.moving_mean.assign(rng.normal(0, 0.1, shape))
            layer.moving_variance.assign(rng.uniform(0.5, 2.0, shape))
            if layer.gamma is not None:
                layer.gamma.assign(rng.uniform(0.5, 1.5, shape))
            if layer.beta is not None:
                layer.beta.assign(rng.normal(0, 0.1, shape))
        elif isinstance(layer, keras.layers.PReLU):
            layer.alpha.assign(rng.uniform(-0.1, 0.6, tuple(layer.alpha.shape)))
    return model


@pytest.fixture(scope="module")
def built_here(workdir):
    """kind -> (.keras path, spec, the model): MobileFaceNets as `frtf train` builds them, saved as .keras."""
    cache = {}

    def get(kind):
        if kind not in cache:
            spec = {"name": "mobilefacenet", "embedding_size": 64}
            if kind == "per_channel":
                spec.update(input_mean=PER_CHANNEL[0], input_std=PER_CHANNEL[1])
            model = _randomise(build_backbone(**spec), seed=len(cache))
            path = workdir / f"here_{kind}.keras"
            model.save(path)
            cache[kind] = (path, spec, model)
        return cache[kind]

    return get


@pytest.fixture(scope="module")
def imported_r18(workdir):
    """An insightface r18 (64-D) ONNX file imported as a model folder."""
    torch = pytest.importorskip("torch")
    ref = torch_reference()
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        src = workdir / "r18.onnx"
        ref.export_onnx(ref.randomize(ref.get_model("r18", num_features=64), seed=4), src)
    finally:
        torch.set_num_threads(before)
    folder = workdir / "r18_imported"
    import_model(src, folder)
    return folder


# ------------------------------------------------------------------------------------------------
# insightface's side, emulated
# ------------------------------------------------------------------------------------------------

def _insightface_recognition(path):
    """What insightface's model_zoo + ArcFaceONNX.__init__ decide about the file: (session, mean, std)."""
    proto = onnx.load(str(path))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    inputs, outputs = session.get_inputs(), session.get_outputs()
    shape = inputs[0].shape
    # model_zoo.get_model's routing to ArcFaceONNX
    assert len(outputs) < 5 and len(inputs) == 1
    assert shape[2] == shape[3] and shape[2] >= 112 and shape[2] % 16 == 0 and shape[2] not in (96, 192)
    find_sub = find_mul = False
    for node in proto.graph.node[:8]:
        if node.name.startswith("Sub") or node.name.startswith("_minus"):
            find_sub = True
        if node.name.startswith("Mul") or node.name.startswith("_mul"):
            find_mul = True
    mean, std = (0.0, 1.0) if find_sub and find_mul else (127.5, 127.5)
    return session, mean, std


def _insightface_get_feat(path, images_rgb):
    session, mean, std = _insightface_recognition(path)
    assert (mean, std) == (0.0, 1.0), "insightface would not feed this file raw pixels"
    bgr = [np.ascontiguousarray(image[:, :, ::-1]) for image in images_rgb]  # as cv2.imread gives them
    side = session.get_inputs()[0].shape[2]
    blob = cv2.dnn.blobFromImages(bgr, 1.0 / std, (side, side), (mean, mean, mean), swapRB=True)
    assert blob.shape == (len(bgr), 3, side, side) and blob.dtype == np.float32
    return session.run([o.name for o in session.get_outputs()], {session.get_inputs()[0].name: blob})[0]


def _check_layout(path, dim, opset):
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    graph = proto.graph
    assert [i.name for i in graph.input] == ["data"]
    dims = graph.input[0].type.tensor_type.shape.dim
    assert dims[0].HasField("dim_param") and not dims[0].HasField("dim_value")
    assert [d.dim_value for d in dims[1:]] == [3, 112, 112]
    assert len(graph.output) == 1
    out_dims = graph.output[0].type.tensor_type.shape.dim
    assert out_dims[-1].dim_value == dim
    assert [node.name for node in graph.node[:2]] == ["Sub_mean", "Mul_scale"]
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) == opset
    # the runtime agrees: any batch size, D-dimensional output
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert len(session.get_outputs()) == 1
    out = session.run(None, {"data": np.full((3, 3, 112, 112), 127.0, np.float32)})[0]
    assert out.shape == (3, dim) and np.all(np.isfinite(out))


def _round_trip(path, folder, expected, spec_expected, images):
    """`frtf import` of the export rebuilds the same model."""
    report = import_model(path, folder)
    assert report["parity"]["max_abs_diff"] <= 1e-4
    assert "graph" in report["input_normalization"]["source"]
    spec = read_json(folder / "backbone.json")
    for key in ("name", "embedding_size", "blocks", "scale"):
        if key in spec_expected:
            assert spec[key] == spec_expected[key], key
    assert np.allclose(spec["input_mean"], spec_expected["input_mean"], rtol=1e-5, atol=0)
    assert np.allclose(spec["input_std"], spec_expected["input_std"], rtol=1e-5, atol=0)
    assert spec["bn_epsilon"] == pytest.approx(spec_expected["bn_epsilon"], rel=1e-5)
    assert_same_embeddings(folder_embed(folder, images), expected)


# ------------------------------------------------------------------------------------------------
# tests
# ------------------------------------------------------------------------------------------------

def test_cli_export_of_an_imported_model(imported_r18, workdir, images):
    out = workdir / "r18_insightface.onnx"
    result = run_frtf("export", imported_r18, out, "--layout", "insightface")
    assert result.returncode == 0, result.stderr
    assert "'data'" in result.stdout and "raw RGB pixels" in result.stdout
    # the command compared its export with the model: "check: max |export - model| = 1.2e-06 ..."
    check = next(line for line in result.stdout.splitlines() if line.startswith("check: max |export - model|"))
    assert float(check.split("=")[1].split()[0]) < 1e-3, check
    assert [line for line in result.stderr.splitlines() if line.strip()] == []
    _check_layout(out, 64, 17)

    model = load_embedding_model(imported_r18)
    expected = keras_embed(model, images)
    assert_same_embeddings(_insightface_get_feat(out, images), expected)

    spec = read_json(imported_r18 / "backbone.json")
    assert (spec["input_mean"], spec["input_std"]) == (127.5, 127.5)  # insightface's, carried by the model
    _round_trip(out, workdir / "r18_round_trip", expected, spec, images)


@pytest.mark.parametrize("opset", [11, 17])
def test_model_built_here(built_here, workdir, images, opset):
    path, spec, model = built_here("standard")
    out = workdir / f"here_op{opset}.onnx"
    source = path if opset == 11 else model  # the saved .keras file, or the Keras model in memory
    assert export_model(source, out, "onnx", layout="insightface", opset=opset) == out
    assert not leftovers(out)
    _check_layout(out, 64, opset)

    expected = keras_embed(model, images)
    assert_same_embeddings(_insightface_get_feat(out, images), expected)
    if opset == 17:
        _round_trip(out, workdir / "here_round_trip", expected,
                    {**spec, "blocks": [1, 4, 6, 2], "scale": 2, "input_mean": 127.5, "input_std": 128.0,
                     "bn_epsilon": 2e-5}, images)


def test_per_channel_normalisation_round_trip(built_here, workdir, images):
    path, spec, model = built_here("per_channel")
    out = workdir / "here_per_channel.onnx"
    export_model(path, out, "onnx", layout="insightface")
    proto = onnx.load(str(out))
    mean = onnx.numpy_helper.to_array(next(i for i in proto.graph.initializer if i.name == "input_mean"))
    assert np.allclose(mean.reshape(-1), PER_CHANNEL[0])  # R, G, B: the order blobFromImages(swapRB) gives

    expected = keras_embed(model, images)
    assert_same_embeddings(_insightface_get_feat(out, images), expected)
    _round_trip(out, workdir / "here_per_channel_round_trip", expected,
                {**spec, "input_mean": PER_CHANNEL[0], "input_std": PER_CHANNEL[1], "bn_epsilon": 2e-5}, images)


def test_insightface_layout_needs_an_onnx_out(built_here, workdir, capsys):
    path, _, _ = built_here("standard")
    out = workdir / "model.tflite"
    with pytest.raises(ConfigError, match="insightface") as info:
        export_model(path, out, layout="insightface")
    assert "\n" not in str(info.value)
    with pytest.raises(ConfigError, match="insightface"):
        export_model(path, out, "tflite", layout="insightface")
    assert not out.exists() and not leftovers(out)

    code = cli.main(["export", str(path), str(out), "--layout", "insightface"])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2
    assert len(err) == 1 and err[0].startswith("frtf export: error:") and "insightface" in err[0], err
    assert not out.exists()


def test_group_norm_model_is_refused(workdir):
    model = build_backbone("mobilefacenet", embedding_size=64, normalization="group")
    out = workdir / "group_norm.onnx"
    with pytest.raises(FaceRecognitionError) as info:
        export_model(model, out, "onnx", layout="insightface")
    message = str(info.value)
    assert "GroupNorm" in message and "insightface" in message and "\n" not in message, message
    assert not os.path.lexists(out) and not leftovers(out)
