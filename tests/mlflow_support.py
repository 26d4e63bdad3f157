"""A real MLflow tracking store for tests: log a transformers model, register it, give it an alias."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from transformers import PreTrainedModel, PreTrainedTokenizerBase


@dataclass(frozen=True)
class Registered:
    run_id: str
    name: str
    version: str


def log_and_register(
    tracking_uri: str,
    artifacts: Path,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    name: str,
    alias: str,
) -> Registered:
    """Log `model` with MLflow's transformers flavor in a run, register it as `name` and point `alias` at it.

    The process's tracking URI is set only for the call. Artifacts go to `artifacts` (with an SQLite store the
    default would be ./mlruns).
    """
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    try:
        experiment = mlflow.create_experiment("textgen-tests", artifact_location=artifacts.as_uri())
        with mlflow.start_run(experiment_id=experiment) as run:
            logged = mlflow.transformers.log_model(
                {"model": model, "tokenizer": tokenizer},
                name="model",
                task="text-generation",
                # Given, so MLflow does not infer them: its default list wants torchvision, which we do not have.
                pip_requirements=["torch==2.13.0", "transformers==5.23.0"],
                registered_model_name=name,
            )
        version = str(logged.registered_model_version)
        mlflow.MlflowClient().set_registered_model_alias(name, alias, version)
        return Registered(run.info.run_id, name, version)
    finally:
        mlflow.set_tracking_uri(None)
