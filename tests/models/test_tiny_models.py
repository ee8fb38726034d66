"""build_tiny_model writes folders that from_pretrained loads offline, deterministically."""

import hashlib
import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from datamix.models.tiny import build_tiny_model, special_tokens_of_template  # noqa: E402
from datamix.chat_templates import load_chat_template  # noqa: E402


def _digest(folder: str) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(Path(folder).iterdir())}


@pytest.mark.parametrize(
    "arch,template,bos,eos,expected_prompt",
    [
        ("llama", "chatml", "<s>", "<|im_end|>", "<s><|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"),
        (
            "qwen2",
            "qwen2.5-instruct",
            None,
            "<|im_end|>",
            "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
            "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
        ),
        (
            "llama",
            "llama-3-instruct",
            "<|begin_of_text|>",
            "<|eot_id|>",
            "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n",
        ),
        ("qwen2", "gemma-it", "<bos>", "<end_of_turn>", "<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n"),
    ],
)
def test_builds_and_reloads(tmp_path, arch, template, bos, eos, expected_prompt):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = build_tiny_model(str(tmp_path / "m"), arch=arch, chat_template=template)
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    assert model.config.model_type == arch
    assert tok.bos_token == bos and tok.eos_token == eos
    assert tok.pad_token is not None and tok.pad_token_id != tok.eos_token_id
    rendered = tok.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
    assert rendered == expected_prompt
    # every special literal of the template is one token, never split into bytes
    for literal in special_tokens_of_template(load_chat_template(template)):
        assert len(tok(literal, add_special_tokens=False)["input_ids"]) == 1, literal
    assert tok.convert_tokens_to_ids(eos) in model.generation_config.eos_token_id
    # byte-level: any text round-trips
    text = "  Grüße\tworld!\n\n中文 🙂 x=1;"
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text
    # the model runs and gives logits over the whole vocabulary
    ids = tok(rendered, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == (1, ids.shape[1], len(tok))


def test_same_seed_same_files_other_seed_other_weights(tmp_path):
    a = _digest(build_tiny_model(str(tmp_path / "a"), seed=3))
    b = _digest(build_tiny_model(str(tmp_path / "b"), seed=3))
    c = _digest(build_tiny_model(str(tmp_path / "c"), seed=4))
    assert a == b
    assert c["model.safetensors"] != a["model.safetensors"]
    assert c["tokenizer.json"] == a["tokenizer.json"]


def test_reward_model_scores_padded_batches(tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = build_tiny_model(str(tmp_path / "rm"), arch="qwen2", reward=True)
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path)
    assert model.config.num_labels == 1
    texts = ["A short answer.", "A much longer answer with several more words in it."]
    batch = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.no_grad():
        batched = model(**batch).logits
        alone = model(**tok(texts[:1], return_tensors="pt", add_special_tokens=False)).logits
    assert batched.shape == (2, 1)
    # left padding must not change the score of the padded sequence
    assert torch.allclose(batched[0], alone[0], atol=1e-5)


def test_template_file_and_bad_arch(tmp_path):
    f = tmp_path / "custom.jinja"
    f.write_text("{% for m in messages %}<|turn|>{{ m['content'] }}<|done|>{% endfor %}{% if add_generation_prompt %}<|turn|>{% endif %}")
    path = build_tiny_model(str(tmp_path / "m"), chat_template=str(f))
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    assert tok.eos_token == "<|done|>"
    assert len(tok("<|turn|>", add_special_tokens=False)["input_ids"]) == 1
    with pytest.raises(ValueError, match="llama, qwen2"):
        build_tiny_model(str(tmp_path / "x"), arch="gpt2")


def test_size_and_tokenizer_trained_on_given_files(tmp_path):
    from transformers import AutoConfig, AutoTokenizer

    data = tmp_path / "chats.jsonl"
    rows = [{"messages": [{"role": "user", "content": f"Zorblax quuxifies the flumphrate number {i}."},
                          {"role": "assistant", "content": "Zorblax quuxifies flumphrates daily."}]} for i in range(50)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    text = tmp_path / "more.txt"
    text.write_text("Flumphrate zorblax quux.\n" * 20)
    path = build_tiny_model(str(tmp_path / "m"), arch="qwen2", chat_template="qwen2.5-instruct", hidden_size=48,
                            num_layers=3, num_heads=6, vocab_size=400, tokenizer_data=[str(data), str(text)])
    config = AutoConfig.from_pretrained(path)
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads, config.num_key_value_heads) == (48, 3, 6, 3)
    tok = AutoTokenizer.from_pretrained(path)
    assert len(tok) == config.vocab_size <= 400
    # words of the data are whole tokens (the built-in corpus has none of them)
    assert len(tok("Zorblax quuxifies", add_special_tokens=False)["input_ids"]) <= 3
    default = AutoTokenizer.from_pretrained(build_tiny_model(str(tmp_path / "d"), vocab_size=400))
    assert len(default("Zorblax quuxifies", add_special_tokens=False)["input_ids"]) > 4
    with pytest.raises(ValueError, match="multiple of 2 x heads"):
        build_tiny_model(str(tmp_path / "x"), hidden_size=50, num_heads=4)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"a": "ok"}\n{not json\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2"):
        build_tiny_model(str(tmp_path / "y"), tokenizer_data=[str(bad)])


def test_yaml_tiny_keys_and_a_changed_size_rebuilds(tmp_path):
    from transformers import AutoConfig

    from datamix.models import TransformersModel, resolve_model_path

    (tmp_path / "d.txt").write_text("hello tokenizer data\n" * 10)
    spec = TransformersModel.model_validate({"backend": "transformers", "path": "m", "tiny": {
        "arch": "llama", "hidden": 32, "layers": 1, "heads": 2, "vocab": 320, "tokenizer_data": ["d.txt"]}})
    path = resolve_model_path(spec, str(tmp_path))
    assert AutoConfig.from_pretrained(path).num_attention_heads == 2
    stamp = (Path(path) / "model.safetensors").stat().st_mtime_ns
    resolve_model_path(spec, str(tmp_path))  # unchanged: not built again
    assert (Path(path) / "model.safetensors").stat().st_mtime_ns == stamp
    bigger = spec.model_copy(update={"tiny": spec.tiny.model_copy(update={"hidden": 64, "heads": 4})})
    resolve_model_path(bigger, str(tmp_path))
    assert AutoConfig.from_pretrained(path).hidden_size == 64
