"""The BLiMP loader: fields of both forms read from the mirror, the grouping rule on real rows, pinned
sources, and a clear error for an unknown paradigm, a tampered file or a row without its fields."""

import json
import shutil

import pytest

from kn_lib import blimp, data, sources
from kn_lib.blimp import MinimalPair, determiner_group, load_pairs, load_paradigm, verb_number
from kn_lib.data import DataError, DataSource


@pytest.fixture(scope="module")
def source(mirror):
    return DataSource(mirror=mirror)


def _by_id(pairs):
    return {p.pair_id: p for p in pairs}


def test_one_prefix_paradigm_fields(source):
    pairs = load_paradigm("determiner_noun_agreement_1", source)
    assert len(pairs) == 1000 and len({p.pair_id for p in pairs}) == 1000
    # row 0: "Raymond is selling this sketch." / "Raymond is selling this sketches."
    assert pairs[0] == MinimalPair("determiner_noun_agreement_1", 0, "one_prefix", "Raymond is selling this",
                                   "Raymond is selling this", "sketch", "sketches", "this+singular")
    assert all(p.prefix_good == p.prefix_bad and p.word_good != p.word_bad for p in pairs)
    assert _by_id(pairs)[2].group == "these+plural"  # "Eva has scared these children."


def test_two_prefix_paradigm_fields(source):
    pairs = load_paradigm("determiner_noun_agreement_2", source)
    assert len(pairs) == 1000
    # row 0: "Some dog stunned this committee." / "Some dog stunned these committee."
    assert pairs[0] == MinimalPair("determiner_noun_agreement_2", 0, "two_prefix", "Some dog stunned this",
                                   "Some dog stunned these", "committee", "committee", "this+singular")
    assert _by_id(pairs)[1].group == "these+plural"  # "Tracy passed these art galleries."
    assert all(p.word_good == p.word_bad and p.prefix_good != p.prefix_bad for p in pairs)


def test_determiner_group_on_real_rows(source):
    # the with_adj paradigms put an adjective after the determiner: not the prefix's last word
    first = load_paradigm("determiner_noun_agreement_with_adj_2", source)[0]
    assert first.prefix_good == "Cynthia scans these hard" and first.group == "these+plural"
    assert determiner_group("Laurie hasn't lifted those") == "those+plural"
    assert determiner_group("He said that Carl fixed this") == "this+singular"  # the last demonstrative counts
    with pytest.raises(ValueError, match="no demonstrative"):
        determiner_group("Raymond is selling")


def test_subject_verb_group_on_real_rows(source):
    regular_1 = _by_id(load_paradigm("regular_plural_subject_verb_agreement_1", source))
    assert (regular_1[0].word_good, regular_1[0].group) == ("references", "singular-subject")  # "Paula references Robert."
    assert (regular_1[1].word_good, regular_1[1].group) == ("haven't", "plural-subject")  # "Most legislatures haven't ..."
    assert (regular_1[6].word_good, regular_1[6].group) == ("hasn't", "singular-subject")  # "Jeffrey hasn't criticized ..."
    irregular_2 = _by_id(load_paradigm("irregular_plural_subject_verb_agreement_2", source))
    assert (irregular_2[0].prefix_good, irregular_2[0].word_good, irregular_2[0].group) == ("The women", "meet", "plural-subject")
    assert (irregular_2[1].prefix_good, irregular_2[1].group) == ("The child", "singular-subject")  # "isn't"
    assert (irregular_2[405].prefix_good, irregular_2[405].word_good, irregular_2[405].group) == ("The alumni", "pass", "plural-subject")
    # BLiMP's label noise: "The girls irritates Karen." is the "good" sentence; the group follows the verb
    noisy = _by_id(load_paradigm("regular_plural_subject_verb_agreement_2", source))[210]
    assert (noisy.prefix_good, noisy.word_good, noisy.group) == ("The girls", "irritates", "singular-subject")


def test_verb_rule_separates_every_one_prefix_pair(source):
    for name in ("regular_plural_subject_verb_agreement_1", "irregular_plural_subject_verb_agreement_1"):
        pairs = load_paradigm(name, source)
        assert all(verb_number(p.word_good) != verb_number(p.word_bad) for p in pairs)
        assert {p.group for p in pairs} == {"singular-subject", "plural-subject"}
    assert [verb_number(v) for v in ("discusses", "discuss", "is", "aren't", "worries", "worry")] == \
        ["singular", "plural", "singular", "plural", "singular", "plural"]


def test_all_paradigms_and_their_groups(source):
    pairs = load_pairs(source=source)
    assert len(pairs) == 12_000 and len(blimp.PARADIGMS) == 12 and len(blimp.DETERMINER_NOUN) == 8
    groups = {p.group for p in pairs if p.paradigm in blimp.DETERMINER_NOUN}
    assert groups == {"this+singular", "that+singular", "these+plural", "those+plural"}
    assert {p.form for p in pairs if p.paradigm.endswith("_2")} == {"two_prefix"}
    assert [p.paradigm for p in load_pairs(["determiner_noun_agreement_2"], source)] == ["determiner_noun_agreement_2"] * 1000


def test_unknown_paradigm_lists_the_known_ones(source):
    with pytest.raises(ValueError, match="determiner_noun_agreement_1") as err:
        load_paradigm("determiner_noun_agreement_3", source)
    assert "unknown" in str(err.value)
    with pytest.raises(ValueError, match="unknown"):
        load_pairs(["anaphor_gender_agreement"], source)


def test_sources_are_pinned():
    assert len(sources.BLIMP_COMMIT) == 40
    for name in blimp.PARADIGMS:
        assert blimp.relpath_of(name) in sources.SHA256
        url = data.url_of(blimp.relpath_of(name))
        assert url == f"https://raw.githubusercontent.com/alexwarstadt/blimp/{sources.BLIMP_COMMIT}/data/{name}.jsonl"


def _copy(mirror, tmp_path, name):
    rel = blimp.relpath_of(name)
    (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(mirror / rel, tmp_path / rel)
    return tmp_path / rel


def test_tampered_file_fails_its_checksum(mirror, tmp_path):
    path = _copy(mirror, tmp_path, "determiner_noun_agreement_1")
    path.write_text(path.read_text().replace("sketches", "sketchez", 1))
    with pytest.raises(DataError, match="sha256 mismatch"):
        load_paradigm("determiner_noun_agreement_1", DataSource(mirror=tmp_path))


def test_row_without_its_fields(tmp_path, mirror):
    path = _copy(mirror, tmp_path, "determiner_noun_agreement_2")
    row = json.loads(path.read_text().splitlines()[0])
    del row["two_prefix_word"]
    path.write_text(json.dumps(row) + "\n")
    with pytest.raises(DataError, match="two_prefix_word"):
        load_paradigm("determiner_noun_agreement_2", DataSource(mirror=tmp_path, verify=False))
