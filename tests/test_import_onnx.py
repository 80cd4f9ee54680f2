"""`frtf import` of insightface / arcface_torch ONNX files: every export form gives back the same model.

The files are made by the PyTorch stand-ins of tests/torch_reference.py the way arcface_torch's
torch2onnx.py makes them (BatchNorm folded into the convs or kept, opsets 9 to 17), plus hand-edited
variants of what other exporters write (an MXNet-style graph that normalises its own input, MatMul + Add
or an untransposed Gemm for the fc layer, PReLU slopes of other shapes).  Each imported folder is then
loaded the way every command loads it and compared, on real-photo crops, with onnxruntime running the
original file.
"""

import hashlib
from collections import Counter

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from onnx import helper, numpy_helper  # noqa: E402

from import_helpers import (  # noqa: E402
    TOL, assert_same_embeddings, face_images, folder_embed, leftovers, read_json, recognizer_embed,
    torch_reference,
)
from face_recognition_tf.models.input_normalization import InputNormalization  # noqa: E402
from face_recognition_tf.pretrained import import_model  # noqa: E402

ref = torch_reference()


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # small shared CPUs: torch's spinning pool is slower than one thread
    yield
    torch.set_num_threads(before)


# (case id, arcface_torch name, fold_bn, opset, num_features)
# FaceRecognizer is checked on the first of each architecture family (tracing its tf.function costs seconds)
RECOGNIZER_CASES = {"r18-folded-op11", "mbf-kept-op11"}
CASES = [
    ("r18-folded-op11", "r18", True, 11, 128),
    ("r18-kept-op13", "r18", False, 13, 64),
    ("mbf-folded-op9", "mbf", True, 9, 64),
    ("mbf-folded-op17", "mbf", True, 17, 128),
    ("mbf-kept-op11", "mbf", False, 11, 64),
    ("mbf_large-folded-op11", "mbf_large", True, 11, 64),
    ("r50-folded-op11", "r50", True, 11, 64),  # w600k_r50.onnx's depth (its 512-D fc would only cost time)
]
ARCH = {  # what backbone.json must say: name, blocks, scale
    "r18": ("r18", None, None),
    "r50": ("r50", None, None),
    "mbf": ("mobilefacenet", [1, 4, 6, 2], 2),
    "mbf_large": ("mobilefacenet", [2, 8, 12, 4], 4),
}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("import_onnx")


@pytest.fixture(scope="module")
def exported(workdir):
    """Case id -> the ONNX file of a randomised arcface_torch model (each exported once)."""
    cache = {}

    def get(case_id):
        if case_id not in cache:
            index = [c[0] for c in CASES].index(case_id)
            _, name, fold_bn, opset, dim = CASES[index]
            model = ref.randomize(ref.get_model(name, num_features=dim), seed=index + 1)
            path = workdir / f"{case_id}.onnx"
            ref.export_onnx(model, path, fold_bn=fold_bn, opset=opset)
            cache[case_id] = path
        return cache[case_id]

    return get


@pytest.fixture(scope="module")
def images():
    return face_images(4, seed=3)


def _ops(path):
    return Counter(node.op_type for node in onnx.load(str(path)).graph.node)


