"""The `frtf` command: a thin dispatcher over the package.

Each sub-command lives in the module that does the work and exposes two functions,
`configure_parser(parser)` and `run(args) -> int`.  Only the chosen command's module is imported, so
`frtf --help` and argument errors do not wait for TensorFlow.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from face_recognition_tf import __version__
from face_recognition_tf.errors import FaceRecognitionError

# command -> (module implementing configure_parser/run, one-line help)
COMMANDS = {
    "convert": ("face_recognition_tf.data.conversion.convert_cli", "convert an insightface .rec dataset (or a photo folder) to TFRecords"),
    "bench-input": ("face_recognition_tf.data.input.bench_input", "images/s the training input pipeline delivers from a converted dataset here"),
    "sample": ("face_recognition_tf.data.synthetic.sample", "write the embedded synthetic sample dataset in insightface's layout"),
    "train": ("face_recognition_tf.training.cli", "train a backbone + margin head from a YAML config"),
    "evaluate": ("face_recognition_tf.evaluation.cli", "verification accuracy of checkpoints on LFW/CFP/AgeDB .bin pair sets"),
    "make-pairs": ("face_recognition_tf.evaluation.pairs", "build a verification .bin from a folder of identity sub-folders"),
    "quickstart": ("face_recognition_tf.training.quickstart", "run the whole chain on the embedded sample (CPU, minutes)"),
    "embed": ("face_recognition_tf.inference_cli", "embed face photos with a trained model (MTCNN detection + alignment)"),
    "verify": ("face_recognition_tf.inference_cli", "say whether two photos show the same person"),
    "identify": ("face_recognition_tf.inference_cli", "find who is in a photo among a gallery of known people"),
    "export": ("face_recognition_tf.export", "export the embedding model as SavedModel, TFLite or ONNX"),
    "import": ("face_recognition_tf.pretrained.cli", "import an insightface ONNX or PyTorch model as a model folder"),
    "align": ("face_recognition_tf.faces.align_cli", "detect and align the faces in a folder of identity sub-folders of photos"),
    "split": ("face_recognition_tf.data.split", "split a folder of aligned identity sub-folders into train/val/test"),
    "calibrate": ("face_recognition_tf.evaluation.calibrate", "find the threshold at a target false-accept rate and store it with the model"),
    "report": ("face_recognition_tf.evaluation.identify_report", "identification and verification report on a gallery and probe folder"),
    "demo": ("face_recognition_tf.demo.cli", "web page (Gradio) to verify, identify and enroll faces with a model"),
}
# commands that never import TensorFlow: no need to pay for it up front
WITHOUT_TENSORFLOW = {"convert", "sample", "make-pairs", "split"}
VERBOSE_FLAG = "--verbose"


def _top_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="frtf",
        description="Train, evaluate and use insightface-grade face recognizers with TensorFlow 2.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="commands:\n" + "\n".join(f"  {name:<11} {text}" for name, (_, text) in COMMANDS.items())
        + "\n\nRun `frtf COMMAND --help` for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"face_recognition_tf {__version__}")
    parser.add_argument(VERBOSE_FLAG, action="store_true",
                        help="also show TensorFlow's start-up messages (may be given anywhere on the line)")
    parser.add_argument("command", choices=sorted(COMMANDS), metavar="COMMAND")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    verbose = VERBOSE_FLAG in argv
    argv = [arg for arg in argv if arg != VERBOSE_FLAG]
    top = _top_parser()
    if not argv or argv[0].startswith("-"):
        top.parse_args(argv or ["--help"])  # prints help/version and exits
    name = argv[0]
    if name not in COMMANDS:
        top.error(f"unknown command {name!r} (choose from {', '.join(sorted(COMMANDS))})")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    module = importlib.import_module(COMMANDS[name][0])
    parser = argparse.ArgumentParser(prog=f"frtf {name}", description=COMMANDS[name][1])
    module.configure_parser(parser)  # a module serving several commands reads parser.prog
    args = parser.parse_args(argv[1:])
    args.command = name
    args.verbose = verbose
    if not verbose and name not in WITHOUT_TENSORFLOW:
        from face_recognition_tf.quiet_startup import import_tensorflow_quietly

        import_tensorflow_quietly()
    try:
        return int(module.run(args) or 0)
    except FaceRecognitionError as exc:
        print(f"frtf {name}: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except OSError as exc:
        # the environment said no (disk full, read-only, permission): one line naming the file
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"frtf {name}: error: {where}{exc.strerror or _one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"frtf {name}: interrupted", file=sys.stderr)
        return 130


def _one_line(exc: BaseException) -> str:
    """The promise is one line: a message that spans several keeps its first, the rest is detail."""
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__

if __name__ == "__main__":
    sys.exit(main())
