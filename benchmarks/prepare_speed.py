"""recbole_mm.prepare on an Amazon-sized dump: reading, k-core and split (encoders excluded).

    OMP_NUM_THREADS=1 python benchmarks/prepare_speed.py                 # 1M interactions
    OMP_NUM_THREADS=1 python benchmarks/prepare_speed.py --n 200000 --workdir /tmp/prep_small

Generates (once, kept in ``--workdir``) a gzip JSON-lines review file in the 2014 Amazon
format (reviewerID, asin, reviewerName, helpful, reviewText, overall, summary,
unixReviewTime, reviewTime) with power-law user activity and item popularity, and a
``meta`` file (2014 Python-literal lines: asin, title, description, categories, brand, imUrl).
Then, in a fresh process (so generation does not count), runs ``prepare_dataset`` without
encoders (``text=False, images=False``) and prints the seconds of each step and the peak RSS.
Target: <= 60 s and <= 2 GB on 2 cores.
"""
import argparse
import gzip
import json
import os
import resource
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

WORDS = ("soft cotton baby blanket bottle warm stroller seat safe easy clean small large blue pink toy "
         "gift car travel sleep bath feeding organic durable light the a and it is was for my this that with "
         "but not very great love good nice works well daughter son price quality bought recommend would "
         "again size fits perfect little cute week month after before using used use fine ok return broke "
         "cheap expensive sturdy comfortable happy old new year first second time day night").split()


def generate(folder, n, seed=0):
    import numpy as np

    rng = np.random.default_rng(seed)
    n_users, n_items = max(1, n // 6), max(1, n // 14)
    # power law: user activity ~ Pareto, item popularity ~ Zipf-like weights
    user_weight = rng.pareto(1.6, n_users) + 1
    item_weight = 1.0 / np.arange(1, n_items + 1) ** 0.8
    users = rng.choice(n_users, n, p=user_weight / user_weight.sum())
    items = rng.permutation(n_items)[rng.choice(n_items, n, p=item_weight / item_weight.sum())]
    times = rng.integers(1_100_000_000, 1_400_000_000, n)
    ratings = rng.choice([1.0, 2.0, 3.0, 4.0, 5.0], n, p=[0.05, 0.05, 0.1, 0.25, 0.55])
    lengths = rng.integers(20, 120, n)
    word_ids = rng.integers(0, len(WORDS), (4096, 120))  # 4,096 texts, cycled (keeps generation fast)
    os.makedirs(folder, exist_ok=True)
    reviews = os.path.join(folder, "reviews_Bench_5.json.gz")
    with gzip.open(reviews, "wt", encoding="utf-8", compresslevel=3) as handle:
        for k in range(n):
            # reviewText of 20-120 words (Amazon's median review is about 50 words)
            text = " ".join(WORDS[j] for j in word_ids[k % len(word_ids)][: lengths[k]])
            handle.write(json.dumps({
                "reviewerID": f"A{users[k]:012X}", "asin": f"B{items[k]:09d}", "reviewerName": "Someone",
                "helpful": [0, 0], "reviewText": text, "overall": float(ratings[k]), "summary": "Fine",
                "unixReviewTime": int(times[k]), "reviewTime": "01 1, 2012"}) + "\n")
    meta = os.path.join(folder, "meta_Bench.json.gz")
    with gzip.open(meta, "wt", encoding="utf-8", compresslevel=3) as handle:
        for item in range(n_items):
            handle.write(repr({
                "asin": f"B{item:09d}", "title": f"Product {item}", "description": "A product. " * 5,
                "categories": [["Baby", WORDS[item % len(WORDS)]]], "brand": f"Brand{item % 97}",
                "imUrl": f"http://example.invalid/{item}.jpg"}) + "\n")
    return reviews, meta


def measure(reviews, meta, out):
    import numpy as np

    from recbole_mm.prepare import kcore, prepare_dataset, read_interactions, read_item_table, split_labels

    timings = {}
    start = time.perf_counter()
    frame = read_interactions(reviews)
    timings["read reviews"] = time.perf_counter() - start
    start = time.perf_counter()
    table = read_item_table(meta, set(frame["item"].unique()))
    timings["read meta"] = time.perf_counter() - start
    start = time.perf_counter()
    import pandas as pd

    users, items = pd.factorize(frame["user"])[0], pd.factorize(frame["item"])[0]
    keep, passes = kcore(users, items, 5, 5)
    timings[f"5-core ({passes} passes)"] = time.perf_counter() - start
    start = time.perf_counter()
    user_ids = np.unique(users[keep], return_inverse=True)[1]
    split_labels(user_ids, frame["timestamp"].to_numpy()[keep], "mmrec", 0)
    timings["split"] = time.perf_counter() - start
    del frame, table
    start = time.perf_counter()
    result = prepare_dataset(reviews, meta, "bench", out, text=False, images=False, overwrite=True,
                             missing_items="drop")
    timings["prepare_dataset end to end (no encoders)"] = time.perf_counter() - start
    print(result.summary())
    for step, seconds in timings.items():
        print(f"{step:<44}{seconds:8.1f} s")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20  # KiB -> GiB
    print(f"{'peak RSS':<44}{peak:8.2f} GiB")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="interactions")
    parser.add_argument("--workdir", default="/tmp/recbole_mm_prepare_bench")
    parser.add_argument("--measure", nargs=2, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        measure(*args.measure, os.path.join(args.workdir, "out"))
        return
    folder = os.path.join(args.workdir, f"n{args.n}")
    reviews, meta = (os.path.join(folder, name) for name in ("reviews_Bench_5.json.gz", "meta_Bench.json.gz"))
    if not (os.path.isfile(reviews) and os.path.isfile(meta)):
        start = time.perf_counter()
        generate(folder, args.n)
        print(f"generated {args.n:,} interactions in {time.perf_counter() - start:.0f} s: {reviews} "
              f"({os.path.getsize(reviews) / 2 ** 20:.0f} MiB), {meta}")
    env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    subprocess.run([sys.executable, os.path.abspath(__file__), "--workdir", args.workdir, "--measure", reviews, meta],
                   check=True, env=env)


if __name__ == "__main__":
    main()
