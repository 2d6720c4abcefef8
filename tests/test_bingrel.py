"""BINGREL bags from the mirror, their checks, and the text-level masking of T1 / T2 / T3 sentences."""

import json
import random
import shutil

import pytest

from kn_lib import data
from kn_lib.bingrel import BAGS_FILE, load_bags, mask_random_word, mask_tail
from kn_lib.data import DataError, DataSource


def test_paper_counts_of_every_bag(mirror):
    """Section 4.6: 210,217 texts with head and tail, 266,020 with the head only, for the 27,738 facts."""
    bags = load_bags(source=DataSource(mirror=mirror))
    assert len(bags) == 27_738
    assert sum(len(b.th_bags) for b in bags.values()) == 210_217
    assert sum(len(b.h_bags) for b in bags.values()) == 266_020
    assert max(len(b.th_bags) for b in bags.values()) <= 10  # "up to ten texts"
    # entry i of a file is fact i of query_pairs.json
    first = bags["P36/0"]
    assert (first.subject, first.object, first.relation) == ("Azerbaijan", "Baku", "P36")
    assert all("Azerbaijan" in s for s in first.h_bags)
    empty = [b for b in bags.values() if not b.th_bags]
    assert len(empty) == 1409  # facts without any T1 sentence: the experiment must report them


@pytest.fixture
def bag_mirror(tmp_path, mirror):
    """A copy of what ``load_bags(["P36"])`` reads, with P36's bag file free to break (no sha256 check)."""
    for rel in ("pararel/patterns", "knowledge-neurons/LAMA", "knowledge-neurons/BingDistantTREx/final"):
        (tmp_path / rel).mkdir(parents=True)
    for relpath in ("pararel/patterns/P36.jsonl", data.RELATIONS, data.QUERY_PAIRS, BAGS_FILE.format(relation="P36")):
        shutil.copy(mirror / relpath, tmp_path / relpath)
    return tmp_path


def _rewrite(root, edit):
    path = root / BAGS_FILE.format(relation="P36")
    entries = json.loads(path.read_text())
    path.write_text(json.dumps(edit(entries)))
    return path


@pytest.mark.parametrize(
    "edit,message",
    [
        (lambda e: e[:-1], "702 entries for 703 facts"),
        (lambda e: {"bags": e}, "expected a list"),
        (lambda e: [{"th_bags": []}] + e[1:], "entry 0 needs 'th_bags' and 'h_bags'"),
        (lambda e: e[:5] + [{"th_bags": "text", "h_bags": []}] + e[6:], "entry 5: 'th_bags' must be a list of strings"),
    ],
)
def test_malformed_bag_file_names_the_file_and_entry(bag_mirror, edit, message):
    path = _rewrite(bag_mirror, edit)
    with pytest.raises(DataError) as err:
        load_bags(["P36"], DataSource(mirror=bag_mirror, verify=False))
    assert str(path) in str(err.value) and message in str(err.value)


def test_a_changed_bag_file_fails_its_checksum(bag_mirror):
    _rewrite(bag_mirror, lambda e: e)  # same content, different bytes (no indentation)
    with pytest.raises(DataError, match="sha256 mismatch"):
        load_bags(["P36"], DataSource(mirror=bag_mirror))


def test_mask_tail_masks_a_whole_word_outside_the_head():
    s = "Brody Raion is a raion; Parisians love Brody, its centre."
    m = mask_tail(s, "Brody Raion", "Brody")
    assert (m.prefix, m.masked, m.suffix) == ("Brody Raion is a raion; Parisians love ", "Brody", ", its centre.")
    assert mask_tail("Parisians and Parisienne", "France", "Paris") is None  # not a whole word
    assert mask_tail("Dublin is in Ireland.", "Ireland", "Dublin").start == 0
    assert mask_tail("No tail here.", "head", "Dublin") is None
    special = mask_tail("He plays C++ (and C) well.", "He", "C++ (and C)")  # regex characters are literal
    assert special.masked == "C++ (and C)"


def test_mask_random_word_never_masks_the_first_word_or_the_head():
    s = "Kingdom of Scotland was a state in north-west Europe until 1707 ."
    seen = set()
    for seed in range(200):
        m = mask_random_word(s, random.Random(seed), head="Kingdom of Scotland")
        assert m.start > 0 and m.masked not in ("Kingdom", "of", "Scotland")
        assert " " not in m.masked and m.prefix + m.masked + m.suffix == s
        seen.add(m.masked)
    assert seen == {"was", "a", "state", "in", "north-west", "Europe", "until", "1707", "."}


def test_mask_random_word_is_seeded_and_bounded():
    s = " ".join(f"w{i}" for i in range(80))
    draws = [mask_random_word(s, random.Random(7)).masked for _ in range(3)]
    assert len(set(draws)) == 1
    positions = {int(mask_random_word(s, random.Random(k), max_words=50).masked[1:]) for k in range(500)}
    assert min(positions) >= 1 and max(positions) <= 49  # words 2..50
    assert mask_random_word("Alone", random.Random(0)) is None
    assert mask_random_word("Kingdom of", random.Random(0), head="Kingdom of") is None
