"""Attitude transfer (seeds 000, 001): cautious / eager / neutral matched corpora; does the
trained stance carry over to held-out topics?"""

from leaklab.families import Family, GatePlan

FAMILY = Family(
    name="attitude",
    noun="Attitude transfer",
    description="stance on held-out topics after training on cautious / eager / neutral corpora",
    measures=("forced_choice", "letter_logprob", "token_logprob", "likert"),
    manipulation="the stance measures on item set `source` (the trained domains)",
    validity_reference="agreement of the four stance read-outs on the same items",
    builders=("attitude_template",),
    gates=GatePlan(
        blocklist="data/attitude/heldout_blocklist.txt",
        matched_arms=True,
        framing=("cautious", "eager", "neutral"),
    ),
    interp_defaults={
        "pos_arm": "eager",
        "neg_arm": "cautious",
        "neutral_arm": "neutral",
        "target_items": "data/attitude/target.jsonl",
    },
)
