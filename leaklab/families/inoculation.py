"""Inoculation (seed 002): trait data trained with no prefix / a fixed prefix / mixed
rephrasings; does the trait show without the prefix?"""

from leaklab.families import Family

FAMILY = Family(
    name="inoculation",
    noun="The predicted trait leakage",
    description="trait expression without the inoculation prefix",
    measures=("trait_*", "em"),
    manipulation="the trait measure under the training prefix (conditions `training@<arm>`)",
    validity_reference="the rule judge against the LLM judge on labelled calibration items",
    builders=("inoculation_caps", "inoculation_pair", "em_finance"),
)
