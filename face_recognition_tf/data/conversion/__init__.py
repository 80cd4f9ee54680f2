"""Conversion: a .rec dataset or a folder of people's photos -> TFRecord shards (`frtf convert`), and checking them.

The converter's worker processes are spawned and import these modules by their path; importing them does
not import TensorFlow.
"""
