"""`frtf bench-input DATA`: images/s of the real training pipeline on a person's converted dataset."""

import re

from face_recognition_tf.cli import main
from face_recognition_tf.data.conversion import convert
from face_recognition_tf.data.input.bench_input import STAGES
from face_recognition_tf.data.synthetic.sample import make_sample_dataset


def test_bench_input_reports_rate_per_core_gpus_and_every_stage(tmp_path, capsys):
    src = make_sample_dataset(tmp_path / "src", num_identities=4, images_per_identity=8, pairs_per_set=20)
    convert.convert_recordio(src, tmp_path / "data", num_shards=2, progress=False)
    assert main(["bench-input", str(tmp_path / "data"), "--batch-size", "8", "--batches", "3", "--warmup", "1",
                 "--stages", "--gpu-rate", "50"]) == 0
    out = capsys.readouterr().out
    assert "32 images of 4 identities in 2 shard(s)" in out
    rate = re.search(r"training pipeline: ([\d,]+) images/s \(([\d,]+) per core\)", out)
    assert rate and int(rate.group(1).replace(",", "")) > 0
    assert re.search(r"feeds [\d.]+ GPU\(s\) training at 50 images/s each", out)
    for stage in STAGES:  # one measured row per stage, in pipeline order
        assert re.search(rf"^\s+{stage}\s+[\d,]+ images/s", out, re.M), stage
    assert [m.group(1) for m in re.finditer(r"^\s+(\w+)\s+[\d,]+ images/s", out, re.M)] == list(STAGES)


def test_bench_input_on_a_folder_that_is_not_a_dataset_is_one_line_naming_it(tmp_path, capsys):
    (tmp_path / "photos").mkdir()
    assert main(["bench-input", str(tmp_path / "photos")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(tmp_path / "photos") in err and "not a converted dataset" in err
    assert main(["bench-input", str(tmp_path / "photos"), "--gpu-rate", "0"]) == 2
    assert "--gpu-rate must be positive" in capsys.readouterr().err
