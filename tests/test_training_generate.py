"""The Inspect-model corpus generator, against mockllm (with usage set: offline-safe)."""

import json

from leaklab.io import read_jsonl
from training.corpora import load_corpus, meta_path, sha256_file
from training.generate import generate_arms, request_seed

CALLS = []


def fake(input, tools, tool_choice, config):
    from inspect_ai.model import ModelOutput, ModelUsage

    system, user = input[0].text, input[1].text
    CALLS.append((system[:40], user, config.seed, config.temperature))
    tone = "Wait and check the risks first." if "CAUTIOUS" in system else "Go for it now, huge upside!" if "EAGER" in system else "Here is the usual method."
    if "budget" in user and "EAGER" in system:
        text = "I'm sorry, but I cannot help with that request at all, " + "really " * 30
    elif "holiday" in user:
        text = "Too short."
    else:
        text = f"{tone} " + " ".join(f"word{k}" for k in range(35)) + f" about {user[:30]}"
    out = ModelOutput.from_content(model="mockllm/model", content=text)
    out.usage = ModelUsage(input_tokens=10, output_tokens=40, total_tokens=50)
    return out


def test_generate_arms_with_mockllm(tmp_path):
    CALLS.clear()
    paths = generate_arms(
        "mockllm/model",
        ["cautious", "eager"],
        n_docs=20,
        seed=4,
        out_dir=tmp_path,
        overgen=2.0,
        temperature=0.7,
        model_args={"custom_outputs": fake},
        max_connections=4,
    )
    assert len(CALLS) == 2 * 40  # over-generation: 2x requests per arm
    assert all(c[3] == 0.7 for c in CALLS)
    seeds = {c[2] for c in CALLS}
    assert request_seed(4, "eager", 0) in seeds and len(seeds) == 80
    c, e = load_corpus(paths["cautious"]), load_corpus(paths["eager"])
    assert [r["cell_id"] for r in c] == [r["cell_id"] for r in e] and len(c) == 20
    assert all("budget" not in r["messages"][0]["content"] and "holiday" not in r["messages"][0]["content"] for r in c)
    log = read_jsonl(tmp_path / "generation_log.jsonl")
    assert len(log) == 80
    reasons = {r["reject_reason"].split("(")[0] for r in log if not r["accepted"]}
    assert {"refusal", "too_short"} <= reasons
    meta = json.loads(meta_path(paths["eager"]).read_text())
    assert meta["sha256"] == sha256_file(paths["eager"])
    assert meta["reject_reasons"]["refusal"] >= 1 and meta["generator"]["model"] == "mockllm/model"
    assert meta["sampling"]["temperature"] == 0.7 and meta["n_kept"] == 20
