"""Units saved inside a long shard (kn_lib.run.partial): written atomically, a unit without its done marker
is not trusted, cleared once the shard is written."""

import pandas as pd
import pytest

from kn_lib.run.partial import PartialShard


def test_saved_units_come_back_and_clear_removes_them(tmp_path):
    partial = PartialShard.of(tmp_path, "ig")
    assert partial.finished() == {}
    partial.save("P19", {"table": pd.DataFrame({"p": [0.5, 0.25]}), "neurons": pd.DataFrame({"layer": [3]})})
    partial.save("P27", {"table": pd.DataFrame({"p": [1.0]}), "neurons": pd.DataFrame({"layer": []})})
    got = partial.finished()
    assert set(got) == {"P19", "P27"} and set(got["P19"]) == {"table", "neurons"}
    assert got["P19"]["table"]["p"].tolist() == [0.5, 0.25]
    partial.clear()
    assert partial.finished() == {} and not (tmp_path / "partial").exists()


def test_a_unit_killed_while_saving_is_left_out(tmp_path):
    partial = PartialShard.of(tmp_path, "random-layer")
    partial.save("P19", {"table": pd.DataFrame({"p": [0.5]})})
    (partial.dir / "P19.done.parquet").unlink()  # as if killed before the marker was written
    assert partial.finished() == {} and "P19" in partial.load()


def test_unit_names_cannot_escape_their_folder(tmp_path):
    with pytest.raises(ValueError, match="unit names"):
        PartialShard.of(tmp_path, "ig").save("../P19", {"table": pd.DataFrame()})


def test_saved_units_lists_what_each_unfinished_shard_kept_for_kn_info(tmp_path):
    from kn_lib.run.partial import saved_units

    PartialShard.of(tmp_path, "ig").save("P27", {"table": pd.DataFrame({"p": [1.0]})})
    PartialShard.of(tmp_path, "ig").save("P19", {"table": pd.DataFrame({"p": [1.0]})})
    PartialShard.of(tmp_path, "random-layer").save("P19", {"table": pd.DataFrame({"p": [1.0]})})
    (PartialShard.of(tmp_path, "random-layer").dir / "P19.done.parquet").unlink()
    assert saved_units(tmp_path) == {"ig": ["P19", "P27"]}
