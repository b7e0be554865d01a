"""What every recipe section shares: the strict base model, and the marker of fields that hold paths.

A relative path in a recipe means "next to the recipe file", so a recipe and its files travel
together. Which fields hold paths is said once, on the field itself (`RecipePath`, or a type
annotated with a `RecipeRelative` marker); loading walks the models and anchors every marked
value, so a new path field cannot be left out.
"""

from __future__ import annotations

import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict
from pydantic.fields import FieldInfo


class Section(BaseModel):
    """A recipe section: unknown keys are errors, and assignments are validated like the file."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


@dataclass(frozen=True)
class RecipeRelative:
    """Marks a field whose relative values are paths anchored at the recipe's folder on load.

    `is_path` picks the values that are paths where a field also takes plain names (a forgetting
    suite is a built-in name like `general`, or a file); None: every value is a path."""

    is_path: Callable[[str], bool] | None = None


RELATIVE_TO_RECIPE = RecipeRelative()
RecipePath = Annotated[Path, RELATIVE_TO_RECIPE]


def _marker_in(annotation: Any) -> RecipeRelative | None:
    if typing.get_origin(annotation) is Annotated:
        base, *metadata = typing.get_args(annotation)
        found = next((m for m in metadata if isinstance(m, RecipeRelative)), None)
        return found or _marker_in(base)
    for arg in typing.get_args(annotation):
        found = _marker_in(arg)
        if found is not None:
            return found
    return None


def path_marker(field: FieldInfo) -> RecipeRelative | None:
    """The field's RecipeRelative marker, wherever it sits (`RecipePath | None`, `list[RecipePath]`...)."""
    # pydantic moves the metadata of a top-level Annotated onto the field; nested ones stay in the annotation.
    found = next((m for m in field.metadata if isinstance(m, RecipeRelative)), None)
    return found or _marker_in(field.annotation)


def _anchored(value: Any, base: Path, marker: RecipeRelative) -> Any:
    if value is None:
        return None
    if isinstance(value, list):
        return [_anchored(v, base, marker) for v in value]
    if hasattr(value, "is_absolute"):
        # A Path, or a hub dataset standing where a path stands: it says it is absolute, so it is never anchored.
        return value if value.is_absolute() else base / value
    if marker.is_path is not None and not marker.is_path(value):
        return value
    return value if Path(value).is_absolute() else str(base / value)


def anchor_paths(section: BaseModel, base: Path) -> None:
    """Anchor every marked path of `section` and of its nested sections at `base`, in place."""
    for name, field in type(section).model_fields.items():
        value = getattr(section, name)
        marker = path_marker(field)
        if marker is not None:
            setattr(section, name, _anchored(value, base, marker))
            continue
        for child in value if isinstance(value, list) else [value]:
            if isinstance(child, BaseModel):
                anchor_paths(child, base)
