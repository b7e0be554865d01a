"""API keys of the serving gateway: where they come from and how a presented key is checked.

Keys come from a keys file (YAML or JSON) and from the environment, merged:

```yaml
keys:                              # or the list alone, without the `keys:` mapping
  - id: acme                       # what logs and metrics see; the key itself is never logged
    key: sk-acme-...               # or key_sha256: <hex digest>, so the file holds no secret
    role: user                     # user (default) or admin
    rate_per_min: 60               # optional; overrides the gateway default
    max_concurrent: 4              # optional; overrides the gateway default
    burst: 10                      # optional; requests at once after idling (default: a minute's worth)
```

- `TUNEKIT_API_KEYS="id:key,id2:key2"`: user keys.
- `TUNEKIT_ADMIN_KEY="key"`: one admin key, with id `admin`.

Only SHA-256 digests are kept in memory. A presented key is hashed and compared with every
configured digest by `hmac.compare_digest`, without stopping at the first match, so neither the
comparison nor the position of the key in the list shows in the answer time.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from tunekit.errors import TunekitError
from tunekit.config.textfiles import read_text

ENV_USER_KEYS = "TUNEKIT_API_KEYS"
ENV_ADMIN_KEY = "TUNEKIT_ADMIN_KEY"
ENV_ADMIN_ID = "admin"
_HEX_DIGEST = re.compile(r"[0-9a-f]{64}")
_KEY_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")

Role = Literal["user", "admin"]


def key_digest(key: str) -> str:
    """The hex SHA-256 of a key: what a keys file may hold instead of the key (`key_sha256`)."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class ApiKey:
    """One configured key. `digest` is kept out of repr so a logged object shows no secret material."""

    id: str
    digest: str = field(repr=False)
    role: Role = "user"
    rate_per_min: float | None = None
    max_concurrent: int | None = None
    burst: int | None = None
    source: str = ""  # where it was configured, for error messages


class _KeyEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(description="Name of the key in logs and metrics (letters, digits, . _ -).")
    key: str | None = Field(None, min_length=8, description="The key itself.")
    key_sha256: str | None = Field(None, description="Hex SHA-256 of the key, instead of the key.")
    role: Role = Field("user", description="user: the completion routes; admin: also the state-changing routes.")
    rate_per_min: float | None = Field(None, gt=0, description="Requests per minute for this key.")
    max_concurrent: int | None = Field(None, gt=0, description="Requests in flight at once for this key.")
    burst: int | None = Field(None, gt=0, description="Requests this key may send at once after being idle.")

    @model_validator(mode="after")
    def _one_secret(self) -> "_KeyEntry":
        if not _KEY_ID.fullmatch(self.id):
            raise ValueError(f"id {self.id!r} must be 1-64 letters, digits, '.', '_' or '-'")
        if (self.key is None) == (self.key_sha256 is None):
            raise ValueError("give exactly one of `key` and `key_sha256`")
        if self.key_sha256 is not None and not _HEX_DIGEST.fullmatch(self.key_sha256.lower()):
            raise ValueError("key_sha256 must be 64 hex digits (sha256sum of the key)")
        return self

    def to_key(self, source: str) -> ApiKey:
        digest = self.key_sha256.lower() if self.key_sha256 else key_digest(self.key or "")
        return ApiKey(self.id, digest, self.role, self.rate_per_min, self.max_concurrent, self.burst, source)


def _problem_path(loc: tuple) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")


def load_keys_file(path: Path) -> list[ApiKey]:
    """Keys from a YAML or JSON file; every problem in the file is reported at once, by entry."""
    path = Path(path)
    hint = "see tunekit/serve/keys.py for the keys file format"
    if not path.is_file():
        raise TunekitError(f"{path}: keys file not found", hint="pass an existing keys_file")
    text = read_text(path, "keys file", hint=hint)
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise TunekitError(f"{path}: not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {exc}", hint=hint) from None
    if isinstance(data, dict) and set(data) == {"keys"}:
        data = data["keys"]
    if not isinstance(data, list):
        raise TunekitError(f"{path}: expected a list of keys (or `keys:` holding one)", hint=hint)
    keys, problems = [], []
    for index, entry in enumerate(data):
        try:
            keys.append(_KeyEntry.model_validate(entry).to_key(f"{path}: keys[{index}]"))
        except ValidationError as exc:
            for error in exc.errors():
                where = _problem_path(("keys", index, *error["loc"]))
                problems.append(f"{where}: {error['msg'].removeprefix('Value error, ')}")
    if problems:
        raise TunekitError(f"{path}: " + "; ".join(problems), hint=hint)
    return keys


def keys_from_env(env: Mapping[str, str]) -> list[ApiKey]:
    """User keys from TUNEKIT_API_KEYS ("id:key,id:key") and the admin key from TUNEKIT_ADMIN_KEY."""
    keys = []
    for number, item in enumerate(filter(None, (s.strip() for s in env.get(ENV_USER_KEYS, "").split(","))), start=1):
        key_id, sep, key = item.partition(":")
        if not sep or not key or not _KEY_ID.fullmatch(key_id):
            # The item itself is not echoed: it may be a bare key.
            raise TunekitError(
                f"{ENV_USER_KEYS}: item {number} is not `id:key`",
                hint=f'write {ENV_USER_KEYS}="team-a:sk-...,team-b:sk-..." (ids: letters, digits, . _ -)',
            )
        keys.append(ApiKey(key_id, key_digest(key), "user", source=f"{ENV_USER_KEYS} item {number}"))
    admin = env.get(ENV_ADMIN_KEY, "").strip()
    if admin:
        keys.append(ApiKey(ENV_ADMIN_ID, key_digest(admin), "admin", source=ENV_ADMIN_KEY))
    return keys


class KeyStore:
    """The configured keys. Empty means an open server (no key checked)."""

    def __init__(self, keys: list[ApiKey]):
        seen: dict[str, ApiKey] = {}
        digests: dict[str, ApiKey] = {}
        for key in keys:
            if key.id in seen:
                raise TunekitError(
                    f"key id {key.id!r} is configured twice ({seen[key.id].source} and {key.source})",
                    hint="give every key its own id: the id is what logs and metrics count by",
                )
            if key.digest in digests:
                raise TunekitError(
                    f"the same key is configured twice ({digests[key.digest].source} and {key.source})",
                    hint="give every client its own key",
                )
            seen[key.id], digests[key.digest] = key, key
        self._keys = list(keys)

    @classmethod
    def load(cls, keys_file: Path | None = None, env: Mapping[str, str] | None = None) -> "KeyStore":
        """Keys from `keys_file` (when given) and the environment (`os.environ` by default)."""
        keys = load_keys_file(keys_file) if keys_file is not None else []
        return cls(keys + keys_from_env(os.environ if env is None else env))

    @property
    def configured(self) -> bool:
        return bool(self._keys)

    @property
    def has_admin(self) -> bool:
        return any(k.role == "admin" for k in self._keys)

    @property
    def ids(self) -> list[str]:
        return [k.id for k in self._keys]

    def lookup(self, presented: str) -> ApiKey | None:
        """The key whose digest equals the presented key's, compared with every key in constant time."""
        digest = key_digest(presented).encode("ascii")
        found = None
        for key in self._keys:
            if hmac.compare_digest(digest, key.digest.encode("ascii")):
                found = key
        return found

    def __len__(self) -> int:
        return len(self._keys)
