"""Reference loader: insightface arcface_torch's mxnet RecordIO + PyTorch DataLoader, for comparison.

Why it exists: the training-pipeline benchmark compares our tf.data pipeline against "the mxnet +
PyTorch DataLoader loader insightface uses (2 workers)".  This script rebuilds that loader so the
reference figure is measured on the same machine and the same train.rec/train.idx, not quoted:

* dataset: the behaviour of arcface_torch's `MXFaceDataset` (recognition/arcface_torch/dataset.py):
  `mx.recordio.MXIndexedRecordIO` over train.idx/train.rec; header record 0, when its flag > 0,
  gives the image keys as range(1, header.label[0]), otherwise every key in the .idx is an image;
  `__getitem__` reads a record, `mx.recordio.unpack`s it, decodes with
  `mx.image.imdecode(img).asnumpy()` (RGB uint8, HWC) and applies ToPILImage -> RandomHorizontalFlip
  -> ToTensor -> Normalize(mean=0.5, std=0.5), i.e. (x / 255 - 0.5) / 0.5, returning (CHW float32
  tensor, long label).
* loader: `torch.utils.data.DataLoader(batch_size=128, num_workers=2, shuffle=True (seeded
  generator), pin_memory=<only when CUDA exists>, drop_last=True)`; a new iterator (new workers) per
  epoch, as insightface's training loop does.  arcface_torch's DataLoaderX/BackgroundGenerator only
  add a CUDA prefetch stream, which is irrelevant on a CPU-only machine and is left out.

The transforms: torchvision's own are used when torchvision imports.  The PyPI torchvision wheels
for Linux are CUDA builds (their _C.so needs libtorch_cuda.so) and fail to import next to the CPU
torch, and there is no CPU torchvision wheel on this machine, so the venv below has none; the script
then does the same steps itself: PIL image from the array, PIL FLIP_LEFT_RIGHT when
torch.rand(1) < 0.5 (as RandomHorizontalFlip decides), tensor HWC->CHW contiguous float / 255, then
sub_(0.5).div_(0.5).

Output: one JSON line {"loader": "mxnet+torch DataLoader", "workers": 2, "img_s": ..., "peak_rss_mb":
...}.  peak_rss_mb is the largest sum of RSS over the parent and its worker processes, sampled with
psutil after every batch (shared copy-on-write pages count once per process, as RSS does); the
getrusage figures (parent, and the largest single reaped worker) are printed alongside.

The venv lives outside the repo (mxnet 1.9.1 needs numpy < 1.24: it uses np.bool):

    python3 -m venv /work/mxref-venv
    /work/mxref-venv/bin/pip install "mxnet==1.9.1" "numpy==1.23.5" "torch==2.13.0+cpu" \\
        opencv-python-headless pillow psutil

Run (train.rec/train.idx in insightface's layout, e.g. from face_recognition_tf.data.synthetic.rec_layout):

    /work/mxref-venv/bin/python benchmarks/insightface_loader.py --rec DIR \\
        [--batches 100] [--warmup 10] [--workers 2] [--batch 128] [--seed 0]
"""

import argparse
import json
import numbers
import os
import resource
import sys
import time

import mxnet as mx
import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

try:
    import psutil
except ImportError:  # pragma: no cover - psutil is in the venv recipe above
    psutil = None


def _build_transform():
    """torchvision's ArcFace transform if torchvision works, else the same steps done by hand."""
    try:
        from torchvision import transforms

        return transforms.Compose([
            transforms.ToPILImage(),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(mean=[0.5, 0.5, 0.5], std=[0.5, 0.5, 0.5]),
        ]), "torchvision"
    except Exception:  # ImportError, or the CUDA torchvision wheel failing next to CPU torch
        pass

    def transform(arr):
        pic = Image.fromarray(arr, mode="RGB")  # ToPILImage
        if torch.rand(1) < 0.5:  # RandomHorizontalFlip(p=0.5)
            pic = pic.transpose(Image.FLIP_LEFT_RIGHT)
        t = torch.from_numpy(np.array(pic, np.uint8, copy=True))  # ToTensor
        t = t.permute(2, 0, 1).contiguous().to(torch.float32).div(255)
        return t.sub_(0.5).div_(0.5)  # Normalize(0.5, 0.5)

    return transform, "torch-equivalent (no torchvision)"


