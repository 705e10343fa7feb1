"""Cancel-and-reuse and threads soak (issue 11), the long version of tests/pipeline/test_soak.py.

Builds a random-weight BK-SDM-tiny-sized model of small width (the tests' fixture, written once to a
temporary folder), then: --cancels runs cancelled at random steps (callback returning False and
KeyboardInterrupt, alternately), each followed by a normal run that must equal a fresh model's;
RSS is printed every 10 runs and must stay flat. Then 4 threads on one model and on two models,
every result equal to its serial run.

    PYTHONPATH=python:tests python bench/soak.py [--cancels 100]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import threading
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "python"))
sys.path.insert(0, str(ROOT / "tests"))


def rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cancels", type=int, default=100)
    args = ap.parse_args()

    import sdcpp
    from fixtures import FixtureFactory

    with tempfile.TemporaryDirectory() as tmp:
        path = str(FixtureFactory(Path(tmp)).get("bk-sdm-tiny").path("ldm"))

        def run(model, seed, cb=None):
            return model.txt2img("a lighthouse", width=64, height=64, steps=4, sampler="euler_a", seed=seed,
                                 callback=cb, output_type="latent")[0]

        fresh = sdcpp.load(path, device="cpu", threads=2)
        expected = {s: run(fresh, s) for s in range(3)}
        model = sdcpp.load(path, device="cpu", threads=2)
        rng = np.random.default_rng(0)
        start = rss_mb()
        for i in range(args.cancels):
            stop = int(rng.integers(0, 4))

            def cb(step, total, x, stop=stop, kb=i % 2 == 0):
                if step == stop:
                    if kb:
                        raise KeyboardInterrupt
                    return False
                return True
            try:
                run(model, 1000 + i, cb)
            except (sdcpp.errors.Cancelled, KeyboardInterrupt):
                pass
            s = i % 3
            assert np.array_equal(run(model, s), expected[s]), f"run after cancel {i} differs"
            if i % 10 == 9:
                print(f"cancel {i + 1}: RSS {rss_mb():.0f} MiB (start {start:.0f})", flush=True)
        print(f"cancel soak: {args.cancels} cancelled runs, every next run equal to a fresh model's; "
              f"RSS {start:.0f} -> {rss_mb():.0f} MiB")

        other = sdcpp.load(path, device="cpu", threads=1)
        results, errors = {}, []

        def work(m, seed):
            try:
                results[(id(m), seed)] = run(m, seed)
            except Exception as exc:  # noqa: BLE001
                errors.append(exc)
        jobs = [(model, s) for s in range(3)] + [(other, s) for s in range(3)] + [(model, 0), (other, 1)]
        threads = [threading.Thread(target=work, args=j) for j in jobs]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        assert all(np.array_equal(results[(id(m), s)], expected[s]) for m, s in jobs)
        print(f"threads: {len(jobs)} concurrent runs on two models, every result equal to its serial run")


if __name__ == "__main__":
    main()
