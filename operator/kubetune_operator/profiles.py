"""Pure: which FineTuneProfile a FineTuneJob runs under, and the spec its children are built from.

The first time the operator sees a job it chooses the profile (``kubetune.api.profile.choose_profile``),
checks the limits again (a profile may have changed since admission) and records the profile's defaults
in ``status.profile``; from then on the job's effective spec comes from its own spec and that record, so a
profile edited or deleted later never changes a job that was already admitted.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from kubetune.api.profile import (
    FineTuneProfileSpec,
    ProfileLimits,
    ProfileRef,
    choose_profile,
    effective_spec,
    limit_violations,
)
from kubetune.api.resource import FineTuneJob
from kubetune.api.spec import FineTuneJobSpec
from kubetune.api.status import AppliedProfile

Obj = Mapping[str, Any]

OUTSIDE_PROFILE = "OutsideProfile"
PROFILE_NOT_FOUND = "ProfileNotFound"
NO_DESTINATION = (
    "spec.output.destination: required: set it, or run under a FineTuneProfile whose defaults.outputBase gives one"
)


@dataclass(frozen=True, kw_only=True)
class ProfileStage:
    """What the profile decides for one job: the effective spec, the record for status.profile, and why the
    job may not run (over the limits, a missing destination) or must wait (its profile does not exist)."""

    spec: FineTuneJobSpec
    record: AppliedProfile | None = None
    outside: list[str] = field(default_factory=list)
    invalid: list[str] = field(default_factory=list)
    waiting: str | None = None


def profile_refs(objects: Sequence[Obj]) -> list[ProfileRef]:
    """The cached FineTuneProfile objects, parsed; one the models cannot read is left out."""
    refs = []
    for obj in objects:
        meta = obj.get("metadata") or {}
        try:
            spec = FineTuneProfileSpec.model_validate(obj.get("spec") or {})
        except ValidationError:
            continue
        refs.append(
            ProfileRef(
                name=_name(obj),
                spec=spec,
                uid=meta.get("uid"),
                resource_version=meta.get("resourceVersion"),
                generation=meta.get("generation"),
                created=str(meta.get("creationTimestamp") or ""),
            )
        )
    return refs


def profile_stage(
    ftj: FineTuneJob, *, recorded: AppliedProfile | None, profiles: Sequence[Obj], namespace_profile: str | None
) -> ProfileStage:
    meta = ftj.metadata
    if recorded is not None:
        # Only whether the recorded profile still exists: no profile is parsed on this, every job's, path.
        uids = [(p.get("metadata") or {}).get("uid") for p in profiles if _name(p) == recorded.name]
        missing = not uids or (recorded.uid is not None and recorded.uid not in uids)
        limits = ProfileLimits(max_active_deadline_seconds=recorded.max_active_deadline_seconds)
        spec, _ = effective_spec(ftj.spec, recorded.defaults, limits, namespace=meta.namespace, name=meta.name)
        record = recorded.model_copy(update={"missing": True if missing else None})
        return _checked_destination(ProfileStage(spec=spec, record=record))
    refs = {ref.name: ref for ref in profile_refs(profiles)}
    choice = choose_profile(
        spec_profile=ftj.spec.profile, namespace_profile=namespace_profile, profiles=list(refs.values())
    )
    if choice.name is None or choice.chosen_by is None:
        return _checked_destination(ProfileStage(spec=ftj.spec))
    ref = refs.get(choice.name)
    if ref is None:
        where = (
            f"the namespace's label kubetune.io/profile names FineTuneProfile {choice.name}"
            if choice.chosen_by == "namespace"
            else f"spec.profile: FineTuneProfile {choice.name}"
        )
        return ProfileStage(spec=ftj.spec, waiting=f"{where}, which does not exist (yet)")
    limits = ref.spec.limits
    spec, applied = effective_spec(ftj.spec, ref.spec.defaults, limits, namespace=meta.namespace, name=meta.name)
    outside = ([choice.problem] if choice.problem else []) + limit_violations(
        ftj.spec, spec, profile=ref.name, limits=limits
    )
    record = AppliedProfile(
        name=ref.name,
        chosen_by=choice.chosen_by,
        uid=ref.uid,
        resource_version=ref.resource_version,
        generation=ref.generation,
        defaults=ref.spec.defaults,
        max_active_deadline_seconds=limits.max_active_deadline_seconds,
        applied=applied,
    )
    return _checked_destination(ProfileStage(spec=spec, record=record, outside=outside))


def _name(obj: Obj) -> str:
    return str((obj.get("metadata") or {}).get("name", ""))


def _checked_destination(stage: ProfileStage) -> ProfileStage:
    if stage.spec.output.destination is not None:
        return stage
    return ProfileStage(
        spec=stage.spec, record=stage.record, outside=stage.outside, invalid=[NO_DESTINATION], waiting=stage.waiting
    )
