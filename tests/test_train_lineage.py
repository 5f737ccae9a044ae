"""The record of the runs behind a model folder, and the one rule read from it."""

from __future__ import annotations

from cnet.train.lineage import UNRECORDED, continues, read_lineage, write_lineage


def test_a_fine_tune_continues_its_start_only_as_the_start_is_now(tmp_path):
    start, tuned = tmp_path / "start", tmp_path / "tuned"
    start.mkdir()
    tuned.mkdir()
    assert not continues(tuned, start)  # a folder without a record continues nothing
    write_lineage(tuned, read_lineage(start), {"trainer": "fine-tune"})
    assert read_lineage(start) == [UNRECORDED] and continues(tuned, start)
    write_lineage(start, [], {"trainer": "shared"})  # the start trained again since
    assert not continues(tuned, start)
    write_lineage(tuned, read_lineage(start), {"trainer": "fine-tune"})
    assert continues(tuned, start)
    assert not continues(start, tuned)
