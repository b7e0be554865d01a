"""Errors a user can cause. The CLI prints them as one clear message and exits 1."""

from __future__ import annotations


class TunekitError(Exception):
    """A user-facing error: what is wrong, where, and what to do."""

    def __init__(self, message: str, *, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n  hint: {self.hint}"


class RecipeError(TunekitError):
    """The recipe is not valid. Carries every problem found, not just the first."""

    def __init__(self, path: str, problems: list[str]):
        self.path = path
        self.problems = problems
        lines = [f"{path}: {len(problems)} problem(s) in the recipe:"]
        lines += [f"  - {p}" for p in problems]
        super().__init__("\n".join(lines))


class DataError(TunekitError):
    """Input data cannot be used (missing file, every row invalid, strict mode...)."""


class ModelError(TunekitError):
    """A base model cannot be resolved or loaded."""


class RunDirError(TunekitError):
    """A run directory is missing a stage's output, or would be overwritten."""


class RegistryError(TunekitError):
    """A registry request cannot be done: unknown model, version or alias, a protected alias, a refused promotion."""
