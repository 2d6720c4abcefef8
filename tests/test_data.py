"""The paper's dataset from the mirror, and a clear one-line error for every kind of bad input."""

import json
import shutil

import pytest

from kn_lib import data, sources
from kn_lib.data import DataError, DataSource


@pytest.fixture(scope="module")
def source(mirror):
    return DataSource(mirror=mirror)


def test_paper_counts(source):
    facts = data.load_facts(source=source)
    prompts = data.load_prompts(source=source)
    assert len(data.relation_ids(source)) == 34
    assert len(facts) == 27_738  # paper, section 4.2
    assert len(prompts) == 253_448
    assert len(set(facts["fact_id"])) == len(facts)


def test_relations_have_types_labels_and_at_least_four_templates(source):
    rels = data.load_relations(source=source)
    assert set(r.type for r in rels.values()) == {"1-1", "N-1", "N-M"}
    assert rels["P19"].label == "place of birth" and rels["P19"].templates[0] == "[X] was born in [Y]."
    assert min(len(r.templates) for r in rels.values()) >= 4
    mean_templates = sum(len(r.templates) for r in rels.values()) / len(rels)
    # the paper says 8.63 templates per relation; the pinned PARAREL commit gives 9.35 (a finding, not a bug)
    assert round(mean_templates, 2) == 9.35


def test_prompts_fill_the_subject_and_keep_the_answer_slot(source):
    prompts = data.load_prompts(["P19"], source=source)
    row = prompts[0]
    assert row["prompt"] == row["template"].replace("[X]", row["subject"])
    assert "[Y]" in row["prompt"]


def test_every_pinned_file_of_the_mirror_checks_out(source):
    for relpath in sources.SHA256:
        if relpath.startswith(("pararel/patterns/", "knowledge-neurons/LAMA/relations")):
            source.path(relpath)


def test_urls_are_pinned_to_commits():
    url = data.url_of("pararel/patterns/P19.jsonl")
    assert sources.PARAREL_COMMIT in url and url.endswith("/data/pattern_data/graphs_json/P19.jsonl")
    assert sources.KN_COMMIT in data.url_of(data.QUERY_PAIRS)


@pytest.fixture
def fake_mirror(tmp_path, mirror):
    """A copy of the small files of the mirror that the tests may break."""
    for rel in ("pararel/patterns", "knowledge-neurons/LAMA"):
        (tmp_path / rel).mkdir(parents=True)
    for f in (mirror / "pararel/patterns").glob("*.jsonl"):
        shutil.copy(f, tmp_path / "pararel/patterns" / f.name)
    shutil.copy(mirror / data.RELATIONS, tmp_path / data.RELATIONS)
    (tmp_path / "knowledge-neurons/BingDistantTREx").mkdir(parents=True)
    shutil.copy(mirror / data.QUERY_PAIRS, tmp_path / data.QUERY_PAIRS)
    return tmp_path


def _one_line(err: Exception) -> str:
    msg = str(err)
    assert "\n" not in msg
    return msg


def test_missing_file(fake_mirror):
    (fake_mirror / "pararel/patterns/P19.jsonl").unlink()
    with pytest.raises(DataError) as err:
        data.load_templates("P19", DataSource(mirror=fake_mirror))
    assert "P19.jsonl" in _one_line(err.value) and "missing" in str(err.value)


def test_checksum_mismatch(fake_mirror):
    path = fake_mirror / "pararel/patterns/P19.jsonl"
    path.write_text(path.read_text().replace("born", "borne"))
    with pytest.raises(DataError) as err:
        data.load_templates("P19", DataSource(mirror=fake_mirror))
    assert "P19.jsonl" in _one_line(err.value) and "sha256 mismatch" in str(err.value)


def test_malformed_json_line_names_file_and_line(fake_mirror):
    path = fake_mirror / "pararel/patterns/P19.jsonl"
    lines = path.read_text().splitlines()
    lines[2] = '{"pattern": "[X] was born in [Y].",'
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError) as err:
        data.load_templates("P19", DataSource(mirror=fake_mirror, verify=False))
    assert f"{path}:3: malformed JSON line" in _one_line(err.value)


@pytest.mark.parametrize("pattern,slot", [("[X] was born somewhere.", "[Y]"), ("Someone was born in [Y].", "[X]")])
def test_template_without_a_slot(fake_mirror, pattern, slot):
    path = fake_mirror / "pararel/patterns/P19.jsonl"
    lines = path.read_text().splitlines()
    lines[1] = json.dumps({"pattern": pattern})
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError) as err:
        data.load_templates("P19", DataSource(mirror=fake_mirror, verify=False))
    assert f"{path}:2:" in _one_line(err.value) and slot in str(err.value)


def test_unknown_relation_id(source):
    with pytest.raises(DataError, match="P99999: unknown relation id"):
        data.load_templates("P99999", source)
    with pytest.raises(DataError, match="P1001: unknown relation id"):  # a PARAREL relation, but < 4 templates
        data.load_facts(["P1001"], source=source)


def test_unknown_file_and_failed_download(tmp_path):
    with pytest.raises(DataError, match="not a known upstream file"):
        DataSource(mirror=tmp_path).path("nope.json")
    offline = DataSource(mirror=None, cache_dir=tmp_path)
    # no network here: the download fails with a one-line message naming the file and URL, nothing left behind
    with pytest.raises(DataError) as err:
        offline.path("pararel/patterns/P19.jsonl")
    assert "P19.jsonl" in _one_line(err.value) and "download" in str(err.value)
    assert not list(tmp_path.rglob("*.part"))


def test_relation_summary(source):
    summary = data.relation_summary(source).set_index("relation")
    assert summary["facts"].sum() == 27_738 and summary["prompts"].sum() == 253_448
    assert (summary["causal_templates"] <= summary["templates"]).all()
    assert summary.loc["P19", "templates"] == 13 and summary.loc["P19", "type"] == "N-1"
    assert data.causal_usable("[X] was born in [Y].") and not data.causal_usable("[Y] is the birthplace of [X].")
