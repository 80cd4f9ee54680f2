"""Configs: every packaged recipe loads; typos and wrong types are errors naming the key and file."""

import pytest
from omegaconf import OmegaConf

from face_recognition_tf.config import PACKAGED_CONFIGS, load_config, resolve_config_path, save_config
from face_recognition_tf.errors import ConfigError
from face_recognition_tf.training.model_args import backbone_kwargs, head_kwargs


@pytest.mark.parametrize("name", sorted(p.stem for p in PACKAGED_CONFIGS.glob("*.yaml")))
def test_packaged_configs_load(name):
    cfg = load_config(name)
    assert cfg.data.num_classes is None  # never typed: it comes from the manifest


def test_recipes_follow_insightface_r50():
    for name in ("casia_r50", "ms1m_r50"):
        cfg = load_config(name)
        t = cfg.train
        assert cfg.model.backbone == "r50" and cfg.head.name == "arcface"
        assert (cfg.head.s, cfg.head.m) == (64.0, 0.5)
        assert (t.optimizer, t.momentum, t.lr, t.lr_reference_batch, t.weight_decay) == ("sgd", 0.9, 0.1, 512, 5e-4)
        assert t.batch_size * t.accumulation_steps == 512
        assert t.schedule.warmup_steps > 0
    assert load_config("ms1m_r50_renorm").model.normalization == "batch_renorm"


def test_bare_name_and_path_resolve(tmp_path):
    assert resolve_config_path("quickstart") == PACKAGED_CONFIGS / "quickstart.yaml"
    assert resolve_config_path("ms1m_r50.yaml") == PACKAGED_CONFIGS / "ms1m_r50.yaml"
    with pytest.raises(ConfigError, match="not found"):
        resolve_config_path(tmp_path / "nope.yaml")


def test_overrides_apply_with_types():
    cfg = load_config("quickstart", ["train.lr=0.05", "train.schedule.milestones=[0.3,0.6]", "head.m=0.4"])
    assert cfg.train.lr == 0.05 and list(cfg.train.schedule.milestones) == [0.3, 0.6] and cfg.head.m == 0.4


@pytest.mark.parametrize("override, message", [
    ("train.lrr=1", "unknown key 'train.lrr'"),
    ("optimiser.lr=1", "unknown key 'optimiser'"),
    ("train.lr=fast", "bad value for 'train.lr'"),
    ("train.batch_size=1.5", "bad value for 'train.batch_size'"),
    ("train.lr", "expected key=value"),
    ("model.backbone=r7", "'model.backbone' is 'r7'"),
    ("train.batch_size=0", "'train.batch_size' must be positive"),
    ("train.schedule.milestones=[0.8,0.2]", "milestones"),
    ("train.reg_coef_decay=1.5", "reg_coef_decay"),
])
def test_bad_overrides(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config("quickstart", [override])


def test_unknown_key_and_wrong_type_in_file_name_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  batch_sise: 64\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: unknown key 'train\.batch_sise'") as info:
        load_config(bad)
    assert "batch_size" in str(info.value)  # the message lists the known keys
    bad.write_text("train:\n  max_steps: lots\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: bad value for 'train\.max_steps'"):
        load_config(bad)
    bad.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(bad)
    bad.write_text("train: {lr: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml"):
        load_config(bad)


def test_base_chain_and_loop(tmp_path):
    (tmp_path / "a.yaml").write_text("base: quickstart\nname: a\ntrain:\n  lr: 0.5\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\ntrain:\n  batch_size: 7\n")
    cfg = load_config(tmp_path / "b.yaml")
    assert (cfg.name, cfg.train.lr, cfg.train.batch_size, cfg.model.backbone) == ("a", 0.5, 7, "r18")
    (tmp_path / "c.yaml").write_text("base: d.yaml\n")
    (tmp_path / "d.yaml").write_text("base: c.yaml\n")
    with pytest.raises(ConfigError, match="loops"):
        load_config(tmp_path / "c.yaml")


def test_model_kwargs_follow_regularization_mode():
    cfg = load_config("ms1m_r50")
    spec = backbone_kwargs(cfg)
    # insightface's SGD weight decay wd adds wd*w to the gradient; Keras L2(f) adds 2*f*w
    assert spec["weight_decay"] == pytest.approx(2.5e-4)
    assert spec["name"] == "r50" and spec["input_shape"] == [112, 112, 3]
    assert head_kwargs(cfg, 10)["num_classes"] == 10
    cfg = load_config("ms1m_r50", ["train.regularization=decoupled"])
    assert backbone_kwargs(cfg)["weight_decay"] == 0.0 and head_kwargs(cfg, 10)["weight_decay"] == 0.0


def test_saved_config_round_trips(tmp_path):
    cfg = load_config("casia_r50", ["train.lr=0.2"])
    cfg.data.num_classes = 10572
    save_config(cfg, tmp_path / "run" / "config.yaml")
    again = load_config(tmp_path / "run" / "config.yaml")
    assert OmegaConf.to_container(again) == OmegaConf.to_container(cfg)
    assert not list((tmp_path / "run").glob(".*tmp"))


def test_model_names_come_from_the_registries(monkeypatch):
    from face_recognition_tf.models import factory

    monkeypatch.setattr(factory, "_BACKBONES", dict(factory._BACKBONES))
    monkeypatch.setattr(factory, "_HEADS", dict(factory._HEADS))
    factory.register_backbone("tiny_registered")(lambda embedding_size, **kwargs: None)
    factory.register_head("plain_registered")(lambda num_classes, embedding_size, **kwargs: None)
    cfg = load_config("quickstart", ["model.backbone=tiny_registered", "head.name=plain_registered"])
    assert (cfg.model.backbone, cfg.head.name) == ("tiny_registered", "plain_registered")
    assert load_config("quickstart", ["model.backbone=mbf_large"]).model.backbone == "mbf_large"
    with pytest.raises(ConfigError, match=r"quickstart\.yaml with overrides model\.backbone=r7: 'model\.backbone' "
                                          r"is 'r7'; choose one of .*r50.*tiny_registered"):
        load_config("quickstart", ["model.backbone=r7"])
    with pytest.raises(ConfigError, match=r"'head\.name' is 'arcfase'; choose one of .*plain_registered"):
        load_config("quickstart", ["head.name=arcfase"])


def test_loading_a_config_does_not_import_tensorflow():
    import subprocess
    import sys

    code = ("import sys; from face_recognition_tf.config import load_config; load_config('ms1m_r50', "
            "['train.strategy=mirrored', 'model.backbone=mobilefacenet']); print('tensorflow' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "False", result.stderr
