"""Write a `train.rec`/`train.idx`/`property` dataset in any layout real datasets use.

insightface's face2rec writes image records 1..N (sorted by identity), then one identity record per
class (label = [first key, end key)), then the header record 0 (label = [first identity key, end
of identity records]) *last*, so record 0 is not at offset 0; im2rec writes no header and no
identity records.  The sample dataset, the tests and the benchmarks all build datasets here so
every variant the reader must handle is produced by one piece of code.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from face_recognition_tf.data.formats.recordio import IRHeader, RecordIOWriter, pack


def write_rec_dataset(out_dir, items, *, num_classes=None, image_size=(112, 112), header=True,
                      array_labels=False, write_idx=True, write_property=True, shuffle_idx_seed=None,
                      rec_name="train") -> Path:
    """`items`: iterable of (label, jpeg bytes), grouped by label as insightface's are.

    header: insightface layout (identity records + header record 0 written last); False: im2rec.
    array_labels: image labels stored as float arrays [class, 0] (flag 2) instead of scalars.
    shuffle_idx_seed: write the .idx lines in a shuffled order.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rec_path, idx_path = out_dir / f"{rec_name}.rec", out_dir / f"{rec_name}.idx"
    lines = []
    first_key = 1 if header else 0
    ranges: dict[int, list[int]] = {}
    max_label = -1
    with RecordIOWriter(rec_path) as writer:
        key = first_key
        for label, jpeg in items:
            label = int(label)
            lab = np.array([label, 0], np.float32) if array_labels else float(label)
            record = pack(IRHeader(0, lab, key, 0), jpeg)
            lines.append((key, writer.write(record)))
            ranges.setdefault(label, [key, key])[1] = key + 1
            max_label = max(max_label, label)
            key += 1
        if header:
            id_start = key
            for label in sorted(ranges):
                start, end = ranges[label]
                lines.append((key, writer.write(pack(IRHeader(0, [start, end], key, 0), b""))))
                key += 1
            lines.append((0, writer.write(pack(IRHeader(0, [id_start, key], 0, 0), b""))))
    if write_idx:
        if shuffle_idx_seed is not None:
            order = np.random.default_rng(shuffle_idx_seed).permutation(len(lines))
            lines = [lines[i] for i in order]
        idx_path.write_text("".join(f"{k}\t{o}\n" for k, o in lines))
    if write_property:
        n = num_classes if num_classes is not None else max_label + 1
        (out_dir / "property").write_text(f"{n},{image_size[0]},{image_size[1]}")
    return rec_path
