"""`frtf demo MODEL [--gallery DIR] [--host 127.0.0.1] [--port 7860]`: the web demo.

Start-up order is chosen so that mistakes cost seconds, not a model load: Gradio is imported first (a
missing extra is a one-line error saying what to install), then the model and gallery paths are
checked, then the model is loaded and warmed up, the gallery file opened and the `--gallery` folder
enrolled, and only then does the server listen.
"""

from __future__ import annotations

import argparse
import signal
from pathlib import Path

from face_recognition_tf.errors import CheckpointError, DatasetError, OutputError


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Open a web page to verify two photos, identify the people in a photo, enroll and remove people "
        "(kept in a gallery file across restarts) and see the model's settings. Needs the optional extra: "
        "pip install 'face_recognition_tf[demo]'."
    )
    parser.add_argument("model", metavar="MODEL",
                        help="run folder, `frtf import` folder, checkpoint prefix, .keras file or SavedModel folder")
    parser.add_argument("--gallery", metavar="DIR",
                        help="enroll the people of DIR/<name>/*.jpg at start-up (kept in the gallery file; people "
                             "whose photos did not change are not embedded again)")
    parser.add_argument("--gallery-file", metavar="NPZ",
                        help="where enrolled people are kept (default: one file per model under "
                             "~/.cache/face_recognition_tf/demo/, or $FRTF_CACHE_DIR/demo/); the same .npz "
                             "`frtf identify --gallery` reads")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 opens the demo, "
                             "which has no login, to the network)")
    parser.add_argument("--port", type=int, default=7860, help="port to listen on (default 7860)")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--threshold", type=float,
                       help="cosine threshold for 'same person' / a match (default: the one `frtf calibrate` "
                            "stored with the model, else 0.3)")
    group.add_argument("--threshold-from", metavar="JSON",
                       help="the threshold in `frtf evaluate`'s results.json (its lfw entry) or a threshold.json "
                            "written by `frtf calibrate --out`")
    parser.add_argument("--min-face-size", type=int, default=20, help="smallest face MTCNN looks for, pixels")


def run(args: argparse.Namespace) -> int:
    from face_recognition_tf.demo.app import build_app, import_gradio, launch

    import_gradio()
    if not 0 < args.port < 65536:
        raise DatasetError(f"--port {args.port}: not a port number (1-65535)")
    if not Path(args.model).exists() and not Path(f"{args.model}.index").is_file():
        raise CheckpointError(f"{args.model}: model not found")
    if args.gallery and not Path(args.gallery).is_dir():
        raise DatasetError(f"{args.gallery}: gallery folder not found (expected DIR/<name>/*.jpg)")
    _check_port(args.host, args.port)

    from face_recognition_tf.demo.handlers import DemoService

    service = DemoService.for_model(args.model, gallery_file=args.gallery_file, threshold=args.threshold,
                                    threshold_from=args.threshold_from, min_face_size=args.min_face_size)
    print(f"frtf demo: model {service.recognizer.model_name} ({service.embedding_size}-D), "
          f"{service.threshold_text()}", flush=True)
    if service.recognizer.threshold_note:
        print(f"frtf demo: note: {service.recognizer.threshold_note}", flush=True)
    if args.gallery:
        for line in service.enroll_folder(args.gallery):
            print(f"frtf demo: {line}", flush=True)
    print(f"frtf demo: {len(service.store)} people enrolled, kept in {service.store.path}", flush=True)
    app = build_app(service)
    _stop_cleanly_on_sigterm()
    shown = "127.0.0.1" if args.host in ("0.0.0.0", "::", "") else args.host
    print(f"frtf demo: open http://{shown}:{args.port} in a browser (Ctrl+C stops)", flush=True)
    launch(app, host=args.host, port=args.port)
    return 0


def _check_port(host: str, port: int) -> None:
    """A port in use (another demo still running) is said now, before a minute of model loading."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise DatasetError(f"--host {host}: not an address of this machine ({exc.strerror})") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            raise OutputError(f"cannot listen on {host}:{port} ({exc.strerror or exc}); "
                              "choose another --port") from None


def _stop_cleanly_on_sigterm() -> None:
    """`kill`, `docker stop` and service managers send SIGTERM; as Ctrl+C it lets Gradio close the server
    and delete the uploads it cached, instead of the process vanishing with them on disk."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt

    try:
        signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread (an embedding application): leave its handlers alone
        pass
