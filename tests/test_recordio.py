"""MXNet RecordIO without mxnet: every layout insightface and im2rec produce, and broken files."""

import struct

import numpy as np
import pytest

from face_recognition_tf.data.formats import recordio
from face_recognition_tf.data.formats.recordio import MAGIC, IRHeader, RecordIOReader, RecordIOWriter, pack, unpack
from face_recognition_tf.data.synthetic.rec_layout import write_rec_dataset
from face_recognition_tf.errors import DatasetError

MAGIC_BYTES = struct.pack("<I", MAGIC)


def fake_jpeg(i, size=40):
    """JPEG-looking payloads (start/end markers); their content does not matter to the reader."""
    body = np.random.default_rng(i).integers(0, 255, size, dtype=np.uint8).tobytes()
    return b"\xff\xd8" + body + b"\xff\xd9"


def test_pack_unpack_scalar_and_array_labels():
    h, payload = unpack(pack(IRHeader(0, 7.0, 3, 0), b"abc"))
    assert (h.flag, h.label, h.id, payload) == (0, 7.0, 3, b"abc")
    h, payload = unpack(pack(IRHeader(0, [5, 9.5], 1, 2), b"xyz"))
    assert h.flag == 2 and h.label.tolist() == [5.0, 9.5] and payload == b"xyz"


def test_magic_inside_payload_is_split_and_joined(tmp_path):
    # the record splits at each 4-aligned magic (header is 24 bytes: payload offsets 4, 12, 16);
    # the last magic (payload offset 21) is not aligned and stays inside the data
    payload = b"\xff\xd8" + b"ab" + MAGIC_BYTES + b"cdef" + MAGIC_BYTES + MAGIC_BYTES + b"x" + MAGIC_BYTES
    record = pack(IRHeader(0, 1.0, 0, 0), payload)
    encoded = recordio.encode_record(record)
    frames = [i for i in range(0, len(encoded), 4) if encoded[i:i + 4] == MAGIC_BYTES]
    cflags = [struct.unpack_from("<I", encoded, i + 4)[0] >> 29 for i in frames]
    assert cflags == [1, 2, 2, 3]
    assert encoded.count(MAGIC_BYTES) == 5
    rec, idx = tmp_path / "a.rec", tmp_path / "a.idx"
    with RecordIOWriter(rec, idx) as w:
        w.write_idx(0, pack(IRHeader(0, 0.0, 0, 0), b"\xff\xd8first"))
        w.write_idx(1, record)
        w.write_idx(2, pack(IRHeader(0, 2.0, 0, 0), b"\xff\xd8last"))
    with RecordIOReader(rec, idx) as r:
        assert unpack(r.read_idx(1))[1] == payload
        assert [unpack(x)[1] for _, x in r.scan()] == [b"\xff\xd8first", payload, b"\xff\xd8last"]
        index = r.index()
        assert index.multipart.tolist() == [False, True, False]
        assert index.payload_len[1] == len(payload) and index.label0.tolist() == [0, 1, 2]
    with RecordIOReader(rec) as r:  # no .idx: sequential scan numbers records 0..n-1
        assert r.keys() == [0, 1, 2] and unpack(r.read_idx(1))[1] == payload
        assert r.index().multipart.tolist() == [False, True, False]


