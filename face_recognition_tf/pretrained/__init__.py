"""Pretrained models in and out: insightface / arcface_torch files become our models and back.

``import_model(SRC, OUT)`` (``frtf import``) reads an ONNX graph (``onnx_reader.py``) or a PyTorch state
dict (``torch_pickle.py`` + ``state_dict_reader.py``) into ops (``ops.py``), recognises the architecture
(``recognise.py``), loads the weights into our backbone (``weights.py``) and checks the embeddings
against the original before writing a model folder (``importer.py``).  ``onnx_writer.py`` writes the
other way: the ONNX layout insightface's model zoo loads.
"""


def import_model(src, out, **kwargs):
    """See :func:`face_recognition_tf.pretrained.importer.import_model`."""
    from face_recognition_tf.pretrained.importer import import_model as run

    return run(src, out, **kwargs)


__all__ = ["import_model"]
