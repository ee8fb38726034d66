"""Shared fixtures of the generation step tests: every backend a step loads, counted."""

from __future__ import annotations

import pytest

import datamix.models as models_mod


class Counting:
    """Wraps a backend: counts generate calls and completions requested."""

    def __init__(self, inner):
        self.inner, self.name = inner, inner.name
        self.calls = self.completions = 0
        self.prompts = []

    def generate(self, prompts, params):
        self.calls += 1
        self.completions += len(prompts) * params.n
        self.prompts += prompts
        return self.inner.generate(prompts, params)

    def tokenizer(self):
        return self.inner.tokenizer()


@pytest.fixture
def counted(monkeypatch):
    """Every backend loaded by a step gets wrapped; returns the list of wrappers."""
    wrappers = []
    real = models_mod.load_backend

    def load(name, spec, base_dir="."):
        wrappers.append(Counting(real(name, spec, base_dir)))
        return wrappers[-1]

    monkeypatch.setattr(models_mod, "load_backend", load)
    yield wrappers
