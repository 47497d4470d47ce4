"""Custom: a study that declares everything itself (no family gates, no interp defaults)."""

from leaklab.families import Family

FAMILY = Family(name="custom", noun="The predicted effect", description="a study that declares everything itself")
