"""scripts/import_model.py --source DIR into a temporary store: what a local model folder brings must stay."""

from __future__ import annotations

import shutil
from pathlib import Path

from transformers import AutoTokenizer

from tests.integration.conftest import import_model

CHAT_TEMPLATE = "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}\n{% endfor %}<|assistant|>"


def test_the_chat_template_of_a_local_model_reaches_the_store(tiny_model_dir: Path, tmp_path: Path) -> None:
    source = tmp_path / "chat-model"
    shutil.copytree(tiny_model_dir, source)
    (source / "chat_template.jinja").write_text(CHAT_TEMPLATE)  # as newer hub models ship it
    home = tmp_path / "bentoml-home"

    done = import_model(home, "--source", str(source), "--name", "tiny-chat")

    assert "stored tiny-chat:" in done.stdout
    [stored] = [p for p in (home / "models/tiny-chat").iterdir() if p.is_dir()]
    assert (stored / "chat_template.jinja").read_text() == CHAT_TEMPLATE
    tokenizer = AutoTokenizer.from_pretrained(stored)
    messages = [{"role": "user", "content": "Hi"}]
    assert tokenizer.apply_chat_template(messages, tokenize=False) == "<|user|>Hi\n<|assistant|>"
