"""tunekit: fine-tune, evaluate, export and serve language models you own."""

__version__ = "0.1.0"
