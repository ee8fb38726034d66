"""Tiny models built once per test session (random weights, tokenizer trained on the spot)."""

import pytest


@pytest.fixture(scope="session")
def tiny_chatml(tmp_path_factory):
    from datamix.models.tiny import build_tiny_model

    return build_tiny_model(str(tmp_path_factory.mktemp("tiny_chatml")), arch="llama", chat_template="chatml")


@pytest.fixture(scope="session")
def tiny_llama3(tmp_path_factory):
    from datamix.models.tiny import build_tiny_model

    return build_tiny_model(str(tmp_path_factory.mktemp("tiny_llama3")), arch="llama", chat_template="llama-3-instruct")
