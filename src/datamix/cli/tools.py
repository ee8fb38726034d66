"""`datamix models tiny`, `template`, `eval` and `train`: models, outside a pipeline."""

from __future__ import annotations

import json
import sys

import click

from datamix.cli.common import _fail, _render, format_option, main


@main.group()
def models():
    """Model helpers (tiny offline models for tests and the quickstart)."""


@models.command("tiny")
@click.argument("path", type=click.Path(file_okay=False))
@click.option("--arch", type=click.Choice(["llama", "qwen2"]), default="llama", show_default=True)
@click.option("--chat-template", default="chatml", show_default=True, help="a bundled name or a .jinja file")
@click.option("--reward", is_flag=True, help="a reward model (sequence classification, 1 label)")
@click.option("--seed", default=0, show_default=True)
@click.option("--hidden", default=64, show_default=True, type=click.IntRange(min=8), help="hidden size")
@click.option("--layers", default=2, show_default=True, type=click.IntRange(min=1))
@click.option("--heads", default=4, show_default=True, type=click.IntRange(min=1), help="attention heads")
@click.option("--vocab", default=1000, show_default=True, type=click.IntRange(min=300), help="BPE vocabulary size")
@click.option("--tokenizer-data", "tokenizer_data", multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="JSONL / JSON / text files to train the tokenizer on (default: a small built-in text)")
@click.argument("more_data", nargs=-1, type=click.Path(exists=True, dir_okay=False))
def models_tiny(path, arch, chat_template, reward, seed, hidden, layers, heads, vocab, tokenizer_data, more_data):
    """Write a tiny random model with a tokenizer trained on the spot to PATH.

    --tokenizer-data FILE [FILE ...] trains the BPE tokenizer on those files."""
    from datamix.models.tiny import build_tiny_model

    if more_data and not tokenizer_data:  # files after PATH belong to --tokenizer-data
        _fail(f"unexpected arguments {' '.join(more_data)}: data files go after --tokenizer-data")
    try:
        out = build_tiny_model(path, arch=arch, chat_template=chat_template, reward=reward, seed=seed,
                               hidden_size=hidden, num_layers=layers, num_heads=heads, vocab_size=vocab,
                               tokenizer_data=[*tokenizer_data, *more_data] or None)
    except (ValueError, FileNotFoundError) as e:
        _fail(str(e))
    click.echo(out)


@main.command()
@click.argument("model_path", type=click.Path(exists=True, file_okay=False))
@format_option("text", "json")
@click.option("--system-prompt", default=None, help="include this system prompt where the template allows one")
def template(model_path, fmt, system_prompt):
    """Print the pre-query template derived from MODEL_PATH's chat template."""
    from transformers import AutoTokenizer

    from datamix.templates import derive_pre_query_template

    try:
        tok = AutoTokenizer.from_pretrained(model_path)
        pq = derive_pre_query_template(tok, system_prompt=system_prompt)
    except (OSError, ValueError) as e:
        _fail(f"{model_path}: {e}")
    if fmt == "json":
        click.echo(json.dumps({"pre_query_template": pq.text}))
    else:
        click.echo(pq.text, nl=False)
        if sys.stdout.isatty():
            click.echo()


@main.command("eval")
@click.argument("model_dir", type=click.Path(file_okay=False))
@click.option("--set", "set_args", multiple=True, metavar="NAME=FILE[:metric[,metric]]",
              help="an evaluation set (a file load reads) and its metrics: nll (default), exact_match, choice")
@click.option("--role", "role_args", multiple=True, metavar="NAME=general|domain", help="which side a set is on")
@click.option("--option", "option_args", multiple=True, metavar="NAME.KEY=VALUE",
              help="a set option (prompt_field, response_field, shape, limit) or metric option (preset, max_tokens, "
                   "options_field, answer_field, regex)")
@format_option("table", "json", "csv")
@click.option("--batch-size", default=8, show_default=True, type=click.IntRange(min=1))
@click.option("--chat-template", default=None, help="a bundled template name or .jinja file (default: the model's)")
@click.option("--device", default="auto", show_default=True, help="auto: cuda when available, else cpu")
@click.option("--dtype", default="auto", show_default=True, help="auto: the checkpoint's own; float32, bfloat16, float16")
def eval_(model_dir, set_args, role_args, option_args, fmt, batch_size, chat_template, device, dtype):
    """Evaluate MODEL_DIR on evaluation sets and print the metrics (the evaluate step outside a pipeline)."""
    from datamix.eval.adhoc import AdhocError, build_sets, evaluate_folder
    from datamix.eval.report import metrics_rows

    try:
        sets = build_sets(list(set_args), list(role_args), list(option_args))
        rows = evaluate_folder(model_dir, sets, batch_size, chat_template, device, dtype=dtype)
    except AdhocError as e:
        _fail(str(e))
    columns, table = metrics_rows(rows, for_table=fmt == "table")
    out = _render(columns, table, fmt)
    if fmt == "table":
        from rich.console import Console

        Console(width=max(120, Console().width)).print(out)
    else:
        click.echo(out)


@main.command(context_settings={"ignore_unknown_options": True})
@click.argument("config", type=click.Path(exists=True, dir_okay=False))
@click.argument("overrides", nargs=-1)
@click.option("--nproc-per-node", default=1, show_default=True, help="processes on this node (torchrun)")
def train(config, overrides, nproc_per_node):
    """Train with the FSDP2 recipe on exported shards: CONFIG.yaml [KEY=VALUE ...].

    Other --flags go to torchrun, for several nodes: --nnodes 2 --node-rank 0 --rdzv-endpoint host:29500."""
    from datamix.train.launch import train_command

    flags = [o for o in overrides if o.startswith("-")]
    settings = [o for o in overrides if not o.startswith("-")]
    sys.exit(train_command(config, settings, nproc_per_node=nproc_per_node, extra_torchrun_args=flags))
