"""Persona leakage (seed 003): one LoRA per source persona trained on a marker; does the
marker appear under bystander personas?"""

from leaklab.families import Family

FAMILY = Family(
    name="persona",
    noun="Marker leakage to other personas",
    description="marker rate under bystander personas after marker-only training on a source persona",
    measures=("marker",),
    manipulation="the marker rate under the source persona",
    validity_reference="base-model persona geometry (cosine to the source persona)",
    builders=("persona_marker",),
)
