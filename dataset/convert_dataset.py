"""Convert an insightface dataset to TFRecords: `python dataset/convert_dataset.py SRC OUT` == `frtf convert SRC OUT`."""
import sys

from face_recognition_tf.cli import main

if __name__ == "__main__":
    sys.exit(main(["convert", *sys.argv[1:]]))
