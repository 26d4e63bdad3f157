"""MODEL_QUANTIZATION=int8 on a real `bentoml serve`: the model loads quantized, says so, and generates."""

from __future__ import annotations

import requests

from tests.integration.conftest import API_KEY, MODEL_NAME, serving


def test_an_int8_server_reports_its_quantization_and_generates(store_home, tmp_path):
    with serving(store_home, f"{MODEL_NAME}:latest", tmp_path, MODEL_QUANTIZATION="int8") as url:
        headers = {"x-api-key": API_KEY}
        info = requests.get(f"{url}/model-info", headers=headers, timeout=30).json()
        assert info["quantization"] == "int8" and info["dtype"] == "float32"
        assert info["parameters"] > 0  # counted before the layers were swapped
        body = {"prompt": "Hello, my name is", "max_new_tokens": 8, "temperature": 0, "ignore_eos": True}
        reply = requests.post(f"{url}/generate", json=body, headers=headers, timeout=120)
        assert reply.status_code == 200, reply.text
        assert reply.json()["usage"]["completion_tokens"] == 8
    assert "quantized 9 linear layers to int8" in (tmp_path / "serve.log").read_text()
