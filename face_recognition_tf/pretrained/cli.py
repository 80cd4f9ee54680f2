"""``frtf import SRC OUT``: see importer.py."""

from __future__ import annotations


def _numbers(text: str):
    """"127.5" or "123.7,116.3,103.5" (R,G,B)."""
    import argparse

    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or three comma-separated numbers, got {text!r}")
    if len(values) not in (1, 3):
        raise argparse.ArgumentTypeError(f"expected one number or three (R,G,B), got {len(values)}")
    return values[0] if len(values) == 1 else values


def configure_parser(parser) -> None:
    parser.description = (
        "Import an insightface / arcface_torch face recognition model (ONNX such as w600k_r50.onnx, or a "
        "PyTorch state dict such as backbone.pth) as a model folder every frtf command accepts. The "
        "architecture (IR-ResNet 18-200, MobileFaceNet) is recognised from the file; the embeddings are "
        "checked against the original on a random batch before anything is written."
    )
    parser.add_argument("src", metavar="SRC", help="an .onnx file or a PyTorch .pth/.pt state dict")
    parser.add_argument("out", metavar="OUT", help="the model folder to create (must not exist)")
    parser.add_argument("--input-mean", type=_numbers, default=None, metavar="M",
                        help="the mean the file's input expects subtracted, one value or R,G,B "
                             "(default: insightface's 127.5, or none when the graph normalises itself)")
    parser.add_argument("--input-std", type=_numbers, default=None, metavar="S",
                        help="the divisor after the mean, one value or R,G,B (default 127.5)")
    parser.add_argument("--name", default=None, help="a name for the model (default: the file name)")
    parser.add_argument("--embedding-size", type=int, default=None, metavar="D",
                        help="refuse the file unless it gives D-dimensional embeddings")


def run(args) -> int:
    from face_recognition_tf.pretrained.importer import import_model

    report = import_model(args.src, args.out, input_mean=args.input_mean, input_std=args.input_std,
                          name=args.name, embedding_size=args.embedding_size, progress=print)
    parity = report["parity"]
    if parity["max_abs_diff"] is not None:
        print(f"imported {report['architecture']} into {args.out}: embeddings equal the original's to "
              f"{parity['max_abs_diff']:.1e} ({parity['reference']})")
    else:
        print(f"imported {report['architecture']} into {args.out} (not compared: {parity['reference']})")
    return 0
