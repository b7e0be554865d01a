"""One rich console for everything tunekit prints (stderr for progress and logs)."""

from rich.console import Console

console = Console(stderr=True, highlight=False)