@pytest.mark.parametrize("header", [True, False])
@pytest.mark.parametrize("array_labels", [True, False])
def test_layouts_index_and_random_access(tmp_path, header, array_labels):
    items = [(c, fake_jpeg(10 * c + j)) for c in range(4) for j in range(3)]
    write_rec_dataset(tmp_path, items, header=header, array_labels=array_labels, shuffle_idx_seed=3)
    rec, idx = tmp_path / "train.rec", tmp_path / "train.idx"
    lines = idx.read_text().split("\n")
    keys_in_file_order = [int(x.split("\t")[0]) for x in lines if x]
    assert keys_in_file_order != sorted(keys_in_file_order)  # the .idx is not sorted
    with RecordIOReader(rec, idx) as r:
        first = 1 if header else 0
        for n, (label, jpeg) in enumerate(items):
            h, payload = unpack(r.read_idx(first + n))
            assert payload == jpeg
            got = h.label[0] if array_labels else h.label
            assert got == label
        if header:
            assert r.offset(0) > 0  # record 0 is written last, as face2rec does
            h0, body = unpack(r.read_idx(0))
            assert h0.flag == 2 and body == b"" and int(h0.label[0]) == first + len(items)
        index = r.index()
    n_records = len(items) + (1 + 4 if header else 0)
    assert len(index) == n_records
    assert (np.diff(index.offsets) > 0).all()  # file order
    images = index.payload_len > 0
    assert sorted(index.label0[images].astype(int).tolist()) == sorted(c for c, _ in items)
    if array_labels:
        assert (index.flags[images] == 2).all() and (index.label1[images] == 0).all()
    else:
        assert (index.flags[images] == 0).all() and np.isnan(index.label1[images]).all()
    # payload locations are exact: reading them back gives the JPEGs
    raw = rec.read_bytes()
    got = sorted(raw[s:s + n] for s, n in zip(index.payload_start[images], index.payload_len[images]))
    assert got == sorted(j for _, j in items)


def _rec_with_two_records(tmp_path):
    rec, idx = tmp_path / "t.rec", tmp_path / "t.idx"
    with RecordIOWriter(rec, idx) as w:
        w.write_idx(0, pack(IRHeader(0, 0.0, 0, 0), fake_jpeg(0)))
        w.write_idx(1, pack(IRHeader(0, 1.0, 0, 0), fake_jpeg(1)))
    return rec, idx


def test_truncated_rec(tmp_path):
    rec, idx = _rec_with_two_records(tmp_path)
    rec.write_bytes(rec.read_bytes()[:-10])
    with pytest.raises(DatasetError, match=r"t\.rec.*key 1.*truncated"):
        RecordIOReader(rec, idx).index()
    with pytest.raises(DatasetError, match=r"t\.rec.*truncated"):
        list(RecordIOReader(rec).scan())
    with pytest.raises(DatasetError, match="key 1.*truncated"):
        RecordIOReader(rec, idx).read_idx(1)


def test_bad_magic(tmp_path):
    rec, idx = _rec_with_two_records(tmp_path)
    data = bytearray(rec.read_bytes())
    data[0:4] = b"\0\0\0\0"
    rec.write_bytes(bytes(data))
    with pytest.raises(DatasetError, match=r"t\.rec.*key 0.*bad magic"):
        RecordIOReader(rec, idx).index()
    with pytest.raises(DatasetError, match=r"t\.rec: offset 0: .*bad magic"):
        list(RecordIOReader(rec).scan())


def test_idx_offset_past_end_or_not_at_a_record(tmp_path):
    rec, idx = _rec_with_two_records(tmp_path)
    size = rec.stat().st_size
    idx.write_text(f"0\t0\n1\t{size + 100}\n")
    with pytest.raises(DatasetError, match="key 1.*past the end"):
        RecordIOReader(rec, idx).index()
    idx.write_text("0\t0\n1\t8\n")  # inside record 0's payload
    with pytest.raises(DatasetError, match="key 1.*not at a record"):
        RecordIOReader(rec, idx).index()
    idx.write_text("0\t0\n1\t6\n")
    with pytest.raises(DatasetError, match="key 1.*not at a record"):
        RecordIOReader(rec, idx).index()
    idx.write_text("0\t0\n1\tabc\n")
    with pytest.raises(DatasetError, match=r"t\.idx: line 2"):
        RecordIOReader(rec, idx).index()


def test_offset_into_the_middle_of_a_split_record(tmp_path):
    rec, idx = tmp_path / "m.rec", tmp_path / "m.idx"
    with RecordIOWriter(rec, idx) as w:
        w.write_idx(0, pack(IRHeader(0, 0.0, 0, 0), b"\xff\xd8ab" + MAGIC_BYTES + b"tail"))
    second_part = rec.read_bytes().index(MAGIC_BYTES, 4)
    idx.write_text(f"0\t{second_part}\n")
    with pytest.raises(DatasetError, match="key 0.*middle of a record"):
        RecordIOReader(rec, idx).index()


def test_unknown_key(tmp_path):
    rec, idx = _rec_with_two_records(tmp_path)
    with pytest.raises(DatasetError, match="no record with key 7"):
        RecordIOReader(rec, idx).read_idx(7)
