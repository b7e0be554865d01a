"""Assemble `CostInputs` from layers: tunekit's records first, then an inputs YAML file, then flags.

A later layer wins key by key, and each key remembers which layer it came from.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import ValidationError

from tunekit.cost.inputs import CostInputs
from tunekit.cost.records import Layer, from_benchmark, from_estimate, from_request_log, from_run
from tunekit.errors import TunekitError
from tunekit.config.textfiles import read_yaml


def _flatten(data: dict, prefix: str = "") -> dict[str, object]:
    flat = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat


def file_layer(path: Path) -> Layer:
    """The keys of a cost inputs YAML file (the shape of CostInputs), each sourced to the file."""
    path = Path(path)
    data = read_yaml(path, "cost inputs YAML file", hint="see docs/cost.md for the inputs file")
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise TunekitError(f"{path}: the inputs file must be a YAML mapping", hint="see docs/cost.md for its keys")
    if "sources" in data:
        raise TunekitError(f"{path}: sources: set by tunekit, not by the inputs file", hint="remove the key")
    return {key: (value, f"{path}: {key}") for key, value in _flatten(data).items()}


def _problem(err: dict, sources: dict[str, str]) -> str:
    key = ".".join(str(p) for p in err["loc"])
    origin = sources.get(key)
    if err["type"] == "extra_forbidden":
        return f"{key}: unknown key" + (f" (in {origin.split(': ')[0]})" if origin else "")
    given = f" (got {err.get('input')!r}{', from ' + origin if origin else ''})" if err["type"] != "missing" else ""
    return f"{key}: {err['msg'].removeprefix('Value error, ')}{given}"


def merge_layers(layers: list[Layer]) -> tuple[dict, dict[str, str]]:
    """Nested data of the layers (later ones win key by key) and each key's source."""
    data: dict = {}
    sources: dict[str, str] = {}
    for layer in layers:
        for dotted, (value, source) in layer.items():
            node = data
            parts = dotted.split(".")
            for part in parts[:-1]:
                child = node.setdefault(part, {})
                if not isinstance(child, dict):
                    raise TunekitError(f"{source}: {dotted}: '{part}' is not a section", hint="see docs/cost.md for the keys")
                node = child
            node[parts[-1]] = value
            sources[dotted] = source
    return data, sources


def validate(model, data: dict, sources: dict[str, str], what: str):
    """`model.model_validate(data)`, every problem reported at once with its key and origin."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = [_problem(e, sources) for e in exc.errors()]
        raise TunekitError(
            f"{len(problems)} problem(s) in the {what}: " + "; ".join(problems),
            hint="see --help and docs/cost.md for every key and its allowed values",
        ) from None


def build_inputs(layers: list[Layer]) -> CostInputs:
    data, sources = merge_layers(layers)
    return validate(CostInputs, {**data, "sources": sources}, sources, "cost inputs")


def load_inputs(
    *,
    inputs_file: Path | None = None,
    flags: Layer | None = None,
    run: Path | None = None,
    estimate: Path | None = None,
    tokens_per_s: float | None = None,
    benchmark: Path | None = None,
    request_log: Path | None = None,
    log_model: str | None = None,
) -> CostInputs:
    """Records (run, estimate, benchmark, request log), then the inputs file, then flags."""
    layers: list[Layer] = []
    if run is not None:
        layers.append(from_run(run))
    if estimate is not None:
        layers.append(from_estimate(estimate, tokens_per_s))
    if benchmark is not None:
        layers.append(from_benchmark(benchmark))
    given = file_layer(inputs_file) if inputs_file is not None else {}
    if request_log is not None:  # a volume given in the file or a flag wins; then a short log still gives its tokens
        volume_given = "traffic.requests_per_day" in given or "traffic.requests_per_day" in (flags or {})
        layers.append(from_request_log(request_log, log_model, volume=not volume_given))
    layers.append(given)
    layers.append(flags or {})
    return build_inputs(layers)
