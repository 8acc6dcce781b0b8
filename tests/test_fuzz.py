"""A seeded fuzz of `inspect`, `score` and `check` through the CLI (bench/fuzz.py's generator, a few dozen of it).

Each mutation changes one thing of a tiny dataset, a hand-built run folder or a filled cache; every command
must exit 0-5, never 70, never with a traceback, and never change an input file. bench/fuzz.py runs the same
generator for N = 1000 (bench/RESULTS.md).
"""

from __future__ import annotations

import time

#: Mutations per run: about 0.2 s each on this 2-core machine, so well under a minute.
MUTATIONS = 120


def test_cli_survives_seeded_mutations(tmp_path, make_run, bench_script):
    fuzz = bench_script("fuzz")
    started = time.perf_counter()
    summary = fuzz.fuzz(MUTATIONS, seed=20261201, work=tmp_path, make_run=make_run)
    report = "\n".join(summary.lines())
    assert summary.failures == [], report
    assert len(summary.kinds) == len(fuzz.MUTATIONS), report  # every kind of mutation was tried
    exits = {code for (_, code) in summary.exits}
    assert {0, 3, 4} <= exits, report  # the mutations reach the data and the model checks, not only usage errors
    assert time.perf_counter() - started < 120, report


def test_mutations_are_seeded(tmp_path, make_run, bench_script):
    fuzz = bench_script("fuzz")
    base = fuzz.make_base(tmp_path / "base", make_run)
    seen = []
    for attempt in range(2):
        work = tmp_path / f"w{attempt}"
        work.mkdir()
        summary = fuzz.Summary(3, 7)
        for i in range(3):
            folder = work / str(i)
            folder.mkdir()
            fuzz.run_mutation(base, i, 7, folder, summary)
        seen.append((dict(summary.kinds), dict(summary.exits)))
    assert seen[0] == seen[1]
