"""The recipe: one YAML file that drives every stage, and how it is loaded.

Loading validates the whole recipe and reports every problem at once with the user's key paths;
then it anchors every path field (marked in the section models) at the recipe's folder, and only
then checks the eval gates, whose names may come from suite files the recipe brings along.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import AfterValidator, BaseModel, Field, PrivateAttr, ValidationError

from tunekit.config.common import RecipePath, RecipeRelative, Section, anchor_paths
from tunekit.config.data import DataConfig
from tunekit.config.eval import EvalConfig
from tunekit.config.export import ExportConfig
from tunekit.config.gates import gate_problems
from tunekit.config.serve import ServeConfig
from tunekit.config.train import TrainConfig
from tunekit.errors import RecipeError
from tunekit.config.textfiles import file_problem, read_text

DEFAULT_BASE_MODEL = "smollm2-135m-instruct"

# The shipped chat templates are files of the models layer, named here by file and never imported,
# so a recipe's `chat_template` name is checked before anything is loaded.
CHAT_TEMPLATES_DIR = Path(__file__).resolve().parents[1] / "models" / "chat_templates"


def shipped_chat_templates() -> list[str]:
    return sorted(p.stem for p in CHAT_TEMPLATES_DIR.glob("*.jinja"))


def _is_template_file(value: str) -> bool:
    """A `chat_template` value is a file when it is not a shipped name."""
    return value not in shipped_chat_templates()


def _known_template(value: str) -> str:
    if _is_template_file(value) and "/" not in value and "\\" not in value and not Path(value).suffix:
        raise ValueError(f"unknown chat template; use one of {', '.join(shipped_chat_templates())} or the path of a Jinja file")
    return value


ChatTemplateRef = Annotated[str, AfterValidator(_known_template), RecipeRelative(is_path=_is_template_file)]


class Recipe(Section):
    name: str | None = Field(None, description="Run name; the run directory is `<output_dir>/<name>`. Default: recipe file name.")
    base_model: str = Field(
        DEFAULT_BASE_MODEL,
        description="Base model: `smollm2-135m-instruct` (embedded, offline), a Hugging Face hub id, or a local model directory.",
    )
    chat_template: ChatTemplateRef | None = Field(
        None,
        description="Chat template every stage renders chats with (data lengths, loss mask, eval, export, serve): one of "
        + ", ".join(f"`{name}`" for name in shipped_chat_templates())
        + " (`alpaca`: plain `### Instruction:` / `### Response:` text), or the path of a Jinja file. Required for a "
        "base model without a template; on a model that has one, it replaces it (with a warning). Marker tokens the vocabulary lacks (e.g. `<|im_start|>` on a Llama tokenizer) are added "
        "and their embedding rows trained; the template's end-of-turn token becomes the eos generation stops on.",
    )
    trust_remote_code: bool = Field(False, description="Allow model code from the hub to run. Off unless you trust the source.")
    allow_pickle: bool = Field(False, description="Allow loading pickled (.bin/.pt) weights. Off: safetensors only.")
    output_dir: RecipePath = Field(Path("runs"), description="Where run directories are created.")
    data: DataConfig = Field(description="Training data and how it is prepared.")
    train: TrainConfig = Field(default_factory=TrainConfig, description="Training method and hyperparameters.")
    eval: EvalConfig = Field(default_factory=EvalConfig, description="Evaluation on the held-out test set.")
    export: ExportConfig = Field(default_factory=ExportConfig, description="What `tunekit export` writes.")
    serve: ServeConfig = Field(default_factory=ServeConfig, description="Defaults of `tunekit serve`.")

    # Set by load_recipe, not by users: the file this recipe came from.
    _source: Path | None = PrivateAttr(None)

    @property
    def source(self) -> Path | None:
        return self._source

    @property
    def run_name(self) -> str:
        if self.name:
            return self.name
        return self._source.stem if self._source else "run"

    @property
    def run_dir(self) -> Path:
        return self.output_dir / self.run_name

    def to_yaml(self) -> str:
        """The resolved recipe, every default filled in, the run name fixed, paths absolute."""
        data = self.model_dump(mode="json", by_alias=True)
        data["name"] = self.run_name
        return yaml.safe_dump(data, sort_keys=False)


# ---------------------------------------------------------------- loading and error reporting


def _known_keys(model: type[BaseModel], loc: tuple) -> list[str]:
    """Field names valid at `loc` (the parent of an unknown key), for 'did you mean' hints."""
    current: Any = model
    for part in loc:
        field = getattr(current, "model_fields", {}).get(part) if isinstance(part, str) else None
        if field is None:
            return []
        annotation = field.annotation
        candidates = [a for a in getattr(annotation, "__args__", (annotation,)) if isinstance(a, type) and issubclass(a, BaseModel)]
        if not candidates:
            return []
        current = candidates[0]
    return list(current.model_fields)


def _format_problem(err: dict) -> str:
    loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and "[" in p))
    key = ".".join(str(p) for p in loc) or "(recipe)"
    if err["type"] == "extra_forbidden":
        parent, unknown = loc[:-1], str(loc[-1])
        known = _known_keys(Recipe, parent)
        close = difflib.get_close_matches(unknown, known, n=1, cutoff=0.6)
        msg = f"{key}: unknown key"
        if close:
            msg += f" (did you mean '{'.'.join([*map(str, parent), close[0]])}'?)"
        elif known:
            msg += f" (valid keys here: {', '.join(known)})"
        return msg
    if err["type"] == "missing":
        return f"{key}: required key is missing"
    message = err["msg"].removeprefix("Value error, ")
    value = err.get("input")
    if err["type"] == "list_type" and isinstance(value, str) and "," in value:
        items = [v.strip() for v in value.split(",") if v.strip()]
        return f"{key}: {message} (got {value!r}; a list is written in YAML: [{', '.join(items)}])"
    if err["type"] in {"literal_error", "enum"} or not isinstance(value, (dict, list)):
        return f"{key}: {message} (got {value!r})"
    return f"{key}: {message}"


def _set_dotted(data: dict, dotted: str, value: Any) -> None:
    node = data
    parts = dotted.split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise RecipeError("--set", [f"{dotted}: '{part}' is not a section"])
        node = child
    node[parts[-1]] = value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply `key.path=value` overrides (values parsed as YAML scalars) to raw recipe data."""
    problems = []
    for item in overrides:
        if "=" not in item:
            problems.append(f"override '{item}' must look like key.path=value")
            continue
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw else None
        except yaml.YAMLError as exc:
            problems.append(f"{key.strip()}: '{raw}' is not a YAML value ({exc.problem or exc}); lists are [a, b], strings with : or # go in quotes")
            continue
        _set_dotted(data, key.strip(), value)
    if problems:
        raise RecipeError("--set", problems)
    return data


