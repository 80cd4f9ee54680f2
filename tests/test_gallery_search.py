"""1:N search: one float32 matrix product per gallery chunk, top-k by argpartition, same answers as a sort.

Scores are compared with a plain stable sort over the same templates; vectors with small integer
coordinates make every dot product exact in float32, so ties are real ties and the order is checkable.
"""

import numpy as np
import pytest

from face_recognition_tf.errors import FaceRecognitionError
from face_recognition_tf.faces import Gallery, Match
from face_recognition_tf.faces.gallery import top_k_cosine


def _reference(templates, query, k):
    scores = np.clip(templates @ query, -1.0, 1.0)
    return np.argsort(-scores, kind="stable")[:k], scores


@pytest.mark.parametrize("chunk_elements", [1, 3, 7, 1 << 22])
def test_top_k_matches_a_stable_sort_with_ties_and_any_chunking(chunk_elements):
    rng = np.random.default_rng(0)
    for _ in range(60):
        n, q = int(rng.integers(1, 40)), int(rng.integers(1, 5))
        templates = rng.integers(-2, 3, (n, 4)).astype(np.float32) * 0.25  # many exact ties
        queries = rng.integers(-2, 3, (q, 4)).astype(np.float32) * 0.25
        k = int(rng.integers(1, n + 3))
        indices, scores = top_k_cosine(templates, queries, k, chunk_elements)
        assert indices.shape == scores.shape == (q, min(k, n))
        for row in range(q):
            expected, all_scores = _reference(templates, queries[row], k)
            np.testing.assert_array_equal(indices[row], expected)
            np.testing.assert_array_equal(scores[row], all_scores[expected])


def test_search_and_search_many_agree_with_the_templates():
    rng = np.random.default_rng(1)
    embeddings = rng.normal(size=(300, 16)).astype(np.float32)
    labels = np.repeat(np.arange(100), 3)
    gallery = Gallery([f"id{i}" for i in range(100)], embeddings, labels)
    queries = rng.normal(size=(7, 16)).astype(np.float32)
    many = gallery.search_many(queries, top_k=5, threshold=0.2)
    small_chunks = gallery.search_many(queries, top_k=5, threshold=0.2, chunk_elements=64)
    for row, query in enumerate(queries):
        single = gallery.search(query, top_k=5, threshold=0.2)
        unit = query / np.linalg.norm(query)
        reference = gallery.templates @ unit
        order = np.argsort(-reference, kind="stable")[:5]
        assert [m.name for m in single] == [f"id{i}" for i in order]
        np.testing.assert_allclose([m.similarity for m in single], reference[order], rtol=1e-5, atol=1e-6)
        assert [m.accepted for m in single] == [bool(s >= 0.2) for s in (m.similarity for m in single)]
        assert [m.name for m in many[row]] == [m.name for m in single] == [m.name for m in small_chunks[row]]
        assert all(isinstance(m, Match) for m in many[row])


def test_a_person_is_found_among_many_and_top_k_is_capped():
    rng = np.random.default_rng(2)
    people = rng.normal(size=(5000, 64)).astype(np.float32)
    gallery = Gallery.from_embeddings({f"p{i}": v for i, v in enumerate(people)})
    noisy = people[[17, 4321]] + 0.05 * rng.normal(size=(2, 64)).astype(np.float32)
    found = gallery.search_many(noisy, top_k=3)
    assert [f[0].name for f in found] == ["p17", "p4321"] and found[0][0].similarity > 0.99
    tiny = Gallery.from_embeddings({"a": np.ones(4, np.float32), "b": -np.ones(4, np.float32)})
    result = tiny.search(np.ones(4, np.float32), top_k=10)
    assert [m.name for m in result] == ["a", "b"]
    assert result[0].similarity == pytest.approx(1.0) and result[1].similarity == pytest.approx(-1.0)


def test_bad_queries_are_refused():
    gallery = Gallery.from_embeddings({"a": np.ones(8, np.float32), "b": np.arange(8, dtype=np.float32)})
    with pytest.raises(FaceRecognitionError, match="query embedding has 4 dimensions, the gallery 8"):
        gallery.search(np.ones(4, np.float32))
    with pytest.raises(FaceRecognitionError, match="query embedding has 4 dimensions"):
        gallery.search_many(np.ones((3, 4), np.float32))
    with pytest.raises(FaceRecognitionError, match="top_k must be at least 1"):
        gallery.search(np.ones(8, np.float32), top_k=0)
    assert gallery.search_many(np.zeros((0, 8), np.float32)) == []
