"""Preference pairs derived from lamini_docs in a test (never committed as data), and a DPO trainer config."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any


def preference_pairs(lamini: Path, out: Path, *, count: int, openai_format: bool = False) -> Path:
    """``count`` pairs derived from lamini_docs' first records: chosen = the question's answer, rejected =
    the answer of the question ``count // 2`` records on (another question, usually on another topic)."""
    records = [json.loads(line) for line in lamini.read_text(encoding="utf-8").splitlines() if line.strip()]
    records = [r for r in records if r["answer"].strip()][:count]
    others = records[count // 2 :] + records[: count // 2]
    lines = []
    for this, other in zip(records, others, strict=True):
        if openai_format:
            lines.append(
                {
                    "input": {"messages": [{"role": "user", "content": this["question"]}]},
                    "preferred_output": [{"role": "assistant", "content": this["answer"]}],
                    "non_preferred_output": [{"role": "assistant", "content": other["answer"]}],
                }
            )
        else:
            lines.append({"prompt": this["question"], "chosen": this["answer"], "rejected": other["answer"]})
    out.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    return out


def dpo_config(config_factory: Callable[..., dict[str, Any]], **kwargs: Any) -> dict[str, Any]:
    config = config_factory(**kwargs)
    config["dataset"].pop("fieldMapping")
    config["dataset"]["format"] = "auto"
    config["method"]["objective"] = "dpo"
    return config
