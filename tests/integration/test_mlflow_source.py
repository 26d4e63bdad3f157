"""scripts/import_model.py --mlflow against a real MLflow: an SQLite tracking store in a temporary directory.

A tiny model is logged with MLflow's transformers flavor, registered and given an alias; the script imports it
by alias, `bentoml serve` serves it, /model-info shows where it came from and greedy generation is the model's."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
import torch
import yaml

from tests.integration.conftest import API_KEY, free_port, import_model, serving, stop, stored_version
from tests.mlflow_support import log_and_register
from textgen_import import mlflow_source
from textgen_import.common import ImportRefused

PROMPT = "The meaning of life is"


def test_a_registered_mlflow_model_is_imported_served_and_shows_its_provenance(tiny_model, tmp_path, monkeypatch):
    model, tokenizer = tiny_model
    tracking_uri = f"sqlite:///{tmp_path}/mlflow.db"
    registered = log_and_register(tracking_uri, tmp_path / "artifacts", model, tokenizer, "Tiny-MLflow", "champion")
    home = tmp_path / "home"

    done = import_model(home, "--mlflow", "models:/Tiny-MLflow@champion", env={"MLFLOW_TRACKING_URI": tracking_uri})

    assert "stored tiny-mlflow:" in done.stdout
    labels = {
        "weights": "pretrained",
        "source_kind": "mlflow",
        "mlflow_tracking_uri": tracking_uri,
        "mlflow_model_uri": "models:/Tiny-MLflow@champion",
        "mlflow_run_id": registered.run_id,
        "mlflow_model_name": "Tiny-MLflow",
        "mlflow_model_version": registered.version,
    }
    with serving(home, "tiny-mlflow:latest", tmp_path) as url:
        headers = {"x-api-key": API_KEY}
        info = requests.get(url + "/model-info", headers=headers, timeout=30).json()
        body = {"prompt": PROMPT, "max_new_tokens": 16, "temperature": 0}
        response = requests.post(url + "/generate", json=body, headers=headers, timeout=120)

    assert info["labels"] == labels
    assert info["source"] == f"mlflow:models:/Tiny-MLflow@champion (tracking {tracking_uri}, run {registered.run_id})"
    assert info["architecture"] == "GPT2LMHeadModel"
    ids = tokenizer(PROMPT, return_tensors="pt").input_ids
    with torch.inference_mode():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=16, do_sample=False)
    assert response.status_code == 200, response.text
    assert response.json()["completion"] == tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
    assert (stored_version(home, "tiny-mlflow") / "model.safetensors").is_file()

    # The other URI forms, in this process against the same store.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri)
    for uri in ("models:/Tiny-MLflow/1", "models:/Tiny-MLflow/latest"):
        assert mlflow_source.resolve(uri) == mlflow_source.Origin(uri, registered.run_id, "Tiny-MLflow", "1")
    by_run = mlflow_source.load(f"runs:/{registered.run_id}/model")
    assert by_run.provenance.labels["mlflow_run_id"] == registered.run_id
    assert "mlflow_model_name" not in by_run.provenance.labels
    for name, weight in model.state_dict().items():
        assert torch.equal(by_run.model.state_dict()[name], weight), name
    with pytest.raises(ImportRefused, match="Tiny-MLflow@nobody"):
        mlflow_source.load("models:/Tiny-MLflow@nobody")


@pytest.mark.slow
def test_credentials_in_the_tracking_uri_reach_no_label_and_no_output(tiny_model, tmp_path):
    """Against a real `mlflow server` (its SQLite store and artifacts in tmp_path), reached with user:password@."""
    model, tokenizer = tiny_model
    port = free_port()
    log = (tmp_path / "mlflow.log").open("w")
    store = ["--backend-store-uri", f"sqlite:///{tmp_path}/mlflow.db", "--artifacts-destination", str(tmp_path / "a")]
    store += ["--workers", "1"]  # two cores
    server = subprocess.Popen(
        [str(Path(sys.executable).with_name("mlflow")), "server", "--host", "127.0.0.1", "--port", str(port), *store],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_for(f"http://127.0.0.1:{port}/health", server)
        secret_uri = f"http://alice:{SECRET}@127.0.0.1:{port}"
        registered = log_and_register(secret_uri, tmp_path / "artifacts", model, tokenizer, "tiny-secret", "prod")
        home = tmp_path / "home"
        env = {"MLFLOW_TRACKING_URI": secret_uri}
        done = import_model(home, "--mlflow", "models:/tiny-secret@prod", env=env)
        refused = import_model(home, "--mlflow", "models:/tiny-secret@nobody", "--name", "x", check=False, env=env)
    finally:
        stop(server)

    assert SECRET not in done.stdout + done.stderr
    model_yaml = (stored_version(home, "tiny-secret") / "model.yaml").read_text()
    assert SECRET not in model_yaml and "alice" not in model_yaml
    labels = yaml.safe_load(model_yaml)["labels"]
    assert labels["mlflow_tracking_uri"] == f"http://127.0.0.1:{port}"
    assert labels["mlflow_run_id"] == registered.run_id
    assert refused.returncode == 2 and "tiny-secret@nobody" in refused.stderr
    assert SECRET not in refused.stdout + refused.stderr


SECRET = "s3cret-pa55"


def wait_for(url: str, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, f"mlflow server exited with {process.returncode}"
        try:
            if requests.get(url, timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} not up after {timeout} s")
