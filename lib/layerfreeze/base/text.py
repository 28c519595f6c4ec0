"""Text for causal LMs: plain texts or instruction pairs, read from a file, and encoded with token labels.

:func:`encode_lm` is the causal-LM counterpart of :func:`~layerfreeze.base.data.encode`; :func:`read_lm_file` reads
a learner's own JSON-lines, CSV or plain-text file for ``python -m layerfreeze train --task lm``.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from .data import _check_max_length


def encode_lm(texts, tokenizer, max_length: int = 64, prompts=None):
    """Tokenize texts for a causal LM into a ``TensorDataset`` of ``(input_ids, attention_mask, labels)``: labels
    are the token ids (the model shifts them), ``-100`` on padding. Each text ends with the tokenizer's
    end-of-sequence token, so the model learns where a text stops. With ``prompts`` (one per text), each example is
    the prompt followed by its text as the response, and the prompt's tokens are ``-100`` too: the loss counts the
    response only, as supervised fine-tuning does. Rows are cut at ``max_length`` tokens and padded on the right.

    >>> from layerfreeze.base.models import load_model
    >>> _, tokenizer = load_model("tiny:gpt2", task="causal-lm")
    >>> ids, mask, labels = encode_lm(["fine"], tokenizer, prompts=["is it good?"]).tensors
    >>> (labels[0] != -100).sum().item() < mask[0].sum().item()  # the prompt's tokens count no loss
    True
    """
    import torch

    texts, prompts = _lm_columns(texts, prompts)
    _check_max_length(max_length, tokenizer)
    eos = tokenizer.eos_token_id
    rows = []
    for text, prompt in zip(texts, prompts):
        start = tokenizer(prompt, truncation=True, max_length=max_length)["input_ids"] if prompt is not None else []
        body = tokenizer(text, add_special_tokens=prompt is None, truncation=True, max_length=max_length)["input_ids"]
        if eos is not None and (not body or body[-1] != eos):
            body = body + [eos]
        ids = (start + body)[:max_length]
        rows.append((ids, min(len(start), len(ids))))
    width = max(len(ids) for ids, _ in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos or 0)
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    for row, (ids, prompt_length) in enumerate(rows):
        input_ids[row, :len(ids)] = torch.tensor(ids)
        attention_mask[row, :len(ids)] = 1
        labels[row, prompt_length:len(ids)] = torch.tensor(ids[prompt_length:], dtype=torch.long)
    return torch.utils.data.TensorDataset(input_ids, attention_mask, labels)


def _lm_columns(texts, prompts) -> tuple[list[str], list]:
    """``texts`` (and ``prompts``, or one ``None`` per text), checked: non-empty lists of strings of one length."""
    if isinstance(texts, str) or not hasattr(texts, "__len__"):
        raise ValueError(f"texts must be a list of strings (e.g. a split's 'text' column); got {type(texts).__name__}")
    texts = list(texts)
    if not texts:
        raise ValueError("texts is empty: there is nothing to encode")
    bad = next((t for t in texts if not isinstance(t, str)), None)
    if bad is not None:
        raise ValueError(f"texts must be strings, got {bad!r}")
    if prompts is None:
        return texts, [None] * len(texts)
    prompts = list(prompts) if not isinstance(prompts, str) else None
    if prompts is None or len(prompts) != len(texts) or not all(isinstance(p, str) for p in prompts):
        raise ValueError(f"prompts must be a list of strings, one per text ({len(texts)}), or None for plain text")
    return texts, prompts


LM_SUFFIXES = (".jsonl", ".json", ".csv", ".txt")


def read_lm_file(path: str | Path, text_column: str = "text", prompt_column: str | None = None,
                 response_column: str | None = None) -> list[dict]:
    """Rows of a causal-LM training file: ``{"text"}`` for plain text, or ``{"prompt", "response"}`` for supervised
    fine-tuning when ``prompt_column`` and ``response_column`` are given. JSON lines and CSV have named columns; a
    ``.txt`` file is plain text, one text per non-empty line. Errors name the argument and what the file holds."""
    path = Path(path)
    if path.suffix not in LM_SUFFIXES or not path.is_file():
        raise ValueError(f"--data {str(path)!r}: expected an existing {', '.join(LM_SUFFIXES)} file")
    if (prompt_column is None) != (response_column is None):
        raise ValueError("--prompt-column and --response-column go together (supervised fine-tuning); give both, or "
                         "neither for plain text")
    if path.suffix == ".txt":
        if response_column is not None:
            raise ValueError(f"--response-column {response_column!r}: {path.name} is plain text (.txt) and has no "
                             "columns; give a JSONL or CSV file of prompt and response columns")
        return [{"text": line.strip()} for line in path.read_text().splitlines() if line.strip()]
    rows = _table_rows(path)
    wanted = [prompt_column, response_column] if response_column is not None else [text_column]
    flags = ["--prompt-column", "--response-column"] if response_column is not None else ["--text-column"]
    for flag, column in zip(flags, wanted):
        if any(column not in row for row in rows):
            raise ValueError(f"{flag} {column!r}: {path.name} has no such column in every row; its columns: "
                             f"{', '.join(rows[0]) if rows else 'none (the file is empty)'}")
        if any(not isinstance(row[column], str) for row in rows):
            raise ValueError(f"{flag} {column!r}: every value must be a string")
    if response_column is not None:
        return [{"prompt": row[prompt_column], "response": row[response_column]} for row in rows]
    return [{"text": row[text_column]} for row in rows]


def _table_rows(path: Path) -> list[dict]:
    if path.suffix == ".csv":
        with path.open(newline="") as f:
            return list(csv.DictReader(f))
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                raise ValueError(f"--data {path.name}: line {number} is not JSON (expected one object per line)") \
                    from None
    if not rows or not all(isinstance(row, dict) for row in rows):
        raise ValueError(f"--data {path.name}: expected one JSON object per line, e.g. "
                         '{"prompt": "...", "response": "..."}')
    return rows


def encode_lm_rows(rows: list[dict], tokenizer, max_length: int = 64):
    """:func:`encode_lm` of rows as :func:`read_lm_file` returns them (plain text, or prompt and response)."""
    if rows and "response" in rows[0]:
        return encode_lm([r["response"] for r in rows], tokenizer, max_length, prompts=[r["prompt"] for r in rows])
    return encode_lm([r["text"] for r in rows], tokenizer, max_length)
