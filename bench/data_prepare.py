"""Throughput and peak memory of `recone-lite data prepare` on synthetic Amazon-2023 reviews.

Generates N reviews (+ item meta) in a temporary folder, runs `python -m recone_lite data
prepare` in a child process for N = 100k and N (default 1,000,000), and prints reviews/s and
the child's peak RSS side by side. Goal on a 2-core CPU machine: 1M reviews in <= 60 s, with
memory that grows much slower than the input.

    python bench/data_prepare.py              # 100k and 1M
    python bench/data_prepare.py --n 300000   # 100k and 300k
    python bench/data_prepare.py --gzip       # .jsonl.gz inputs
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORDS = ("great sound quality but the case scratches easily and the battery lasts long "
         "comfortable light cheap broke after a week would buy again love it too small "
         "arrived late works as described excellent value disappointing colour fits well").split()


def generate(folder: Path, n: int, seed: int = 0, gz: bool = False) -> tuple[Path, Path]:
    """Write n synthetic reviews and the meta of their items; return the two paths.

    About n/8 users and n/20 items; users and items are drawn with a skew so that many survive
    the 5-core filter, as in real Amazon 5-core subsets.
    """
    rng = random.Random(seed)
    users, items = max(1, n // 8), max(1, n // 20)
    corpus = " ".join(rng.choice(WORDS) for _ in range(50_000))
    opener = gzip.open if gz else open
    suffix = ".jsonl.gz" if gz else ".jsonl"
    reviews, meta = folder / f"reviews{suffix}", folder / f"meta{suffix}"
    with opener(reviews, "wt", encoding="utf-8") as out:
        for _ in range(n):
            user = int(users * rng.random() ** 1.5)
            item = int(items * rng.random() ** 2)
            start = rng.randrange(len(corpus) - 1200)
            text = corpus[start:start + rng.randrange(40, 1200)]
            out.write(json.dumps({
                "rating": float(rng.randint(1, 5)), "title": text[:30], "text": text,
                "images": [], "asin": f"B{item:09d}", "parent_asin": f"B{item:09d}",
                "user_id": f"AG{user:026d}", "timestamp": 1_400_000_000_000 + rng.randrange(
                    300_000_000_000), "helpful_vote": rng.randrange(5), "verified_purchase": True,
            }) + "\n")
    with opener(meta, "wt", encoding="utf-8") as out:
        for item in range(items):
            start = rng.randrange(len(corpus) - 400)
            out.write(json.dumps({
                "main_category": "Digital Music", "title": f"Album {item}", "average_rating": 4.5,
                "rating_number": 10, "features": [corpus[start:start + 120]],
                "description": [corpus[start:start + 300]], "price": 9.99, "images": [],
                "videos": [], "store": f"Artist {item % 997}", "categories": ["Digital Music"],
                "details": {"Label": "X"}, "parent_asin": f"B{item:09d}", "bought_together": None,
            }) + "\n")
    return reviews, meta


def run(reviews: Path, meta: Path, out: Path) -> tuple[float, float, float, dict]:
    """Run prepare in a child; return (wall seconds, CPU seconds, peak RSS in MiB, its counts)."""
    command = [sys.executable, "-m", "recone_lite", "data", "prepare", "--source", "amazon-2023",
               "--reviews", str(reviews), "--meta", str(meta), "--out", str(out)]
    start = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    stdout = child.stdout.read() if child.stdout else b""
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - start
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        sys.exit(f"prepare failed with exit code {child.returncode}")
    return seconds, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, json.loads(stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="reviews in the large run")
    parser.add_argument("--small", type=int, default=100_000, help="reviews in the small run")
    parser.add_argument("--gzip", action="store_true", help="write the inputs gzip-compressed")
    args = parser.parse_args()
    rows = []
    for n in (args.small, args.n):
        folder = Path(tempfile.mkdtemp(prefix="recone-bench-"))
        try:
            clock = time.perf_counter()
            reviews, meta = generate(folder, n, gz=args.gzip)
            made = time.perf_counter() - clock
            seconds, cpu, rss, counts = run(reviews, meta, folder / "out")
            size = sum(p.stat().st_size for p in (folder / "out").iterdir())
            rows.append((n, seconds, cpu, rss, counts, reviews.stat().st_size, size))
            print(f"N={n:,}: generated in {made:.1f} s, prepared in {seconds:.1f} s",
                  file=sys.stderr)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    print(f"{'reviews':>10} {'input MB':>9} {'wall s':>7} {'CPU s':>6} {'reviews/s':>10}"
          f" {'peak RSS MiB':>13} {'examples':>10} {'output MB':>10}")
    for n, seconds, cpu, rss, counts, size_in, size_out in rows:
        examples = sum(counts["examples"].values())
        print(f"{n:>10,} {size_in / 1e6:>9.0f} {seconds:>7.1f} {cpu:>6.1f} {n / seconds:>10,.0f}"
              f" {rss:>13.0f} {examples:>10,} {size_out / 1e6:>10.0f}")
    (n0, s0, _, r0, *_), (n1, s1, _, r1, *_) = rows
    print(f"ratio {n1 / n0:.0f}x reviews: {s1 / s0:.1f}x time, {r1 / r0:.2f}x peak RSS")


if __name__ == "__main__":
    main()
