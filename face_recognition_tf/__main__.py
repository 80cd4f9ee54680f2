"""`python -m face_recognition_tf` is the same as the `frtf` command."""
import sys

from face_recognition_tf.cli import main

sys.exit(main())