def _gate_problems(cfg: EvalConfig) -> list[str]:
    """`eval.gates` problems of an eval section whose suite paths are already anchored."""
    problems = gate_problems(cfg)
    return [f"eval.gates: {'; '.join(problems)}"] if problems else []


def _gate_problems_of_raw(data: dict, base: Path) -> list[str]:
    """Gate problems of a recipe that failed validation elsewhere, so they are reported with the rest."""
    try:
        cfg = EvalConfig.model_validate(data.get("eval") or {})
    except ValidationError:
        return []  # the eval section's own problems are reported; gate names cannot be known yet
    anchor_paths(cfg, base)
    return _gate_problems(cfg)


def parse_recipe(data: Any, source: str = "<recipe>", base_dir: Path | None = None) -> Recipe:
    """Validate raw recipe data, reporting every problem at once with its key path; paths anchored at `base_dir`."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise RecipeError(source, [f"the recipe must be a YAML mapping of keys, got {type(data).__name__}"])
    base = (base_dir or Path.cwd()).resolve()
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as exc:
        raise RecipeError(source, [_format_problem(e) for e in exc.errors()] + _gate_problems_of_raw(data, base)) from None
    recipe._source = Path(source) if source != "<recipe>" else None
    anchor_paths(recipe, base)
    problems = _gate_problems(recipe.eval)
    if problems:
        raise RecipeError(source, problems)
    return recipe


def load_recipe(path: str | Path, overrides: list[str] | None = None, check_files: bool = True) -> Recipe:
    """Load and validate a recipe file (or the `recipe.yaml` inside a run directory)."""
    path = Path(path)
    if path.is_dir():
        path = path / "recipe.yaml"
    if not path.is_file():
        raise RecipeError(str(path), ["file not found; pass the path of a recipe YAML file or of a run directory"])
    try:
        data = yaml.safe_load(read_text(path, "recipe YAML file"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise RecipeError(str(path), [f"{where}invalid YAML: {problem}"]) from None
    if overrides:
        data = apply_overrides(data if isinstance(data, dict) else {}, overrides)
    recipe = parse_recipe(data, str(path), base_dir=path.parent)
    if check_files:
        files = {f"data.{name}": getattr(recipe.data, name) for name in ("train", "eval", "test")}
        problems = [f"{key}: {problem}" for key, file in files.items() if file is not None and (problem := file_problem(file, directory_ok=True))]
        template = recipe.chat_template
        if template is not None and _is_template_file(template) and (problem := file_problem(Path(template))):
            problems.append(f"chat_template: {problem}")
        if problems:
            raise RecipeError(str(path), problems)
    return recipe
