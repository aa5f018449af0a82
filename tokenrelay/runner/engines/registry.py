"""Build the engine a runner's configuration names.

The engine modules are imported only when their engine is chosen: the ``transformers`` engine
needs torch, an optional dependency.  Nothing in the engines package imports this module, so its
imports of the engines make no cycle.
"""

from __future__ import annotations

from tokenrelay.runner.engines.base import Engine
from tokenrelay.runtime.config import RunnerConfig

ENGINES = ("synthetic", "openai", "transformers")


def make_engine(config: RunnerConfig) -> Engine:
    """Build the engine named by ``config.engine``."""
    if config.engine == "synthetic":
        from tokenrelay.runner.engines.synthetic import SyntheticEngine

        return SyntheticEngine(config.synthetic, model=config.model)
    if config.engine == "transformers":
        try:
            from tokenrelay.runner.engines.transformers import TransformersEngine
        except ImportError as exc:
            raise ValueError("the transformers engine needs: pip install 'tokenrelay[transformers]'") from exc
        if not config.model_path:
            raise ValueError("the transformers engine needs --model-path")
        return TransformersEngine(config.model_path, worker_threads=config.worker_threads)
    if config.engine == "openai":
        from tokenrelay.runner.engines.openai import OpenAIEngine

        if config.upstream is None:
            raise ValueError("the openai engine needs --upstream-url and --upstream-model")
        up = config.upstream
        return OpenAIEngine(
            base_url=up.url,
            model=up.model,
            api_key=up.api_key,
            connect_timeout_s=up.connect_timeout_s,
            read_timeout_s=up.read_timeout_s,
            include_usage=up.include_usage,
            continue_final_message=up.continue_final_message,
            max_connections=config.max_concurrency,
        )
    raise ValueError(f"unknown engine {config.engine!r}; choose one of {', '.join(ENGINES)}")
