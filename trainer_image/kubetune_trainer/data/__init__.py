"""The trainer's data layer: validate and tokenize a dataset, plan batches, collate them into tensors.

The training loop uses only these names::

    data = prepare_data(config.dataset, tokenizer=tokenizer, seed=seed)
    plan = plan_batches([len(e.input_ids) for e in data.train], batch_size=..., max_seq_length=...,
                        packing=config.dataset.packing, seed=seed, epoch=epoch)
    for batch in plan:
        tensors = collate([[data.train[i] for i in row] for row in batch], packing=..., pad_token_id=...)

``DataError`` maps to exit code BAD_DATA and ``DataConfigError`` to BAD_CONFIG (both carry ``exit_code``).
"""

from kubetune_trainer.data.packing import block_causal_mask, collate, plan_batches
from kubetune_trainer.data.prepare import check_data, prepare_data, prepare_preference_data
from kubetune_trainer.data.report import REPORT_FILE_NAME
from kubetune_trainer.data.types import (
    IGNORE_INDEX,
    DataConfigError,
    DataError,
    DataIssue,
    DataReport,
    Example,
    Message,
    PreparedData,
    PreparedPairs,
    TokenizedExample,
    TokenStats,
)

__all__ = [
    "IGNORE_INDEX",
    "REPORT_FILE_NAME",
    "DataConfigError",
    "DataError",
    "DataIssue",
    "DataReport",
    "Example",
    "Message",
    "PreparedData",
    "PreparedPairs",
    "TokenStats",
    "TokenizedExample",
    "block_causal_mask",
    "check_data",
    "collate",
    "plan_batches",
    "prepare_data",
    "prepare_preference_data",
]
