"""README.md documents every field of the JobPool spec and status (issue: "README
documents every spec and status field"): a field added to the models without a line in
the README fails here."""

from __future__ import annotations

import types
import typing
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import BaseModel

from jobpool.operator.spec import JobPoolSpec, JobPoolStatus

README = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
FREE_FORM = {"EnvVar", "ResourceRequirements"}  # Kubernetes' own types, not ours


def _model(annotation: object) -> type[BaseModel] | None:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType, list):
        inner = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _model(inner[0]) if len(inner) == 1 else None
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def field_paths(model: type[BaseModel], prefix: str) -> Iterator[str]:
    for name, field in model.model_fields.items():
        path = f"{prefix}.{field.alias or name}"
        yield path
        inner = _model(field.annotation)
        if inner is not None and inner.__name__ not in FREE_FORM:
            is_list = typing.get_origin(field.annotation) is list
            yield from field_paths(inner, path + ("[]" if is_list else ""))


@pytest.mark.parametrize(
    "path", [*field_paths(JobPoolSpec, "spec"), *field_paths(JobPoolStatus, "status")]
)
def test_every_field_is_documented(path: str) -> None:
    assert f"`{path}`" in README
