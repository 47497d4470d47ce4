"""Step `effects`: the frequentist contrasts of every hypothesis (and descriptive arm-vs-reference ones)."""

from __future__ import annotations

import numpy as np

from analysis import frequentist as F


def tost_p(draws: np.ndarray, sesoi: float) -> float | None:
    """TOST p from bootstrap draws: the LARGER of the two one-sided p-values against -SESOI and
    +SESOI, not doubled (p < alpha exactly when the (1 - 2 alpha) CI lies inside +/- SESOI)."""
    d = np.asarray(draws, dtype=float)
    d = d[np.isfinite(d)]
    if len(d) == 0:
        return None
    s = abs(sesoi)
    return max(F.tail_p(d, -s, "below"), F.tail_p(d, s, "above"))
