"""Train on one device: `python train.py --config configs/ms1m_r50.yaml` == `frtf train --config ...`."""
import sys

from face_recognition_tf.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
