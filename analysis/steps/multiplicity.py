"""Step `multiplicity`: each preregistered family's correction (Holm / Bonferroni / none) over its
(hypothesis, model) members, applied to EVERY p-value a reading uses (minimum-effect, opposite,
TOST, nil), each adjusted over the family separately. `Effect.p_adjusted` keeps the adjusted p of
the preregistered test; `Effect.p_adjusted_by_test` holds all four."""

from __future__ import annotations

TESTS = ("min_effect", "opposite", "tost", "nil")
PREREG_TEST = {"minimum_effect": "min_effect", "tost": "tost", "nil": "nil"}


def step(state, prereg):
    from analysis import frequentist as F

    test = PREREG_TEST[prereg.frequentist.test]
    for fam, method in prereg.multiplicity.families.items():
        ids = [eid for (hid, _m), eid in state.hyp_effect.items() if prereg.hypothesis(hid).family == fam]
        if not ids:
            continue
        adj = {t: F.adjust([state.raw_p[i].get(t) for i in ids], method) for t in TESTS}
        for k, i in enumerate(ids):
            by_test = {t: adj[t][k] for t in TESTS}
            state.effects[i] = state.effects[i].model_copy(update={
                "p_adjusted": by_test[test], "p_adjusted_by_test": by_test,
                "multiplicity_family": f"{fam} ({method}, {len(ids)} tests, on each reading's p; p_adjusted on p_{prereg.frequentist.test})"})
    return state
