"""The title states every decided confirmatory result: a leak found and a leak declined (the demo's
H1 supported, H2 equivalent), never more; and a refused d lowers the confidence only where the
verdict is read in d units."""

from types import SimpleNamespace as NS

from analysis.decide import confidence
from reports.renderer import claim_and_confidence


def _d(hid, verdict, statement, unit="raw"):
    return NS(hypothesis_id=hid, kind="confirmatory", verdict=verdict, statement=statement, gates=[],
              effect_ids=[f"e{hid}"], bayes_ids=[], frequentist_reading=None, bayes_reading=None,
              numbers={"sesoi_unit": unit})


def _study():
    return NS(name="demo", spec=NS(family="inoculation", title="Demo"))


def test_title_states_the_leak_found_and_the_leak_declined():
    results = NS(decisions=[_d("H1", "supported", "The style leaks."), _d("H2", "equivalent", "No leak without the trait.")],
                 confidence={"level": "high", "reasons": ["ok"]}, exploratory=False)
    claim = claim_and_confidence(_study(), results, [], True, False)
    assert claim.title.startswith("The style leaks (1 of 2 confirmatory hypotheses supported)")
    assert "practically no effect where none was predicted: No leak without the trait (1 equivalent" in claim.title
    assert claim.supported == ["H1"]
    # an undecided one is not stated
    results.decisions[1].verdict = "undecided"
    assert "No leak" not in claim_and_confidence(_study(), results, [], True, False).title


def test_an_equivalent_result_against_a_directional_prediction_is_not_called_predicted():
    # studies/inoculation: H2 predicted suppression by rephrased prefixes and found none
    results = NS(decisions=[_d("H1", "supported", "A fixed prefix suppresses."),
                            _d("H2", "equivalent", "Rephrased prefixes suppress.")],
                 confidence={"level": "high", "reasons": ["ok"]}, exploratory=False)
    vrows = [NS(hypothesis_id="H1", direction="positive"), NS(hypothesis_id="H2", direction="positive")]
    title = claim_and_confidence(_study(), results, vrows, True, False).title
    assert "practically no effect where one was predicted: Rephrased prefixes suppress (1 equivalent" in title
    assert "where none was predicted" not in title
    vrows[1] = NS(hypothesis_id="H2", direction="two_sided")  # a placebo: absence was the prediction
    assert "where none was predicted: Rephrased" in claim_and_confidence(_study(), results, vrows, True, False).title


def test_refused_d_counts_only_for_d_unit_verdicts():
    effects = {"eH1": NS(sd_ref_ok=False)}
    manip = [NS(passed=True)]
    raw = confidence([_d("H1", "supported", "x", unit="raw")], effects=effects, fits={}, manipulation=manip,
                     n_seeds=3, exploratory=False)
    assert not any("reference SD" in r for r in raw["reasons"])
    d_unit = confidence([_d("H1", "supported", "x", unit="d")], effects=effects, fits={}, manipulation=manip,
                        n_seeds=3, exploratory=False)
    assert any("reference SD" in r for r in d_unit["reasons"]) and d_unit["level"] == "low"
