"""Registry and factory: names, defaults, argument validation, plugging in new models."""

import keras
import pytest

from face_recognition_tf.errors import ConfigError
from face_recognition_tf.models import (
    ArcFace,
    CombinedMargin,
    CosFace,
    SoftmaxHead,
    SphereFace,
    TripletHead,
    backbone_names,
    build_backbone,
    build_head,
    factory,
    head_names,
    register_backbone,
    register_head,
)


def test_names():
    assert backbone_names() == ["mbf_large", "mobilefacenet", "r100", "r18", "r200", "r34", "r50"]
    assert head_names() == ["arcface", "combined", "cosface", "softmax", "sphereface", "triplet"]


@pytest.mark.parametrize(
    "name,kwargs,cls,expected",
    [
        ("arcface", {}, ArcFace, {"s": 64.0, "m": 0.5, "easy_margin": False}),
        ("cosface", {}, CosFace, {"s": 64.0, "m": 0.35}),
        ("cosface", {"m": 0.4, "s": 30.0}, CosFace, {"s": 30.0, "m": 0.4}),
        ("sphereface", {}, SphereFace, {"m": 4, "lambda_": 0.0}),
        ("sphereface", {"m": 2.0, "lambda_": 5.0}, SphereFace, {"m": 2, "lambda_": 5.0}),
        ("combined", {"m": 0.9}, CombinedMargin, {"m1": 1.0, "m2": 0.5, "m3": 0.0}),
        ("combined", {"m1": 1.35, "m2": 0.0, "m3": 0.1}, CombinedMargin,
         {"m1": 1.35, "m2": 0.0, "m3": 0.1}),
        ("softmax", {"s": 10.0, "m": 0.2}, SoftmaxHead, {"num_classes": 5}),
        ("arcface", {}, ArcFace, {"gradient": "exact"}),
        ("sphereface", {}, SphereFace, {"form": "normalized", "lambda_base": 1000.0, "lambda_gamma": 0.12,
                                        "lambda_power": 1.0, "lambda_min": 5.0}),
        ("triplet", {}, TripletHead, {"margin": 0.5, "mining": "batch_hard"}),
        ("triplet", {"m": 0.2, "mining": "semi_hard", "s": 3.0}, TripletHead, {"margin": 0.2, "mining": "semi_hard"}),
    ],
)
def test_head_defaults_and_arguments(name, kwargs, cls, expected):
    head = build_head(name, 5, 8, **kwargs)
    assert type(head) is cls
    if name == "triplet":
        assert head.weights == []  # no class centres
    else:
        assert head.kernel.shape == (8, 5)
    config = head.get_config()
    assert {k: config[k] for k in expected} == expected


def test_backbone_name_is_configurable():
    assert build_backbone("r18", 8, width_multiplier=0.25).name == "iresnet18"
    assert build_backbone("r18", 8, width_multiplier=0.25, model_name="mine").name == "mine"


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"name": "resnet50"}, "unknown backbone 'resnet50'; choose one of mbf_large, mobilefacenet, r100"),
        ({"normalization": "layer"}, "unknown normalization 'layer'"),
        ({"embedding_size": 0}, "embedding_size"),
        ({"dropout": 1.0}, "dropout"),
        ({"width_multiplier": 0.0}, "width_multiplier"),
        ({"weight_decay": -1.0}, "weight_decay"),
        ({"bn_momentum": 1.5}, "bn_momentum"),
        ({"bn_epsilon": 0.0}, "bn_epsilon"),
        ({"groups": 0}, "groups"),
        ({"input_shape": (112, 112, 1)}, "input_shape"),
        ({"input_shape": (8, 8, 3)}, "input_shape"),
        ({"normalization": "batch_renorm", "renorm_clipping": {"rmax": 3, "bogus": 1}}, "bogus"),
    ],
)
def test_bad_backbone_arguments_are_config_errors(kwargs, match):
    kwargs = {"name": "r18", **kwargs}
    with pytest.raises(ConfigError, match=match):
        build_backbone(kwargs.pop("name"), **kwargs)


def test_registering_new_models(monkeypatch):
    monkeypatch.setattr(factory, "_BACKBONES", dict(factory._BACKBONES))
    monkeypatch.setattr(factory, "_HEADS", dict(factory._HEADS))

    @register_backbone("tiny")
    def tiny(embedding_size, *, norm, input_shape, dropout, width_multiplier, weight_decay, name):
        inputs = keras.Input(input_shape)
        x = keras.layers.GlobalAveragePooling2D()(inputs)
        x = norm(3, "bn")(x)
        return keras.Model(inputs, keras.layers.Dense(embedding_size)(x), name=name or "tiny")

    @register_head("cos_plain")
    def cos_plain(num_classes, embedding_size, *, s, weight_decay, **options):
        return CosFace(num_classes, embedding_size, s=s, m=0.0, weight_decay=weight_decay)

    assert "tiny" in backbone_names() and "cos_plain" in head_names()
    model = build_backbone("tiny", 6, "group", input_shape=(16, 16, 3))
    assert model.output_shape == (None, 6) and model.name == "tiny"
    head = build_head("cos_plain", 4, 6, s=2.0, m=0.3, m1=2.0)  # arguments it does not take are not passed
    assert head.get_config()["m"] == 0.0 and head.s == 2.0
    with pytest.raises(ValueError, match="already registered"):
        register_backbone("r50")(tiny)


def test_builtin_names_known_without_tensorflow_match_the_registries():
    # config checks use model_names while the factory is not imported; the two lists must agree
    from face_recognition_tf.model_names import BUILTIN_BACKBONES, BUILTIN_HEADS

    assert set(factory._BACKBONES) == set(BUILTIN_BACKBONES)
    assert set(factory._HEADS) == set(BUILTIN_HEADS)
