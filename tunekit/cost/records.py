"""Cost inputs read from tunekit's own records: a run directory, an estimate, a serving benchmark,
a request log. Each reader returns a `Layer`: dotted input keys -> (value, where it came from).

The request log is the SQLite file `tunekit serve` writes (tunekit.serve.requestlog, read with its
own reader), or JSONL rows with the same columns: `created` (unix time or ISO 8601),
`prompt_tokens`, `completion_tokens`, and optionally `model` and `status`. Refused requests
(status 400 and up) are not traffic the model served, so they are not counted.
"""

from __future__ import annotations

import datetime as dt
import json
import statistics
from pathlib import Path

from tunekit.errors import TunekitError
from tunekit.runs import RunPaths

Layer = dict[str, tuple[object, str]]
LOG_COLUMNS = ("created", "prompt_tokens", "completion_tokens")
MIN_LOG_SPAN_S = 3600  # below an hour of traffic, a daily volume is a guess


def _json_file(path: Path, what: str, hint: str):
    if not path.is_file():
        raise TunekitError(f"{path}: {what} not found", hint=hint)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise TunekitError(f"{path}: line {exc.lineno}: invalid JSON in the {what}: {exc.msg}", hint=hint) from None


def _last_tokens_seen(metrics: Path) -> tuple[int, int, int] | None:
    """(tokens seen, line number, step) of the last metrics.jsonl line that logged tokens_seen."""
    found = None
    for number, line in enumerate(metrics.read_text(encoding="utf-8").splitlines(), start=1):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            raise TunekitError(f"{metrics}: line {number}: invalid JSON", hint="metrics.jsonl is written by tunekit train; retrain or fix the line") from None
        if isinstance(row, dict) and isinstance(row.get("tokens_seen"), (int, float)):
            found = (int(row["tokens_seen"]), number, row.get("step", 0))
    return found


def from_run(run_dir: Path) -> Layer:
    """Training hours and hardware (manifest.json), tokens trained (metrics.jsonl), training rows."""
    run = RunPaths(Path(run_dir))
    hint = "pass the directory of a finished `tunekit train` run (it holds manifest.json)"
    manifest = _json_file(run.manifest, "run manifest", hint)
    layer: Layer = {}
    result = manifest.get("result") or {}
    runtime = result.get("runtime_s")
    if not isinstance(runtime, (int, float)) or runtime <= 0:
        raise TunekitError(f"{run.manifest}: result.runtime_s is missing", hint="the run did not finish; train it to the end first")
    layer["training.hours"] = (runtime / 3600, f"{run.manifest}: result.runtime_s ({runtime:,.1f} s)")
    hardware = manifest.get("hardware") or {}
    gpus = hardware.get("gpus") or []
    if gpus:
        layer["training.gpu"] = (gpus[0], f"{run.manifest}: hardware.gpus[0]")
        layer["training.gpus"] = (len(gpus), f"{run.manifest}: hardware.gpus ({len(gpus)} listed)")
    else:
        cpus = hardware.get("cpu_count")
        layer["training.gpu"] = ("cpu", f"{run.manifest}: hardware (no GPU listed; {cpus} CPU cores)")
    rows = (manifest.get("training") or {}).get("train_rows")
    if isinstance(rows, int) and rows > 0:
        layer["data.examples"] = (rows, f"{run.manifest}: training.train_rows")
    if run.metrics.is_file():
        seen = _last_tokens_seen(run.metrics)
        if seen is not None:
            tokens, line, step = seen
            layer["training.tokens"] = (tokens, f"{run.metrics}: line {line}: tokens_seen (step {step})")
    return layer


def from_estimate(path: Path, tokens_per_s: float | None = None) -> Layer:
    """Training time and tokens from `tunekit estimate --json` output, or by estimating a recipe now."""
    path = Path(path)
    if path.suffix == ".json":
        data = _json_file(path, "estimate", "write one with `tunekit estimate RECIPE --json > estimate.json`")
        seconds, tokens, where = data.get("seconds"), data.get("total_tokens"), f"{path}"
        speed = data.get("tokens_per_s_source") or "given"
    else:
        from tunekit.config import load_recipe
        from tunekit.train.estimate import estimate

        result = estimate(load_recipe(path), tokens_per_s=tokens_per_s)
        seconds, tokens, where = result.seconds, result.total_tokens, f"tunekit estimate {path}"
        speed = result.tokens_per_s_source
    if not seconds:
        raise TunekitError(
            f"{path}: the estimate has no training time",
            hint="give the training speed on the target GPU: --tokens-per-s N (also with `tunekit estimate`)",
        )
    layer: Layer = {"training.hours": (seconds / 3600, f"{where}: seconds ({seconds:,.0f} s; tokens/s {speed})")}
    if tokens:
        layer["training.tokens"] = (tokens, f"{where}: total_tokens")
    return layer


def _rows_of(path: Path) -> list[tuple[int, dict]]:
    """(line, object) of a JSON object, JSON array or JSONL file."""
    text = path.read_text(encoding="utf-8")
    try:
        whole = json.loads(text)
    except json.JSONDecodeError:
        whole = None
    if isinstance(whole, dict):
        return [(1, whole)]
    if isinstance(whole, list):
        return [(i + 1, row) for i, row in enumerate(whole) if isinstance(row, dict)]
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise TunekitError(f"{path}: line {number}: invalid JSON: {exc.msg}", hint="one JSON object per line") from None
        if isinstance(row, dict):
            rows.append((number, row))
    return rows


