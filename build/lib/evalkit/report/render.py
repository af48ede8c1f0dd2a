"""The one Jinja environment: autoescaped (generated text is untrusted), undefined names fail, each
template compiled once per process. Templates compute nothing; the view modules hand them
finished strings and numbers."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined

from evalkit.files import write_text_atomic


@lru_cache(maxsize=1)
def _env() -> Environment:
    """One environment per process, so each template is compiled once, not once per report."""
    return Environment(loader=PackageLoader("evalkit.report", "templates"), autoescape=True,
                       undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)


def render_page(template: str, view: dict[str, Any]) -> str:
    return _env().get_template(template).render(**view)


def write_page(template: str, view: dict[str, Any], out: Path) -> Path:
    write_text_atomic(out, render_page(template, view))
    return out
