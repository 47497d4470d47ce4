"""Markdown that text from a study cannot break out of: the one Jinja environment for reports.

Hypothesis statements, titles, reasons, persona names and every other string that reaches
REPORT.md may come from a prereg or study file, i.e. from a user or a collaborator. Every
`{{ value }}` of a report template passes through `md_escape` (the environment's `finalize`),
so such text cannot open raw HTML (`<script>`, `<img onerror=...>`), an autolink
(`<javascript:...>`), a markdown link or image (`[x](javascript:...)`, `![x](...)`) or a
reference definition. Markdown that leaklab itself rendered from escaped values (an interp
SECTION.md) is wrapped in `Trusted` and passed through unchanged.

The escaping is minimal on purpose, so raw REPORT.md stays readable: "p < 0.001", CIs like
"[+0.10, +0.30]" and "a & b" are left alone; only the sequences that start a tag, an entity
or a link are neutralised.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

# "<" that could open a tag, comment, declaration or autolink: followed by a letter, "/", "!" or "?".
_TAG_OPEN = re.compile(r"<(?=[A-Za-z/!?])")
# "&" that would be read as an HTML entity (&#60; &nbsp;), except the two this module writes
# itself (&amp; &lt;: they render as literal characters), so that escaping twice changes nothing.
_ENTITY = re.compile(r"&(?!amp;|lt;)(?=#?[A-Za-z0-9]+;)")
# "]" that closes link text before "(" (inline link/image), "[" (reference link) or ":"
# (definition), unless an odd number of backslashes already escapes it (idempotent; "\\](" is
# a literal backslash followed by a live "](", so it is escaped).
_LINK_CLOSE = re.compile(r"(?<!\\)((?:\\\\)*)\](?=\s*[(\[:])")


class Trusted(str):
    """Markdown rendered by leaklab from already-escaped values: not escaped again."""


def md_escape(value: Any) -> str:
    """`value` as text that renders literally in markdown/HTML (see the module docstring)."""
    if isinstance(value, Trusted):
        return str(value)
    s = str(value)
    s = _ENTITY.sub("&amp;", s)
    s = _TAG_OPEN.sub("&lt;", s)
    return _LINK_CLOSE.sub(r"\1\\]", s)


# ---- the number filters every report and the interp section use (missing is "n/a", never 0)


def fmt_num(x: Any, nd: int = 2, signed: bool = False) -> str:
    """A number for a table; missing is 'n/a' (never 0)."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return f"{x:+d}" if signed else str(x)
    if x != 0 and 1e-4 <= abs(x) < 10 ** (-nd):  # small but not tiny: more decimals, never rounded to 0
        return f"{x:+.{nd + 2}f}" if signed else f"{x:.{nd + 2}f}"
    if abs(x) >= 1e4 or (x != 0 and abs(x) < 1e-4):
        return f"{x:+.{max(nd - 1, 1)}e}" if signed else f"{x:.{max(nd - 1, 1)}e}"
    return f"{x:+.{nd}f}" if signed else f"{x:.{nd}f}"


def fmt_p(p: Any) -> str:
    if p is None or (isinstance(p, float) and not math.isfinite(p)):
        return "n/a"
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def fmt_ci(lo: Any, hi: Any, nd: int = 2) -> str:
    if lo is None or hi is None:
        return "n/a"
    return f"[{fmt_num(lo, nd, True)}, {fmt_num(hi, nd, True)}]"


def fmt_sig(x: Any, nd: int = 3, signed: bool = False) -> str:
    """A number to `nd` significant digits (interp tables); missing or non-finite is 'n/a'."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    if not isinstance(x, (int, float)):
        return str(x)
    return f"{x:+.{nd}g}" if signed else f"{x:.{nd}g}"


def markdown_env(template_dir: str | Path, **filters: Any):
    """The Jinja environment every markdown report uses: strict undefined, `finalize=md_escape`,
    the number filters (`num`, `snum`, `p`, `ci`, `sig`, `ssig`) and the given filters (which
    may override them). Templates are leaklab's own files; values are escaped on output."""
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(template_dir)), undefined=jinja2.StrictUndefined,
        trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True, autoescape=False,
        finalize=md_escape,
    )
    env.filters.update(num=fmt_num, snum=lambda x, nd=2: fmt_num(x, nd, signed=True), p=fmt_p, ci=fmt_ci,
                       sig=fmt_sig, ssig=lambda x, nd=3: fmt_sig(x, nd, signed=True))
    env.filters.update(filters)
    return env
