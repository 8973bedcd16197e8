"""Cost of the duplicate-detection content hash per MB of dataset, on this machine.

Feeds the hash the way the receiver does (one update per PDV-sized chunk) and
prints milliseconds per MB. Run: python bench/content_hash_cost.py
"""

from __future__ import annotations

import hashlib
import os
import time

from fastscp.storage.duplicates import new_content_hash

MB = 1 << 20


def cost_ms_per_mb(factory, total: int = 64 * MB, chunk: int = 16 * 1024, rounds: int = 5) -> float:
    data = memoryview(os.urandom(total))
    best = float("inf")
    for _ in range(rounds):
        h = factory()
        t0 = time.perf_counter()
        for off in range(0, total, chunk):
            h.update(data[off : off + chunk])
        h.hexdigest()
        best = min(best, time.perf_counter() - t0)
    return best * 1000 / (total / MB)


if __name__ == "__main__":
    for chunk in (16 * 1024, 256 * 1024):
        print(f"blake2b-128 (content hash), {chunk // 1024:>3} KiB updates: "
              f"{cost_ms_per_mb(new_content_hash, chunk=chunk):.3f} ms/MB")
    print(f"md5 for comparison,          16 KiB updates: {cost_ms_per_mb(hashlib.md5):.3f} ms/MB")
    print(f"sha256 for comparison,       16 KiB updates: {cost_ms_per_mb(hashlib.sha256):.3f} ms/MB")
    try:
        import xxhash  # optional, not a dependency
    except ImportError:
        pass
    else:
        print(f"xxh3_128 (optional xxhash),  16 KiB updates: {cost_ms_per_mb(xxhash.xxh3_128):.3f} ms/MB")
