"""Pure: the data-check Job and its pods in, what the check says out (phase Validating).

The check's pod writes a :class:`~kubetune.api.preflight.PreflightResult` to its termination message;
this module reads it from the pod's status and decides whether the check is still running, passed
(the training Job may be created) or failed (the FineTuneJob fails before any GPU pod exists).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from kubetune.api.preflight import PreflightResult, decode_result
from kubetune.api.spec import PreflightMode
from kubetune.api.status import DatasetStatus, Estimate, Failure, ResolvedHyperparameters
from kubetune_operator.builders.names import PREFLIGHT_CONTAINER, PREFLIGHT_SPEC_HASH_ANNOTATION

Obj = Mapping[str, Any]

# Failure reasons of the check that are not the data's or the config's.
DATA_CHECK_FAILED = "DataCheckFailed"
BAD_DATA = "BadData"
# status.failure.message lists this many of the check's problems.
PROBLEMS_IN_MESSAGE = 5

CheckState = Literal["Running", "Passed", "Failed"]


@dataclass(frozen=True, kw_only=True)
class Checked:
    """What a finished check found, for status.dataset, status.hyperparameters and status.estimate."""

    dataset: DatasetStatus
    hyperparameters: ResolvedHyperparameters | None = None
    estimate: Estimate | None = None

    @property
    def passed(self) -> bool:
        return self.hyperparameters is not None


@dataclass(frozen=True, kw_only=True)
class CheckView:
    """The check as observed: its state, what it found (when finished) and why it failed."""

    state: CheckState
    checked: Checked | None = None
    failure: Failure | None = None


def job_spec_hash(job: Obj) -> str | None:
    """The spec digest a data-check Job was built for."""
    return ((job.get("metadata") or {}).get("annotations") or {}).get(PREFLIGHT_SPEC_HASH_ANNOTATION)


def from_status(
    *,
    dataset: DatasetStatus | None,
    hyperparameters: ResolvedHyperparameters | None,
    estimate: Estimate | None,
    spec_hash: str,
) -> Checked | None:
    """The passed check recorded in the status for this spec; None when there is none (or for another spec)."""
    if dataset is None or hyperparameters is None or dataset.spec_hash != spec_hash:
        return None
    return Checked(dataset=dataset, hyperparameters=hyperparameters, estimate=estimate)


def read_check(job: Obj, *, pods: Sequence[Obj], spec_hash: str, mode: PreflightMode, now: datetime) -> CheckView:
    """What the data-check Job ``job`` (built for ``spec_hash``) and its ``pods`` say."""
    result, pod, terminated = _latest_result(pods)
    complete = _condition(job, "Complete") or _condition(job, "SuccessCriteriaMet")
    failed = _condition(job, "Failed") or _condition(job, "FailureTarget")
    if complete is None and failed is None:
        return CheckView(state="Running")
    checked = _checked(result, spec_hash=spec_hash, now=_finished_at(terminated) or now)
    if complete is not None and result is not None and result.outcome == "Passed" and checked and checked.passed:
        warnings = checked.dataset.warning_count
        if mode == "strict" and warnings:
            message = f"spec.dataset.preflight is strict and the data check found {warnings} warning(s): " + "; ".join(
                checked.dataset.warnings
            )
            failed_check = Checked(dataset=checked.dataset)
            return CheckView(state="Failed", checked=failed_check, failure=Failure(reason=BAD_DATA, message=message))
        return CheckView(state="Passed", checked=checked)
    if result is not None and result.outcome != "Passed":
        return CheckView(state="Failed", checked=checked, failure=_result_failure(result, pod=pod))
    condition = failed or complete or {}
    reason = str(condition.get("reason") or "")
    detail = str((terminated or {}).get("message") or "").strip()[-1000:]
    message = "the data check ended without a result"
    if reason:
        message += f" ({reason}: {condition.get('message') or ''})".replace(": )", ")")
    if detail:
        message += f"; its last output: {detail}"
    return CheckView(
        state="Failed",
        failure=Failure(
            reason=DATA_CHECK_FAILED,
            message=message,
            pod=_name(pod) if pod is not None else None,
            container=PREFLIGHT_CONTAINER if pod is not None else None,
            exit_code=int(terminated["exitCode"]) if terminated and "exitCode" in terminated else None,
        ),
    )


def check_summary(checked: Checked) -> str:
    """One line for the DataValidated Event: examples, tokens, steps and the estimate."""
    dataset, hp, estimate = checked.dataset, checked.hyperparameters, checked.estimate
    parts = [
        f"{dataset.train_examples} training and {dataset.validation_examples} validation examples",
        f"{dataset.train_tokens.total} tokens (p95 {dataset.train_tokens.p95} per example)",
    ]
    if hp is not None:
        parts.append(f"{hp.epochs} epoch(s), {hp.total_steps} steps of {hp.per_device_batch_size} x {hp.world_size}")
    if estimate is not None and estimate.duration is not None:
        parts.append(f"estimated {estimate.duration}" + (f" ({estimate.basis})" if estimate.basis else ""))
    return "; ".join(parts)


def _checked(result: PreflightResult | None, *, spec_hash: str, now: datetime) -> Checked | None:
    if result is None or result.dataset is None:
        return None
    dataset = result.dataset.model_copy(update={"spec_hash": spec_hash, "checked_at": now})
    if result.outcome != "Passed":
        return Checked(dataset=dataset)
    return Checked(dataset=dataset, hyperparameters=result.hyperparameters, estimate=result.estimate)


def _result_failure(result: PreflightResult, *, pod: Obj | None) -> Failure:
    """BadData names the first problems with file and line; BadConfig says what is wrong with the model."""
    message = result.message
    dataset = result.dataset
    if result.outcome == BAD_DATA and dataset is not None and dataset.errors:
        shown = "; ".join(
            f"{p.file}{f':{p.line}' if p.line else ''}: {p.field + ': ' if p.field else ''}{p.reason}"
            for p in dataset.errors[:PROBLEMS_IN_MESSAGE]
        )
        more = dataset.error_count - min(len(dataset.errors), PROBLEMS_IN_MESSAGE)
        message = f"{message}: {shown}" + (f" (and {more} more, see status.dataset)" if more > 0 else "")
    return Failure(
        reason=result.outcome,
        message=message,
        pod=_name(pod) if pod is not None else None,
        container=PREFLIGHT_CONTAINER if pod is not None else None,
    )


def _latest_result(pods: Sequence[Obj]) -> tuple[PreflightResult | None, Obj | None, Obj | None]:
    """(result, pod, terminated state) of the most recently terminated check container."""
    finished = []
    for pod in pods:
        for status in (pod.get("status") or {}).get("containerStatuses") or []:
            terminated = (status.get("state") or {}).get("terminated")
            if status.get("name") == PREFLIGHT_CONTAINER and terminated:
                finished.append((str(terminated.get("finishedAt") or ""), pod, dict(terminated)))
    if not finished:
        return None, None, None
    _, pod, terminated = max(finished, key=lambda item: item[0])
    return decode_result(terminated.get("message")), pod, terminated


def _finished_at(terminated: Obj | None) -> datetime | None:
    value = (terminated or {}).get("finishedAt")
    if not isinstance(value, str) or not value:
        return None
    return datetime.fromisoformat(value)


def _condition(obj: Obj, type_: str) -> Obj | None:
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond.get("type") == type_ and cond.get("status") == "True":
            return dict(cond)
    return None


def _name(pod: Obj) -> str:
    return str((pod.get("metadata") or {}).get("name", ""))