class MXFaceDataset(Dataset):
    """Behaviour of arcface_torch's MXFaceDataset (see the module docstring)."""

    def __init__(self, root_dir):
        super().__init__()
        self.transform, self.transform_kind = _build_transform()
        self.imgrec = mx.recordio.MXIndexedRecordIO(
            os.path.join(root_dir, "train.idx"), os.path.join(root_dir, "train.rec"), "r")
        header, _ = mx.recordio.unpack(self.imgrec.read_idx(0))
        if header.flag > 0:
            self.imgidx = np.arange(1, int(header.label[0]))
        else:
            self.imgidx = np.array(list(self.imgrec.keys))

    def __len__(self):
        return len(self.imgidx)

    def __getitem__(self, index):
        # MXRecordIO reopens its handle when it finds itself in a new (forked worker) process.
        header, img = mx.recordio.unpack(self.imgrec.read_idx(int(self.imgidx[index])))
        label = header.label
        if not isinstance(label, numbers.Number):
            label = label[0]
        sample = mx.image.imdecode(img).asnumpy()
        return self.transform(sample), torch.tensor(label, dtype=torch.long)


def _tree_rss():
    if psutil is None:
        return 0
    me = psutil.Process()
    total = me.memory_info().rss
    for child in me.children(recursive=True):
        try:
            total += child.memory_info().rss
        except psutil.Error:
            pass
    return total


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rec", required=True, help="folder with train.rec and train.idx")
    ap.add_argument("--batches", type=int, default=100, help="timed batches")
    ap.add_argument("--warmup", type=int, default=10, help="untimed batches first (worker start-up)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    dataset = MXFaceDataset(args.rec)
    loader = DataLoader(dataset, batch_size=args.batch, shuffle=True, num_workers=args.workers,
                        pin_memory=torch.cuda.is_available(), drop_last=True,
                        generator=torch.Generator().manual_seed(args.seed))
    if len(loader) == 0:
        sys.exit(f"{args.rec}: {len(dataset)} images is less than one batch of {args.batch}")

    epochs = 1
    it = iter(loader)

    def next_batch():
        nonlocal it, epochs
        try:
            return next(it)
        except StopIteration:  # new epoch: insightface starts a new iterator (and workers) each epoch
            epochs += 1
            it = iter(loader)
            return next(it)

    peak = _tree_rss()
    for _ in range(args.warmup):
        next_batch()
        peak = max(peak, _tree_rss())
    t = time.perf_counter()
    for _ in range(args.batches):
        x, y = next_batch()
        peak = max(peak, _tree_rss())
    elapsed = time.perf_counter() - t
    assert x.shape[:2] == (args.batch, 3) and y.shape == (args.batch,), (x.shape, y.shape)
    it = None  # shuts the workers down so getrusage(RUSAGE_CHILDREN) covers them

    self_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    child_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(json.dumps({
        "loader": "mxnet+torch DataLoader",
        "workers": args.workers,
        "img_s": round(args.batches * args.batch / elapsed, 1),
        "peak_rss_mb": round(peak / 2**20, 1) if psutil else round(self_mb + args.workers * child_mb, 1),
        "peak_rss_how": "psutil sum parent+workers" if psutil else "getrusage self + workers * largest child",
        "self_maxrss_mb": round(self_mb, 1),
        "largest_child_maxrss_mb": round(child_mb, 1),
        "batch": args.batch, "batches": args.batches, "warmup": args.warmup, "images": len(dataset),
        "epochs": epochs, "transform": dataset.transform_kind,
        "x_dtype": str(x.dtype), "x_range": [round(float(x.min()), 3), round(float(x.max()), 3)],
        "versions": {"mxnet": mx.__version__, "torch": torch.__version__, "numpy": np.__version__},
    }))


if __name__ == "__main__":
    main()