def _rates(row: dict, prefix: str = "") -> list[tuple[str, float, str]]:
    """(key path, requests/s, workload) of every positive `requests_per_s` in a row, nested ones too
    (bench/serve_throughput.py writes one per measurement: `hf.eight_clients.requests_per_s`)."""
    found = []
    rate = row.get("requests_per_s")
    if isinstance(rate, (int, float)) and not isinstance(rate, bool) and rate > 0:
        found.append((f"{prefix}requests_per_s", float(rate), str(row.get("workload") or "")))
    for key, value in row.items():
        if isinstance(value, dict):
            found += _rates(value, f"{prefix}{key}.")
    return found


def from_benchmark(path: Path) -> Layer:
    """Sustained requests/s of one serving replica: the best `requests_per_s` of a benchmark file."""
    path = Path(path)
    if not path.is_file():
        raise TunekitError(f"{path}: serving benchmark not found", hint="pass a JSON/JSONL file with a requests_per_s figure")
    measured = [(n, row, key, rate, workload) for n, row in _rows_of(path) for key, rate, workload in _rates(row)]
    if not measured:
        raise TunekitError(f"{path}: no row has a positive requests_per_s", hint="a serving benchmark row looks like {\"requests_per_s\": 12.5, ...}")
    line, best, key, rate, workload = max(measured, key=lambda item: item[3])
    described = f" ({workload})" if workload else ""
    layer: Layer = {
        "finetuned.hosting": ("self_hosted", f"{path}: a serving benchmark means self-hosting"),
        "finetuned.requests_per_s": (rate, f"{path}: line {line}: {key}{described}, best of {len(measured)}"),
    }
    gpus = (best.get("hardware") or {}).get("gpus") or []
    cpus = (best.get("settings") or {}).get("cpus")
    if gpus:
        layer["finetuned.gpu"] = (gpus[0], f"{path}: line {line}: hardware.gpus[0]")
    elif cpus:  # bench/serve_throughput.py on a machine without a GPU
        layer["finetuned.gpu"] = ("cpu", f"{path}: line {line}: settings.cpus ({cpus} CPU cores, no GPU)")
    return layer


def _timestamp(value, where: str) -> float:
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            stamp = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            pass
        else:
            return (stamp if stamp.tzinfo else stamp.replace(tzinfo=dt.timezone.utc)).timestamp()
    raise TunekitError(f"{where}: created: {value!r} is not a unix time or an ISO 8601 time", hint="write times like 2026-05-01T12:00:00Z")


def _log_rows(path: Path, model: str | None) -> tuple[list[dict], str]:
    """(rows, each with `_where`, and a description of the log) of a SQLite request log or JSONL rows."""
    with path.open("rb") as fh:
        is_sqlite = fh.read(16) == b"SQLite format 3\x00"
    if is_sqlite:
        from tunekit.serve.requestlog import read_rows

        rows = [{**row, "_where": f"{path}: requests id {row['id']}"} for row in read_rows(path, model=model)]
        return rows, f"{path}: table requests"
    rows = []
    for number, row in _rows_of(path):
        missing = [c for c in LOG_COLUMNS if c not in row]
        if missing:
            raise TunekitError(f"{path}: line {number}: missing {', '.join(missing)}", hint=f"each request row needs {', '.join(LOG_COLUMNS)}")
        if model is None or row.get("model") == model:
            rows.append({**row, "_where": f"{path}: line {number}"})
    return rows, str(path)


def from_request_log(path: Path, model: str | None = None, *, volume: bool = True) -> Layer:
    """Requests per day and mean prompt / completion tokens of the answered requests of a log.
    `volume=False` (the volume is given elsewhere): a log too short to measure one still gives its tokens."""
    path = Path(path)
    if not path.is_file():
        raise TunekitError(f"{path}: request log not found", hint="pass the SQLite request log of `tunekit serve`, or a JSONL file of its rows")
    logged, origin = _log_rows(path, model)
    rows = [r for r in logged if not isinstance(r.get("status"), int) or r["status"] < 400]
    picked = f" where model = {model}" if model else ""
    refused = f" ({len(logged) - len(rows):,} refused, not counted)" if len(rows) < len(logged) else ""
    if len(rows) < (2 if volume else 1):
        raise TunekitError(f"{origin}: {len(rows)} answered request row(s){picked}: too few to measure a volume", hint="give --requests-per-day")
    times = sorted(_timestamp(r["created"], r["_where"]) for r in rows)
    span = times[-1] - times[0]
    if span < MIN_LOG_SPAN_S and volume:
        raise TunekitError(
            f"{origin}: the {len(rows)} requests{picked} span {span / 60:.0f} minutes, too short to measure a daily volume",
            hint="log at least an hour of traffic, or give --requests-per-day",
        )
    for key in ("prompt_tokens", "completion_tokens"):
        bad = next((r for r in rows if not isinstance(r[key], (int, float)) or r[key] < 0), None)
        if bad is not None:
            raise TunekitError(f"{bad['_where']}: {key}: {bad[key]!r} is not a token count", hint="token counts are whole numbers >= 0")
    first, last = (dt.datetime.fromtimestamp(t, dt.timezone.utc).isoformat(timespec="seconds") for t in (times[0], times[-1]))
    described = f"{origin}: {len(rows):,} rows{picked}{refused}, {first} to {last}"
    layer: Layer = {}
    if span >= MIN_LOG_SPAN_S:  # the rate between the first and the last request: n - 1 intervals over the span
        extrapolated = f", extrapolated from {span / 3600:.1f} hours" if span < 86400 else ""
        layer["traffic.requests_per_day"] = ((len(rows) - 1) * 86400 / span, f"{described}: (rows - 1) x 86400 / span{extrapolated}")
    return {
        **layer,
        "traffic.input_tokens": (statistics.fmean(r["prompt_tokens"] for r in rows), f"{described}: mean prompt_tokens"),
        "traffic.output_tokens": (statistics.fmean(r["completion_tokens"] for r in rows), f"{described}: mean completion_tokens"),
    }
