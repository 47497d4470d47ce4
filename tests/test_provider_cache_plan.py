"""The eval plan's order lets the provider share work: entries on the same items run back to back."""

from types import SimpleNamespace

from leaklab.evaluate import entries_in_order


def _entry(task, item_set, items):
    return SimpleNamespace(task=task, item_set=item_set, args={"items": items})


def test_entries_on_the_same_items_run_back_to_back():
    plan = [
        _entry("tasks/stance.py@letter_logprob", "target", "t.jsonl"),
        _entry("tasks/stance.py@letter_logprob", "source", "s.jsonl"),
        _entry("tasks/stance.py@likert", "target", "other.jsonl"),
        _entry("tasks/stance.py@forced_choice", "target", "t.jsonl"),
        _entry("tasks/stance.py@forced_choice", "source", "s.jsonl"),
    ]
    study = SimpleNamespace(spec=SimpleNamespace(eval=plan))
    order = [(e.task.split("@")[1], e.item_set, e.args["items"]) for e in entries_in_order(study)]
    assert order == [
        ("letter_logprob", "source", "s.jsonl"), ("forced_choice", "source", "s.jsonl"),  # source first
        ("letter_logprob", "target", "t.jsonl"), ("forced_choice", "target", "t.jsonl"),  # same items together
        ("likert", "target", "other.jsonl"),
    ]
    only = entries_in_order(study, item_sets=["target"])
    assert [e.args["items"] for e in only] == ["t.jsonl", "t.jsonl", "other.jsonl"]
