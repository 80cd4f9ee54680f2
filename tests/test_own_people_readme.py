"""README section 7, "Recognise your own people", run as written: raw photos of three people (matplotlib's
grace_hopper.jpg, scikit-image's astronaut and cameraman, each moved, turned, relit and re-compressed into six
"photos") go through align, split, convert, make-pairs, train, calibrate and report.

The commands are read from the README itself, so the README cannot drift from the code.  Only sizes are
added for a test on two cores: three folds instead of ten (three people give three same-person pairs), a
handful of training steps, and a tiny untrained MobileFaceNet standing in for the imported model at
`models/w600k_r50` (the numbers are not the point; every step running on real photos is).
"""

import json
import re
import shlex
from pathlib import Path

import cv2
import numpy as np
import pytest

from face_recognition_tf.cli import main as frtf

from own_people import tiny_model_folder

README = Path(__file__).resolve().parents[1] / "README.md"

# what a two-core test adds to each README command (argparse and OmegaConf take the last value given)
EXTRA = {
    "align": ["--workers", "1", "--no-progress"],
    "split": ["--val", "0.34", "--test", "0.34"],
    "make-pairs": ["--folds", "3"],
    "train": ["train.max_steps=8", "train.batch_size=8", "train.schedule.warmup_steps=1",
              "validation.every_steps=4", "validation.folds=3", "checkpoint.every_steps=4",
              "finetune.unfreeze=[{step: 4, layers: all}]", "log.progress=false"],
}


def readme_commands() -> list[list[str]]:
    """The `frtf` command lines of README's "Recognise your own people" block, comments stripped."""
    text = README.read_text()
    section = text[text.index("### 7. Recognise your own people"):]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [shlex.split(line, comments=True) for line in block.splitlines() if line.startswith("frtf ")]


def _people_photos(root: Path) -> dict[str, Path]:
    """root/<name>/<k>.jpg: six varied photos of each of three real people; returns one raw photo each."""
    import skimage.data
    from matplotlib import cbook

    rng = np.random.default_rng(0)
    sources = {
        "grace": cv2.imread(str(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))),
        "eileen": cv2.cvtColor(skimage.data.astronaut(), cv2.COLOR_RGB2BGR),
        "cameraman": cv2.cvtColor(skimage.data.camera(), cv2.COLOR_GRAY2BGR),
    }
    for name, image in sources.items():
        (root / name).mkdir(parents=True)
        h, w = image.shape[:2]
        for k in range(6):
            matrix = cv2.getRotationMatrix2D((w / 2, h / 2), rng.uniform(-10, 10), rng.uniform(0.85, 1.15))
            matrix[:, 2] += rng.uniform(-15, 15, 2)
            photo = cv2.warpAffine(image, matrix, (w, h), borderMode=cv2.BORDER_REFLECT)
            photo = np.clip(photo * rng.uniform(0.75, 1.25), 0, 255).astype(np.uint8)
            cv2.imwrite(str(root / name / f"{k}.jpg"), photo, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(70, 95))])
    return {name: root / name / "0.jpg" for name in sources}


def test_readme_sequence_from_raw_photos_to_report(tmp_path, monkeypatch, capsys):
    pytest.importorskip("skimage")
    commands = readme_commands()
    assert [c[1] for c in commands] == ["align", "split", "convert", "make-pairs", "train", "calibrate", "report"]
    monkeypatch.chdir(tmp_path)
    raw = _people_photos(Path("photos"))
    init = next(arg.split("=", 1)[1] for arg in commands[4] if arg.startswith("finetune.init="))
    tiny_model_folder(init)

    for argv in commands:
        assert frtf(argv[1:] + EXTRA.get(argv[1], [])) == 0, argv
    out = capsys.readouterr().out

    align = json.loads(Path("aligned/align_report.json").read_text())
    assert align["counts"].get("ok") == 18, align["counts"]
    assert sorted(p.name for p in Path("aligned/contact_sheets").iterdir()) == [
        "cameraman.png", "eileen.png", "grace.png"]
    assert json.loads(Path("parts/split.json").read_text())["aligned"] is True
    assert {p.name for p in Path("parts/test").iterdir()} == {"cameraman", "eileen", "grace"}
    model = Path("output/mine")
    assert (model / "embedding.keras").is_file() and (model / "best" / "backbone.json").is_file()
    assert json.loads((model / "best" / "threshold.json").read_text())["far_target"] == pytest.approx(1e-3)

    report = json.loads(Path("report/report.json").read_text())
    ident = report["identification"]
    assert ident["probes"] == ident["probes_scored"] == 6 and 0.0 <= ident["rank1"] <= 1.0
    assert report["aligned"] is True and "calibrated" in report["threshold"]["source"]
    assert Path("report/report.md").is_file() and Path("report/roc.png").stat().st_size > 0
    assert "rank-1" in out

    # and the sentence after the block: name the person in a new, raw photo
    assert frtf(["identify", "output/mine/best", str(raw["grace"]), "--gallery", "parts/train"]) == 0
    assert re.search(r"grace|eileen|cameraman|unknown", capsys.readouterr().out)
