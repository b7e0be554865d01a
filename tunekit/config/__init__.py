"""The recipe models by stage (pydantic), YAML loading, `key=value` overrides, and the metric table.

`from tunekit.config import Recipe, load_recipe` is how the rest of tunekit reads a recipe; the
section models live in one module per stage (data, train, eval, export, serve).
"""

from tunekit.config.common import RecipePath, RecipeRelative, Section, anchor_paths, path_marker
from tunekit.config.data import (
    ALL_PII_TYPES, HUB_PREFIX, AnalysisConfig, CleanConfig, ConsistencyRule, DataConfig, DataGates, DataSource, HubDataset, PiiType,
)
from tunekit.config.eval import (
    BUILTIN_SUITES, ContaminationConfig, EndpointConfig, EvalConfig, EvalRule, ForgettingConfig, JudgeConfig, suite_categories,
    suite_path,
)
from tunekit.config.export import GGUF_TYPES, OLLAMA_PARAMETERS, ExportConfig, ExportFormat, GgufExportConfig, OllamaExportConfig
from tunekit.config.files import is_recipe_path, recipe_for_files, recipe_lines_for_files
from tunekit.config.metrics import METRICS, MetricInfo, MetricName
from tunekit.config.recipe import DEFAULT_BASE_MODEL, Recipe, apply_overrides, load_recipe, parse_recipe
from tunekit.config.serve import ServeConfig
from tunekit.config.train import DpoConfig, DpoLossType, FastConfig, LoraConfig, MixConfig, TrainConfig

__all__ = [
    "ALL_PII_TYPES", "BUILTIN_SUITES", "DEFAULT_BASE_MODEL", "GGUF_TYPES", "HUB_PREFIX", "METRICS", "OLLAMA_PARAMETERS",
    "AnalysisConfig", "CleanConfig", "ConsistencyRule", "ContaminationConfig", "DataConfig", "DataGates", "DataSource",
    "DpoConfig", "DpoLossType", "EndpointConfig", "EvalConfig", "EvalRule", "ExportConfig", "ExportFormat", "FastConfig",
    "ForgettingConfig", "GgufExportConfig", "HubDataset", "JudgeConfig", "LoraConfig", "MetricInfo", "MetricName",
    "MixConfig", "OllamaExportConfig", "PiiType", "Recipe", "RecipePath", "RecipeRelative", "Section", "ServeConfig",
    "TrainConfig", "anchor_paths", "apply_overrides", "load_recipe", "parse_recipe", "path_marker", "suite_categories",
    "suite_path", "is_recipe_path", "recipe_for_files", "recipe_lines_for_files",
]
