"""The parts of the checkpoint page that apps above modeling contribute: evals its evaluations,
loop the comparisons generated from the checkpoint. Modeling must not import those apps, so
they register a section here from their AppConfig.ready(), as loop registers its reward
function with modeling.ml.rewards; the page (modeling.views.checkpoint) renders what is there.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.http import HttpRequest
from django.template.loader import render_to_string
from django.utils.safestring import SafeString

from modeling.models import Checkpoint
from modeling.selectors import LineageStep


@dataclass(frozen=True)
class CheckpointSection:
    key: str  # the section's id on the page, so `#key` links to it
    title: str  # its heading and its entry in the page's contents
    template: str  # rendered with `checkpoint`, `lineage` and what `context` returns
    # context(request, checkpoint=…, lineage=…) -> the template's own variables
    context: Callable[..., dict[str, Any]]
    order: int = 100  # lower comes first


@dataclass(frozen=True)
class RenderedSection:
    key: str
    title: str
    html: SafeString


_sections: dict[str, CheckpointSection] = {}


def checkpoint_section_register(section: CheckpointSection) -> None:
    """Add a section, or replace the one with the same key (apps set up twice in tests)."""
    _sections[section.key] = section


def checkpoint_sections_render(
    request: HttpRequest, *, checkpoint: Checkpoint, lineage: list[LineageStep]
) -> list[RenderedSection]:
    shared = {"checkpoint": checkpoint, "lineage": lineage}
    rendered = []
    for section in sorted(_sections.values(), key=lambda s: (s.order, s.key)):
        extra = section.context(request, checkpoint=checkpoint, lineage=lineage)
        html = render_to_string(section.template, {**shared, **extra}, request=request)
        rendered.append(RenderedSection(section.key, section.title, html))
    return rendered
