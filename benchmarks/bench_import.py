"""`frtf import` time and parity for insightface-sized models (random weights), ONNX and state dict.

For each architecture a PyTorch module written to insightface's structure (tests/torch_reference.py) gets
random weights and BN statistics, is exported the way users' files are made (torch.onnx.export with BN
folded, opset 11, and torch.save of the state dict), and is imported with `import_model`, which also
runs the parity check (onnxruntime / PyTorch) before writing.  Reported per row: the import time, split
into reading + recognising + loading the weights, the parity check, and writing the model folder; the max
|difference| of L2-normalised embeddings; and, as the reference measured in the same run, the time
onnxruntime takes just to open the same ONNX file (a floor for any tool that reads it).

    python benchmarks/bench_import.py                        # r50, r100, mbf (needs torch, onnx, onnxruntime)
    python benchmarks/bench_import.py --models r18,r34,r50,r100,mbf,mbf_large --out import.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))


def _timed_import(src, out):
    """Import with the phases timed by wrapping the importer's steps."""
    from face_recognition_tf.pretrained import importer

    phases = {}
    original_reference, original_save = importer._reference_embeddings, importer.atomic.temporary_dir_beside
    start = time.perf_counter()

    def reference(*args, **kwargs):
        phases["read_and_load_s"] = time.perf_counter() - start
        t = time.perf_counter()
        result = original_reference(*args, **kwargs)
        phases["reference_s"] = time.perf_counter() - t
        return result

    def temporary_dir_beside(path):
        phases["write_from"] = time.perf_counter()
        return original_save(path)

    importer._reference_embeddings, importer.atomic.temporary_dir_beside = reference, temporary_dir_beside
    try:
        report = importer.import_model(src, out)
    finally:
        importer._reference_embeddings, importer.atomic.temporary_dir_beside = original_reference, original_save
    total = time.perf_counter() - start
    phases["write_s"] = time.perf_counter() - phases.pop("write_from")
    phases["parity_s"] = total - phases["read_and_load_s"] - phases["write_s"]
    phases["total_s"] = total
    return report, phases


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="r50,r100,mbf")
    parser.add_argument("--embedding-size", type=int, default=512)
    parser.add_argument("--out", default=None, help="also write the rows to this JSON file")
    args = parser.parse_args(argv)

    import onnxruntime
    import torch
    import torch_reference as ref

    torch.set_num_threads(os.cpu_count() or 1)
    rows = []
    work = Path(tempfile.mkdtemp(prefix="bench_import_"))
    try:
        for name in args.models.split(","):
            model = ref.randomize(ref.get_model(name, num_features=args.embedding_size), seed=0, keep_frozen=True)
            onnx_path, pth_path = work / f"{name}.onnx", work / f"{name}.pth"
            ref.export_onnx(model, onnx_path, fold_bn=True, opset=11)
            ref.export_state_dict(model, pth_path)
            t = time.perf_counter()
            onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
            ort_open = time.perf_counter() - t
            for src in (onnx_path, pth_path):
                report, phases = _timed_import(src, work / f"{src.name}.imported")
                row = {"model": name, "format": report["source"]["format"],
                       "file_mb": round(src.stat().st_size / 1e6, 1),
                       "parity_max_abs": report["parity"]["max_abs_diff"], "parity_with": report["parity"]["reference"],
                       "onnxruntime_open_s": round(ort_open, 2), **{k: round(v, 2) for k, v in phases.items()},
                       "import_vs_ort_open": round(phases["total_s"] / ort_open, 1)}
                rows.append(row)
                print(json.dumps(row))
                shutil.rmtree(work / f"{src.name}.imported", ignore_errors=True)
            del model
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.out:
        from face_recognition_tf.atomic import write_json

        write_json(args.out, {"rows": rows, "cpus": os.cpu_count()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
