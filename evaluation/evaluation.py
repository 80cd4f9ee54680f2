"""Evaluate checkpoints: `python evaluation/evaluation.py CKPT... --data SRC` == `frtf evaluate CKPT... --data SRC`."""
import sys

from face_recognition_tf.cli import main

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]]))
