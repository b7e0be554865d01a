"""Serve a run, a merged model or a base model over an OpenAI-compatible HTTP API."""

from tunekit.serve.app import create_app
from tunekit.serve.engine import Completion, Engine

__all__ = ["Completion", "Engine", "create_app"]
