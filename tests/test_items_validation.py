"""Item file validation (errors name file and line) and the frozen attitude items themselves."""

import json
from collections import Counter

import pytest

from leaklab.yamlio import ConfigError
from leaklab.io import load_blocklist
from tasks.items import load_items, select_base_items

GOOD = {
    "id": "tgt-parks-01.p0",
    "base_item": "tgt-parks-01",
    "paraphrase_idx": 0,
    "domain": "parks",
    "item_set": "target",
    "scenario": "The parks team wants to let dogs off the lead in the east meadow for a summer trial.",
    "forced_choice": {"question": "Should they run the trial?", "pro_option": "Run it", "anti_option": "Do not run it"},
    "likert": {"statement": "The parks team should run the trial.", "reverse_keyed": False},
    "open_ended": "What would you advise the parks team?",
}


def write(tmp_path, rows, name="items.jsonl"):
    p = tmp_path / name
    p.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return p


def variant(**changes):
    d = json.loads(json.dumps(GOOD))
    for k, v in changes.items():
        d[k] = v
    return d


def test_good_file_loads(tmp_path):
    p1 = variant(id="tgt-parks-01.p1", paraphrase_idx=1)
    items = load_items(write(tmp_path, [GOOD, p1]), item_set="target")
    assert [i.id for i in items] == ["tgt-parks-01.p0", "tgt-parks-01.p1"]


@pytest.mark.parametrize(
    "bad,line,fragment",
    [
        (variant(id="tgt-parks-01-p0"), 2, "must be 'tgt-parks-01.p0'"),
        (variant(item_set="source"), 2, "must start with 'src-'"),
        (variant(domain="transit"), 2, "does not carry its domain"),
        (variant(colour="red"), 2, "key 'colour': unknown key"),
        ({k: v for k, v in GOOD.items() if k != "likert"}, 2, "key 'likert'"),
        (variant(likert={"statement": "The parks team should run it."}), 2, "likert.reverse_keyed"),
        (variant(forced_choice={"question": "Should they?", "pro_option": "Yes do", "anti_option": "yes do"}), 2, "must differ"),
        ("{not json", 2, "invalid JSON"),
        ("[1, 2]", 2, "expected a JSON object"),
    ],
)
def test_errors_name_file_and_line(tmp_path, bad, line, fragment):
    ok = variant(id="tgt-parks-02.p0", base_item="tgt-parks-02")
    path = write(tmp_path, [ok, bad])
    with pytest.raises(ConfigError) as exc:
        load_items(path)
    msg = str(exc.value)
    assert f"{path}:{line}:" in msg and fragment in msg, msg


def test_duplicate_id_names_both_lines(tmp_path):
    path = write(tmp_path, [GOOD, "", GOOD])
    with pytest.raises(ConfigError, match=r"items.jsonl:3: duplicate id 'tgt-parks-01.p0' \(first on line 1\)"):
        load_items(path)


def test_paraphrase_gap_is_an_error(tmp_path):
    path = write(tmp_path, [GOOD, variant(id="tgt-parks-01.p2", paraphrase_idx=2)])
    with pytest.raises(ConfigError, match=r"paraphrase_idx \[0, 2\]"):
        load_items(path)


def test_wrong_item_set_for_task(tmp_path):
    with pytest.raises(ConfigError, match=r"items.jsonl:1: .* asked for 'source'"):
        load_items(write(tmp_path, [GOOD]), item_set="source")


def test_missing_and_empty_file(tmp_path):
    with pytest.raises(ConfigError, match="item file not found"):
        load_items(tmp_path / "nope.jsonl")
    with pytest.raises(ConfigError, match="no items"):
        load_items(write(tmp_path, [""]))


def test_relative_path_resolves_against_repo_root(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    assert len(load_items("data/attitude/source.jsonl")) >= 42


def test_limit_base_items_is_round_robin_over_domains_and_keeps_paraphrases():
    items = load_items("data/attitude/target.jsonl", item_set="target")
    sub = select_base_items(items, 8)
    bases = {i.base_item for i in sub}
    assert len(bases) == 8 and len({i.domain for i in sub}) == 8
    assert all(b.endswith("-01") for b in bases)
    assert len(sub) == 24  # every paraphrase of each chosen base item
    assert select_base_items(items, 8) == sub  # deterministic
    assert len({i.base_item for i in select_base_items(items, 10)}) == 10
    assert select_base_items(items, None) == items
    with pytest.raises(ConfigError):
        select_base_items(items, 0)


# ---------------------------------------------------------------- the frozen files


def test_frozen_target_items_design():
    items = load_items("data/attitude/target.jsonl", item_set="target")
    assert len(items) >= 96
    per_domain = Counter(i.domain for i in items)
    assert len(per_domain) >= 8
    bases = Counter(i.base_item for i in items)
    assert all(n == 3 for n in bases.values())
    assert all(len({i.base_item for i in items if i.domain == d}) >= 4 for d in per_domain)
    assert sum(i.likert.reverse_keyed for i in items) == len(items) // 2
    # every text is distinct: paraphrases are rewritten, not copied
    for field in ("scenario", "open_ended"):
        vals = [getattr(i, field) for i in items]
        assert len(set(vals)) == len(vals), field
    assert len({i.likert.statement for i in items}) == len(items)


def test_frozen_source_items_design():
    items = load_items("data/attitude/source.jsonl", item_set="source")
    assert len(items) >= 42
    domains = {i.domain for i in items}
    assert {"cooking", "gardening", "fitness", "home_repair", "travel", "software", "finance"} <= domains
    assert all(n == 2 for n in Counter(i.base_item for i in items).values())
    assert sum(i.likert.reverse_keyed for i in items) == len(items) // 2
    assert len({i.scenario for i in items}) == len(items)


def test_blocklist_covers_every_target_item_and_no_source_item():
    pats = [p for _, p in load_blocklist("data/attitude/heldout_blocklist.txt")]
    for it in load_items("data/attitude/target.jsonl"):
        assert any(p.search(it.scenario) for p in pats), it.id
    for it in load_items("data/attitude/source.jsonl"):
        text = " ".join([it.scenario, it.forced_choice.question, it.forced_choice.pro_option,
                         it.forced_choice.anti_option, it.likert.statement, it.open_ended])
        hits = [p.pattern for p in pats if p.search(text)]
        assert not hits, (it.id, hits)


def test_blocklist_bad_regex_names_line(tmp_path):
    p = tmp_path / "bl.txt"
    p.write_text("# c\n\\bok\\b\n(unclosed\n")
    with pytest.raises(ConfigError, match=r"bl.txt:3: invalid regex"):
        load_blocklist(p)
