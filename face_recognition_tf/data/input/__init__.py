"""Training input: the tf.data pipeline over the TFRecord shards, augmentations, P x K sampling, `frtf bench-input`.

These import TensorFlow; `face_recognition_tf.data` loads `pipeline` on first use only.
"""
