"""Train on several GPUs: `frtf train` with the central-storage strategy as default (the original script's choice).

Any `--strategy` given on the command line wins over that default.
"""
import sys

from face_recognition_tf.cli import main

if __name__ == "__main__":
    args = sys.argv[1:]
    has_strategy = any(a == "--strategy" or a.startswith("--strategy=") for a in args)
    sys.exit(main(["train", *([] if has_strategy else ["--strategy", "central_storage"]), *args]))
