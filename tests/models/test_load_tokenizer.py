"""One tokenizer loader: a declared chat-template file resolves beside the YAML for every model user."""

from __future__ import annotations

import os

import pytest

from datamix.chat_templates import load_chat_template
from datamix.models import TransformersModel, load_backend, load_tokenizer


def test_a_relative_template_file_resolves_beside_the_pipeline(tmp_path, tiny_chatml, monkeypatch):
    (tmp_path / "mine.jinja").write_text(load_chat_template("llama-3-instruct"))
    monkeypatch.chdir("/")  # not the pipeline's folder: the path must not depend on it
    spec = TransformersModel(backend="transformers", path=tiny_chatml, chat_template="mine.jinja")
    tok = load_backend("m", spec, base_dir=str(tmp_path)).tokenizer()
    assert tok.chat_template == load_chat_template("llama-3-instruct")
    assert tok.padding_side == "left"


def test_a_missing_model_folder_says_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="datamix models tiny"):
        load_tokenizer(os.path.join(str(tmp_path), "nowhere"), None, "m")
