"""A served `NAME@ALIAS` follows the registry: when a promote or rollback gives the alias to another
version, the server loads that version's adapter and answers with it from then on, without a restart.

One thread polls `registry.alias_version` (a read-only query) for every followed alias. On a change
it resolves the new holder, checks its digests, and asks the engine to swap the adapter served
under that name; requests already decoding finish on the version they started with. A version
that cannot be served (altered files, another base, a full model) is refused with a logged reason
and the old one keeps answering.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

from tunekit.errors import TunekitError

logger = logging.getLogger("tunekit.serve")


@dataclass
class Switch:
    """One change of what a followed alias answers with, as /health reports it."""

    served: str
    from_version: int | None
    to_version: int | None
    ok: bool
    reason: str | None = None


@dataclass
class AliasFollower:
    """Polls the registry every `interval_s` for the aliases of `served` ({served name: "NAME@ALIAS"})."""

    engine: object
    served: dict[str, str]
    interval_s: float = 0.5
    switches: list[Switch] = field(default_factory=list)
    _seen: dict[str, tuple[int, int] | None] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> "AliasFollower":
        from tunekit.registry import alias_version, parse_ref

        for name, ref in self.served.items():
            parsed = parse_ref(ref)
            self._seen[name] = alias_version(parsed.model, parsed.alias)
        self._thread = threading.Thread(target=self._loop, name="tunekit-alias-follower", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            for name, ref in self.served.items():
                try:
                    self.check(name, ref)
                except Exception:  # a registry hiccup must not stop the server from following later changes
                    logger.exception("following %s failed", ref)

    def check(self, name: str, ref: str) -> Switch | None:
        """Swap `name` to the alias's holder if it changed since the last look; the Switch, or None."""
        from tunekit.registry import alias_version, parse_ref
        from tunekit.serve.sources import from_registry

        parsed = parse_ref(ref)
        state = alias_version(parsed.model, parsed.alias)
        if state == self._seen.get(name):
            return None
        self._seen[name] = state
        current = self.engine.served(name).version
        if state is None:
            switch = Switch(name, current, None, False, f"{ref} has no holder any more; version {current} keeps answering")
        elif state[0] == current:
            return None
        else:
            try:
                source = from_registry(ref, name)
                self.engine.replace_adapter(name, source)
                switch = Switch(name, current, source.version, True)
            except TunekitError as exc:
                switch = Switch(name, current, state[0], False, exc.message)
        (logger.info if switch.ok else logger.warning)(
            "%s: %s", ref, f"now version {switch.to_version} (was {switch.from_version})" if switch.ok else switch.reason
        )
        self.switches.append(switch)
        return switch
