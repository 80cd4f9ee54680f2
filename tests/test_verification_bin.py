"""Verification .bin pair sets: py2 / py3 / numpy pickles, safe loading, decoding parity with TF."""

import pickle
import struct

import cv2
import numpy as np
import pytest

from face_recognition_tf.data import find_bins, load_bin, save_bin
from face_recognition_tf.errors import DatasetError


def _jpegs(n, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        img = cv2.GaussianBlur(rng.integers(0, 256, (112, 112, 3), dtype=np.uint8), (5, 5), 0)
        cv2.circle(img, (56, 56), 10 + i % 30, (255, 0, 0), -1)  # red in BGR terms: blue in RGB
        params = [cv2.IMWRITE_JPEG_QUALITY, 90]
        out.append(cv2.imencode(".jpg", img, params)[1].tobytes())
    return out


def _py2_pickle(jpegs, issame) -> bytes:
    """What Python 2's pickle.dump((list_of_str, list_of_bool), f, protocol=2) writes."""
    out = [b"\x80\x02(]("]  # PROTO 2, MARK, EMPTY_LIST, MARK
    for j in jpegs:
        out.append(b"T" + struct.pack("<I", len(j)) + j)  # BINSTRING: a py2 str
    out.append(b"e](")  # APPENDS, EMPTY_LIST, MARK
    out.extend(b"\x88" if s else b"\x89" for s in issame)  # NEWTRUE / NEWFALSE
    out.append(b"et.")  # APPENDS, TUPLE, STOP
    return b"".join(out)


def test_save_and_load_roundtrip_rgb(tmp_path):
    jpegs, issame = _jpegs(6), [True, False, True]
    save_bin(tmp_path / "lfw.bin", jpegs, issame)
    images, same = load_bin(tmp_path / "lfw.bin")
    assert images.shape == (6, 112, 112, 3) and images.dtype == np.uint8
    assert same.dtype == bool and same.tolist() == issame
    bgr = cv2.imdecode(np.frombuffer(jpegs[0], np.uint8), cv2.IMREAD_COLOR)
    np.testing.assert_array_equal(images[0], bgr[:, :, ::-1])  # RGB out


def test_python2_pickle(tmp_path):
    jpegs, issame = _jpegs(4, seed=1), [False, True]
    path = tmp_path / "agedb_30.bin"
    path.write_bytes(_py2_pickle(jpegs, issame))
    with pytest.raises(UnicodeDecodeError):  # what a plain pickle.load does with it
        pickle.loads(path.read_bytes())
    images, same = load_bin(path)
    assert images.shape == (4, 112, 112, 3) and same.tolist() == issame


def test_numpy_items_and_numpy_issame(tmp_path):
    jpegs = _jpegs(4, seed=2)
    path = tmp_path / "cfp_fp.bin"
    with open(path, "wb") as f:
        pickle.dump(([np.frombuffer(j, np.uint8) for j in jpegs], np.array([True, False])), f)
    images, same = load_bin(path)
    assert images.shape == (4, 112, 112, 3) and same.tolist() == [True, False]
    ref, _ = load_bin(_save(tmp_path / "ref.bin", jpegs, [True, False]))
    np.testing.assert_array_equal(images, ref)


def _as_numpy1(data: bytes) -> bytes:
    """The same pickle as numpy 1.16-1.26 writes it: its private module was `numpy.core`, not `numpy._core`
    (re-framed by pickletools, since protocol 5 frames carry their lengths)."""
    import pickletools

    renamed = data.replace(b"\x8c\x13numpy._core.numeric", b"\x8c\x12numpy.core.numeric")
    assert renamed != data
    return pickletools.optimize(renamed)


@pytest.mark.parametrize("numpy1", [False, True], ids=["installed-numpy", "numpy-1.x"])
def test_protocol_5_numpy_arrays(tmp_path, numpy1):
    """numpy >= 1.16 pickles arrays at protocol 5 through `_frombuffer` (bytes for a read-only array,
    a bytearray for a writable one); items, issame and already decoded pixels all load."""
    jpegs, issame = _jpegs(4, seed=3), [True, False]
    ref, _ = load_bin(_save(tmp_path / "ref.bin", jpegs, issame))
    items = [np.frombuffer(jpegs[0], np.uint8), np.frombuffer(jpegs[1], np.uint8).copy(),
             np.frombuffer(jpegs[2], np.uint8), np.frombuffer(jpegs[3], np.uint8).copy()]
    for name, obj in (("items.bin", (items, np.array(issame))), ("pixels.bin", (ref, issame))):
        data = pickle.dumps(obj, protocol=5)
        assert b"_frombuffer" in data
        path = tmp_path / name
        path.write_bytes(_as_numpy1(data) if numpy1 else data)
        images, same = load_bin(path)
        np.testing.assert_array_equal(images, ref)
        assert same.tolist() == issame


@pytest.mark.parametrize("protocol, before, after", [
    (5, b"\x8c\x02u1", b"\x8c\x02O8"),
    (2, b"X\x02\x00\x00\x00u1", b"X\x02\x00\x00\x00O8"),
])
def test_an_array_of_python_objects_is_refused(tmp_path, protocol, before, after):
    """Arrays are rebuilt from raw bytes as numbers only: an object dtype (whose "bytes" would be read as
    pointers; numpy's own dtype state can even clear its has-object flag) is refused at both protocols."""
    data = pickle.dumps(([np.zeros(4, np.uint8)] * 2, [True]), protocol=protocol)
    path = tmp_path / "odd.bin"
    path.write_bytes(data.replace(before, after))
    with pytest.raises(DatasetError, match=r"odd\.bin: not a readable pair-set pickle.*only numbers"):
        load_bin(path)


def _save(path, jpegs, issame):
    save_bin(path, jpegs, issame)
    return path


def test_decoding_matches_tensorflow_integer_accurate(tmp_path):
    import tensorflow as tf

    jpegs = _jpegs(4, seed=3)
    images, _ = load_bin(_save(tmp_path / "x.bin", jpegs, [True, True]))
    for img, jpeg in zip(images, jpegs):
        ref = tf.io.decode_jpeg(jpeg, channels=3, dct_method="INTEGER_ACCURATE").numpy()
        np.testing.assert_array_equal(img, ref)


class _Evil:
    def __reduce__(self):
        import os

        return (os.system, ("touch should-not-exist",))


def test_pickle_that_imports_anything_is_refused_without_running(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.bin"
    path.write_bytes(pickle.dumps(([_Evil()], [True])))
    with pytest.raises(DatasetError, match=r"evil\.bin: refusing.*(posix|os)\.system"):
        load_bin(path)
    path.write_bytes(b"cbuiltins\neval\n(S'1+1'\ntR.")
    with pytest.raises(DatasetError, match="builtins.eval"):
        load_bin(path)
    assert not (tmp_path / "should-not-exist").exists()


@pytest.mark.parametrize(
    "content, message",
    [
        ((["a"], [True]), r"1 images for 1 pairs"),
        (([b"\xff\xd8garbage!!", b"\xff\xd8garbage!!"], [True]), r"item 0: corrupt JPEG"),
        (([b"notjpeg", b"notjpeg"], [True]), r"item 0 is not a JPEG"),
        (([b"x", b"x"], ["yes"]), r"issame item 0"),
        ({"a": 1}, r"expected a pickled \(images, issame\)"),
    ],
)
def test_bad_pair_sets(tmp_path, content, message):
    path = tmp_path / "bad.bin"
    path.write_bytes(pickle.dumps(content, protocol=2))
    with pytest.raises(DatasetError, match=r"bad\.bin.*" + message):
        load_bin(path)


def test_not_a_pickle(tmp_path):
    path = tmp_path / "lfw.bin"
    path.write_bytes(b"\x00\x01 definitely not a pickle")
    with pytest.raises(DatasetError, match=r"lfw\.bin: not a readable pair-set pickle"):
        load_bin(path)
    with pytest.raises(DatasetError, match="no such pair-set file"):
        load_bin(tmp_path / "missing.bin")


def test_find_bins_order_and_targets(tmp_path):
    for name in ("zeta", "agedb_30", "lfw", "cfp_fp"):
        (tmp_path / f"{name}.bin").write_bytes(b"")
    (tmp_path / "train.rec").write_bytes(b"")
    found = find_bins(tmp_path)
    assert list(found) == ["lfw", "cfp_fp", "agedb_30", "zeta"]
    assert found["lfw"] == tmp_path / "lfw.bin"
    assert list(find_bins(tmp_path, ["agedb_30", "lfw"])) == ["agedb_30", "lfw"]
    with pytest.raises(DatasetError, match=r"no pair set cfp_ff\.bin.*found: agedb_30, cfp_fp, lfw, zeta"):
        find_bins(tmp_path, ["lfw", "cfp_ff"])
    with pytest.raises(DatasetError, match="no such folder"):
        find_bins(tmp_path / "nope")
