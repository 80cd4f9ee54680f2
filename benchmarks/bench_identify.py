"""Identify latency against gallery size: `Gallery.search` / `search_many` vs a plain Python loop.

The loop is what people write first (and what the seed projects did): a dict name -> embedding, one
`np.dot` per identity inside a Python `for`, then `sorted`.  `Gallery.search` is one float32 matrix
product over the L2-normalised templates, chunked, with top-k by `np.argpartition`; `search_many`
does a batch of queries in the same product.  Both run in the same process on the same random
normalised embeddings (one per identity), so the ratios carry over to other machines; the answers
are checked to agree.

Prints a JSON object and a Markdown table (milliseconds per query, best of --repeats runs).

Usage: python benchmarks/bench_identify.py [--sizes 1000,10000,100000] [--dim 512] [--top-k 5]
                                           [--queries 100] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np

from face_recognition_tf.faces.gallery import Gallery, l2_normalize


def _best_seconds(fn, repeats: int) -> float:
    """Best of `repeats` runs (as `timeit` reports): on a shared machine the other processes only ever
    add time, so the minimum is the closest to the cost of the code itself."""
    fn()  # warm-up: page in the arrays, BLAS thread start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(min(times))


def _python_loop(people: dict, query: np.ndarray, top_k: int) -> list:
    scores = []
    for name, embedding in people.items():
        scores.append((float(np.dot(embedding, query)), name))
    return [name for _, name in sorted(scores, reverse=True)[:top_k]]


def measure(size: int, dim: int, top_k: int, queries: int, repeats: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    embeddings = l2_normalize(rng.standard_normal((size, dim), dtype=np.float32))
    names = [f"id{i:06d}" for i in range(size)]
    gallery = Gallery(names, embeddings, np.arange(size))
    people = dict(zip(names, gallery.templates))
    batch = l2_normalize(rng.standard_normal((queries, dim), dtype=np.float32))
    query = batch[0]

    assert [m.name for m in gallery.search(query, top_k)] == _python_loop(people, query, top_k)
    loop_repeats = max(1, repeats if size <= 10_000 else min(repeats, 3))
    loop = _best_seconds(lambda: _python_loop(people, query, top_k), loop_repeats)
    single = _best_seconds(lambda: gallery.search(query, top_k), repeats)
    many = _best_seconds(lambda: gallery.search_many(batch, top_k), repeats) / queries
    return {
        "identities": size,
        "python_loop_ms": 1e3 * loop,
        "search_ms": 1e3 * single,
        "search_many_ms_per_query": 1e3 * many,
        "search_speedup": loop / single,
        "search_many_speedup": loop / many,
        "gallery_mb": gallery.templates.nbytes / 2**20,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--top-k", type=int, default=5)
    parser.add_argument("--queries", type=int, default=100, help="batch size of search_many")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    rows = [measure(int(s), args.dim, args.top_k, args.queries, args.repeats) for s in args.sizes.split(",")]
    print(json.dumps({"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
                      "numpy": np.__version__, "dim": args.dim, "top_k": args.top_k, "queries": args.queries,
                      "rows": rows}, indent=2))
    print("\n| identities | Python loop ms | search ms | x loop | search_many ms/query (batch "
          f"{args.queries}) | x loop |\n|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['identities']:,} | {r['python_loop_ms']:.2f} | {r['search_ms']:.3f} | {r['search_speedup']:.0f} | "
              f"{r['search_many_ms_per_query']:.4f} | {r['search_many_speedup']:.0f} |")


if __name__ == "__main__":
    main()
