"""A short run of the mutation fuzzer (tests/fuzz/fuzz_readers.py) in the normal suite: 30
mutants per reader, each must open and materialise or raise one ConvertersError, within the
per-mutant timeout and memory limit. The scheduled run uses --count 10000."""
import os

import fuzz_readers as fz


def test_unmutated_sources_open_and_materialise(tmp_path):
    fz.generate_sources(str(tmp_path))
    for reader in fz.READERS:
        for base, entry, _, _, options in fz.Corpus(reader, str(tmp_path)).sources:
            expect = "ConvertersError" if entry in fz.REFUSED_SOURCES else "ok"
            assert fz.exercise(os.path.normpath(os.path.join(base, entry)), reader, options) == expect, (reader, entry)


def test_mutants_keep_the_error_contract():
    results = fz.campaign(fz.READERS, count=30, seed=1, timeout=20.0)
    bad = {r: v["bad"] for r, v in results.items() if v["bad"]}
    assert not bad, bad
    totals = {k: sum(v["counts"].get(k, 0) for v in results.values()) for k in ("ok", "ConvertersError")}
    assert sum(totals.values()) == 30 * len(fz.READERS) and min(totals.values()) > 30, totals