def _check_imported(src, out, report, images, *, mean=127.5, std=127.5, onnx_mean=127.5, onnx_std=127.5,
                    reference=None, recognizer=False):
    """The report, the folder's files, and the folder's embeddings (model_io's loader, and with
    `recognizer` FaceRecognizer's too) against onnxruntime running `reference` (default: src) on
    (x - onnx_mean) / onnx_std."""
    assert out.is_dir() and not leftovers(out)
    assert sorted(p.name for p in out.iterdir()) == ["backbone.json", "embedding.keras", "model.json"]
    parity = report["parity"]
    assert parity["reference"].startswith("onnxruntime")
    assert parity["max_abs_diff"] is not None and 0 <= parity["max_abs_diff"] <= TOL
    assert parity["tolerance"] == TOL and parity["batch"] >= 1

    spec = read_json(out / "backbone.json")
    info = read_json(out / "model.json")
    assert info["backbone"] == spec
    assert info["parity"] == parity
    assert info["source"]["format"] == "onnx" and info["source"]["file"] == src.name
    assert info["source"]["sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()
    assert np.allclose(spec["input_mean"], mean, atol=1e-6, rtol=0)
    assert np.allclose(spec["input_std"], std, atol=1e-6, rtol=0)
    assert info["input_normalization"]["mean"] == spec["input_mean"]
    assert info["input_normalization"]["std"] == spec["input_std"]

    expected = ref.onnx_embed(reference or src, images, mean=onnx_mean, std=onnx_std)
    assert_same_embeddings(folder_embed(out, images), expected)
    if recognizer:  # one forward pass per crop, no flip
        assert_same_embeddings(recognizer_embed(out, images), expected)
    return spec, info


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_import_arcface_torch_export(workdir, exported, images, case):
    case_id, name, fold_bn, opset, dim = case
    src = exported(case_id)
    out = workdir / f"{case_id}_model"
    report = import_model(src, out)
    spec, info = _check_imported(src, out, report, images, recognizer=case_id in RECOGNIZER_CASES)

    arch, blocks, scale = ARCH[name]
    assert spec["name"] == arch == report["architecture"]
    assert spec["embedding_size"] == dim
    assert spec["input_shape"] == [112, 112, 3]
    assert spec["bn_epsilon"] == pytest.approx(1e-5, rel=1e-6)
    if blocks is not None:
        assert spec["blocks"] == blocks and spec["scale"] == scale
    else:
        assert "blocks" not in spec
    assert info["source"]["opset"] == opset
    assert info["input_normalization"]["source"].startswith("insightface")
    # folded exports had their BatchNorms rebuilt from the conv biases; kept ones loaded them as they are
    assert (report["batch_norms_folded_in_file"] > 0) == fold_bn


def test_mbf_kept_export_has_reshape_flatten_and_matmul_head(exported, workdir, images):
    """MobileFaceNet's `x.view(n, -1)` (a Shape/Gather/Concat/Reshape subgraph) and its bias-free Linear
    (MatMul of a Transpose) are in the kept export: the import above handled exactly these."""
    ops = _ops(exported("mbf-kept-op11"))
    for op in ("Reshape", "Shape", "Gather", "Concat", "MatMul"):
        assert ops[op] >= 1, (op, ops)
    assert ops["Gemm"] == 0 and ops["Flatten"] == 0
    assert ops["BatchNormalization"] == 50


# ------------------------------------------------------------------------------------------------
# hand-edited graphs: what other exporters write
# ------------------------------------------------------------------------------------------------

def _prepend_normalisation(src, dst, mean=127.5, scale=0.0078125):
    """An MXNet-style graph: the input "data" takes raw pixels, Sub(mean) and Mul(scale) come first, and
    the original first nodes read the Mul's output."""
    proto = onnx.load(str(src))
    graph = proto.graph
    name = graph.input[0].name
    for node in graph.node:
        node.input[:] = ["data_normalised" if i == name else i for i in node.input]
    graph.initializer.extend([numpy_helper.from_array(np.array(mean, np.float32), "data_mean"),
                              numpy_helper.from_array(np.array(scale, np.float32), "data_scale")])
    first = [helper.make_node("Sub", [name, "data_mean"], ["data_centred"], name="_minusscalar0"),
             helper.make_node("Mul", ["data_centred", "data_scale"], ["data_normalised"], name="_mulscalar0")]
    nodes = first + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.checker.check_model(proto)
    onnx.save(proto, str(dst))
    return dst


@pytest.fixture(scope="module")
def mxnet_style(exported, workdir):
    return _prepend_normalisation(exported("mbf-folded-op9"), workdir / "mxnet_style.onnx")


def test_graph_that_normalises_its_own_input(mxnet_style, exported, workdir, images):
    original = exported("mbf-folded-op9")
    ops = [n.op_type for n in onnx.load(str(mxnet_style)).graph.node[:2]]
    assert ops == ["Sub", "Mul"]
    # the edited file takes raw pixels and computes what the original computes on (x - 127.5) / 128
    assert_same_embeddings(ref.onnx_embed(mxnet_style, images, mean=0.0, std=1.0),
                           ref.onnx_embed(original, images, mean=127.5, std=128.0), tol=1e-5)

    out = workdir / "mxnet_style_model"
    report = import_model(mxnet_style, out)
    spec, info = _check_imported(mxnet_style, out, report, images, mean=127.5, std=128.0, onnx_mean=0.0,
                                 onnx_std=1.0)
    assert spec["input_mean"] == 127.5 and spec["input_std"] == pytest.approx(128.0, abs=1e-6)
    assert "graph" in info["input_normalization"]["source"]
    # (x - 127.5) / 128 is our own input: the model needs no conversion layer
    from face_recognition_tf.model_io import load_embedding_model

    model = load_embedding_model(out)
    assert not any(isinstance(layer, InputNormalization) for layer in model.layers)


def test_stated_normalisation_composes_with_the_graphs_own(mxnet_style, workdir, images):
    """--input-mean 10 --input-std 2 on a graph that itself computes (g - 127.5) / 128 of its input g:
    the whole model expects (x - (10 + 2 * 127.5)) / (2 * 128)."""
    out = workdir / "mxnet_style_stated"
    report = import_model(mxnet_style, out, input_mean=10.0, input_std=2.0)
    spec, info = _check_imported(mxnet_style, out, report, images, mean=265.0, std=256.0, onnx_mean=10.0,
                                 onnx_std=2.0)
    assert "stated" in info["input_normalization"]["source"]


def test_stated_normalisation(exported, workdir, images):
    src = exported("mbf-folded-op17")
    out = workdir / "stated_model"
    report = import_model(src, out, input_mean=127.5, input_std=128.0)
    spec, info = _check_imported(src, out, report, images, mean=127.5, std=128.0, onnx_mean=127.5,
                                 onnx_std=128.0)
    assert spec["input_mean"] == 127.5 and spec["input_std"] == 128.0
    assert "stated" in info["input_normalization"]["source"]
    # not the default: these images give other embeddings under insightface's (x - 127.5) / 127.5
    assert np.abs(ref.onnx_embed(src, images, 127.5, 128.0) - ref.onnx_embed(src, images)).max() > 1e-4


def test_stated_per_channel_normalisation(exported, workdir, images):
    mean, std = [123.675, 116.28, 103.53], [58.395, 57.12, 57.375]  # ImageNet's, R,G,B
    src = exported("mbf-folded-op17")
    out = workdir / "per_channel_model"
    report = import_model(src, out, input_mean=mean, input_std=std)
    spec, _ = _check_imported(src, out, report, images, mean=mean, std=std, onnx_mean=np.array(mean),
                              onnx_std=np.array(std))
    assert spec["input_mean"] == pytest.approx(mean) and spec["input_std"] == pytest.approx(std)


def _initializers(proto):
    return {init.name: init for init in proto.graph.initializer}


def _gemm_to(proto, form):
    """Rewrite the one Gemm (transB=1, as torch exports a Linear) as MatMul + Add, or as a Gemm with
    transB=0 and the weight stored transposed."""
    inits = _initializers(proto)
    gemms = [n for n in proto.graph.node if n.op_type == "Gemm"]
    assert len(gemms) == 1
    gemm = gemms[0]
    attrs = {a.name: helper.get_attribute_value(a) for a in gemm.attribute}
    assert attrs.get("transB") == 1 and attrs.get("alpha", 1.0) == 1.0 and attrs.get("beta", 1.0) == 1.0
    x, w_name, b_name = gemm.input
    weight = numpy_helper.to_array(inits[w_name])  # (out, in)
    transposed = numpy_helper.from_array(np.ascontiguousarray(weight.T), w_name + "_t")
    proto.graph.initializer.append(transposed)
    if form == "transB0":
        replacement = [helper.make_node("Gemm", [x, w_name + "_t", b_name], list(gemm.output), name="fc_gemm",
                                        transB=0)]
    else:
        replacement = [helper.make_node("MatMul", [x, w_name + "_t"], ["fc_matmul_out"], name="fc_matmul"),
                       helper.make_node("Add", ["fc_matmul_out", b_name], list(gemm.output), name="fc_add")]
    nodes = []
    for node in proto.graph.node:
        nodes.extend(replacement if node is gemm else [node])
    del proto.graph.node[:]
    proto.graph.node.extend(nodes)
    proto.graph.initializer.remove(inits[w_name])
    return proto


@pytest.mark.parametrize("form", ["matmul_add", "transB0"])
def test_fc_as_matmul_add_or_untransposed_gemm(exported, workdir, images, form):
    original = exported("r18-folded-op11")
    proto = _gemm_to(onnx.load(str(original)), form)
    onnx.checker.check_model(proto)
    ops = Counter(n.op_type for n in proto.graph.node)
    if form == "matmul_add":
        assert ops["Gemm"] == 0 and ops["MatMul"] == 1
    src = workdir / f"r18_{form}.onnx"
    onnx.save(proto, str(src))
    out = workdir / f"r18_{form}_model"
    report = import_model(src, out)
    spec, _ = _check_imported(src, out, report, images, reference=original)
    assert spec["name"] == "r18" and spec["embedding_size"] == 128


PRELU_FORMS = ("1C11", "C11", "shared")


def _reshape_prelu_slopes(proto):
    """Rewrite the PRelu slope initializers (torch writes (C, 1, 1)) in turn as (1, C, 1, 1), (C, 1, 1)
    and a single slope shared by every channel (nn.PReLU() without num_parameters)."""
    inits = _initializers(proto)
    forms = Counter()
    for node in proto.graph.node:
        if node.op_type != "PRelu" or node.input[1] not in inits:
            continue
        init = inits[node.input[1]]
        slope = numpy_helper.to_array(init)
        channels = slope.size
        form = PRELU_FORMS[sum(forms.values()) % len(PRELU_FORMS)]
        if form == "1C11":
            value = slope.reshape(1, channels, 1, 1)
        elif form == "C11":
            value = slope.reshape(channels, 1, 1)
        else:
            value = np.array([float(slope.reshape(-1)[0])], np.float32)
        init.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(value, np.float32), init.name))
        forms[form] += 1
    assert all(forms[f] > 0 for f in PRELU_FORMS), forms
    return proto


def test_prelu_slope_shapes(exported, workdir, images):
    original = exported("mbf-folded-op9")
    proto = _reshape_prelu_slopes(onnx.load(str(original)))
    onnx.checker.check_model(proto)
    shapes = {tuple(i.dims) for i in proto.graph.initializer if i.name in
              {n.input[1] for n in proto.graph.node if n.op_type == "PRelu"}}
    assert (1,) in shapes and {len(shape) for shape in shapes} == {1, 3, 4}
    src = workdir / "mbf_prelu_slopes.onnx"
    onnx.save(proto, str(src))
    # shared slopes make it another model: compare with the edited file itself
    assert np.abs(ref.onnx_embed(src, images) - ref.onnx_embed(original, images)).max() > 1e-3
    out = workdir / "mbf_prelu_slopes_model"
    report = import_model(src, out)
    _check_imported(src, out, report, images)
