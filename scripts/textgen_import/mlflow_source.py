"""A model logged with MLflow's transformers flavor, named by a models:/ or runs:/ URI.

The tracking server comes from MLFLOW_TRACKING_URI (and MLflow's own credential variables, such as
MLFLOW_TRACKING_TOKEN, which are never read here). Needs `mlflow` (requirements-import.txt). The artifacts are
downloaded and read with transformers directly, not through mlflow.transformers.load_model: no pipeline is
built, and a transformers release MLflow does not know yet still loads.
"""

from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from textgen_import.common import ImportRefused, LoadedModel, Provenance, require_safetensors, tag_name

URI_FORMS = "models:/NAME/VERSION, models:/NAME@ALIAS, models:/NAME/latest or runs:/RUN_ID/PATH"


@dataclass(frozen=True)
class Origin:
    """What the registry says about the model: the labels of provenance."""

    uri: str
    run_id: str
    name: str = ""
    version: str = ""


def redact_uri(uri: str) -> str:
    """`uri` without credentials: no user:password@, and no query or fragment (where tokens and signatures go).

    `https://user:secret@host/mlflow?token=x` -> `https://host/mlflow`; `sqlite:////tmp/mlflow.db` stays as it
    is (urllib's urlunsplit would drop its empty authority).
    """
    without_query = re.split(r"[?#]", uri, maxsplit=1)[0]
    return re.sub(r"^([A-Za-z][A-Za-z0-9+.-]*://)[^/]*@", r"\1", without_query)


def default_name(uri: str) -> str:
    """The store name for a model URI: the registered name, or `mlflow-run-<run id>` for a runs:/ URI."""
    if uri.startswith("models:/"):
        return tag_name(re.split(r"[/@]", uri.removeprefix("models:/"), maxsplit=1)[0])
    if uri.startswith("runs:/"):
        return tag_name("mlflow-run-" + uri.removeprefix("runs:/").split("/", 1)[0][:12])
    raise ValueError(f"{uri!r} is not an MLflow model URI ({URI_FORMS})")


def resolve(uri: str) -> Origin:
    """The run (and registered name and version) behind `uri`, asking the tracking server."""
    from mlflow import MlflowClient

    client = MlflowClient()
    if uri.startswith("runs:/"):
        run_id, _, path = uri.removeprefix("runs:/").partition("/")
        if not run_id or not path:
            raise ImportRefused(f"{uri} names no run or no artifact path ({URI_FORMS})")
        return Origin(uri, run_id)
    if not uri.startswith("models:/"):
        raise ImportRefused(f"{uri} is not an MLflow model URI ({URI_FORMS})")
    rest = uri.removeprefix("models:/")
    if "@" in rest:
        name, alias = rest.split("@", 1)
        found = client.get_model_version_by_alias(name, alias)
    else:
        name, _, version = rest.partition("/")
        if version == "latest":
            versions = client.search_model_versions(f"name = '{name}'")
            if not versions:
                raise ImportRefused(f"registered model {name!r} has no versions")
            found = max(versions, key=lambda v: int(v.version))
        elif version.isdigit():
            found = client.get_model_version(name, version)
        else:
            raise ImportRefused(f"{uri}: give a version number, `latest` or @ALIAS ({URI_FORMS})")
    return Origin(uri, found.run_id or "", found.name, str(found.version))


def read_flavor(folder: Path, uri: str) -> tuple[Path, Path, dict]:
    """The model and tokenizer folders inside downloaded artifacts, and the transformers flavor's configuration."""
    import yaml

    mlmodel = folder / "MLmodel"
    if not mlmodel.is_file():
        raise ImportRefused(f"{uri} is not an MLflow model (no MLmodel file in its artifacts)")
    flavors = yaml.safe_load(mlmodel.read_text()).get("flavors", {})
    flavor = flavors.get("transformers")
    if flavor is None:
        raise ImportRefused(f"{uri} was not logged with the transformers flavor (its flavors: {', '.join(flavors)})")
    if not flavor.get("model_binary"):  # logged with save_pretrained=False: only a hub reference
        hub = f"{flavor.get('source_model_name')}@{flavor.get('source_model_revision')}"
        raise ImportRefused(f"{uri} holds no weights, only a reference to hub model {hub}: import that with --hub-id")
    model = folder / flavor["model_binary"]
    require_safetensors(model, uri)
    tokenizer = folder / "components" / "tokenizer"
    return model, tokenizer if tokenizer.is_dir() else model, flavor


def load(uri: str) -> LoadedModel:
    import mlflow
    from mlflow.exceptions import MlflowException
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tracking_uri = redact_uri(mlflow.get_tracking_uri())
    try:
        origin = resolve(uri)
        with tempfile.TemporaryDirectory(prefix="mlflow-import-") as tmp:
            folder = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=tmp))
            model_dir, tokenizer_dir, flavor = read_flavor(folder, uri)
            model = AutoModelForCausalLM.from_pretrained(model_dir, use_safetensors=True)
            tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    except MlflowException as exc:
        # MLflow's messages may quote the tracking URI, credentials included: say it without them.
        message = str(exc).replace(mlflow.get_tracking_uri(), tracking_uri)
        raise ImportRefused(f"MLflow at {tracking_uri} cannot give {uri}: {message}") from exc
    labels = {
        "weights": "pretrained",
        "source_kind": "mlflow",
        "mlflow_tracking_uri": tracking_uri,
        "mlflow_model_uri": uri,
        "mlflow_run_id": origin.run_id,
    }
    if origin.name:
        labels |= {"mlflow_model_name": origin.name, "mlflow_model_version": origin.version}
    return LoadedModel(
        model,
        tokenizer,
        Provenance(
            f"mlflow:{uri} (tracking {tracking_uri}, run {origin.run_id})",
            labels,
            {"mlflow_task": flavor.get("task"), "mlflow_transformers_version": flavor.get("transformers_version")},
        ),
    )
