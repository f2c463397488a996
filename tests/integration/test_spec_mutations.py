"""Case 15, bad input at scale: 1,000 random mutations of a valid FineTuneJob, each either refused by the API
server with a 422 naming the field, or reconciled by the operator to a phase: Failed with Validated=False
naming the field (and no Job or pod) when its own checks find the spec invalid, a Job otherwise. The
operator never crashes: /healthz answers, its log holds no unexpected error, no reconcile fails for good,
it still honours a TTL afterwards, and every object it reconciled can be deleted.

Hypothesis draws the mutations (delete a field, null, wrong type, out of range, negative, huge numbers,
random and huge strings, other enum values, unknown fields, nested structure changes, metadata.name) against
the CRD's own schema, so every field the CRD declares can be hit; a few edges it reaches too rarely run first
as explicit examples. Every mutation gets the API server's verdict as a server-side dry run (``dryRun=All``:
admission and validation run, nothing is stored), and a wrong verdict shrinks to a minimal mutation. The
operator's verdict is taken on a bounded sample of the accepted objects, rarest mutations first, created for
real in one batch and polled with one LIST per round, so the test takes about a minute on 2 cores.
"""

from __future__ import annotations

import copy
import json
import re
import time
import urllib.request
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st
from kube_objects import FineTuneJobs, condition_of, ftj_collection, ftj_manifest, minimal_spec, status_of
from kubetune_operator import errors as operator_errors
from kubetune_operator.builders.names import FINETUNEJOB_LABEL, name_problems
from kubetune_operator.errors import ApiError
from kubetune_operator.k8s import Kube

from kubetune.api.uris import URI_PATTERN
from kubetune.api.validation import spec_errors

pytestmark = pytest.mark.cluster

EXAMPLES = 1000
# Accepted objects created for real: enough for every kind of verdict, few enough for a 2-core machine.
MAX_OPERATOR_INVALID = 60
MAX_OPERATOR_VALID = 50
# Trainer pods a sampled valid job may start (the kwok nodes have 34 GPUs; more only wait for a timeout).
MAX_SAMPLED_NODES = 4
# A dry run never reaches etcd, which refuses requests over 1.5 MiB with a 500: larger objects get the dry
# run's verdict only.
MAX_CREATED_BYTES = 1024 * 1024
PHASE_TIMEOUT_SECONDS = 120
# Every reconcile that raised counts here; a few lost races are normal, one per object is a retry loop.
MAX_RECONCILE_ERROR_SHARE = 0.05
# Once the sample has settled (bounded: a job whose pods are refused stays Pending), a reconcile that fails for
# good is still retried with backoff (1, 2, 5, 10 s...): a few quiet seconds must see no failure.
SETTLE_SECONDS = 30
QUIET_SECONDS = 6
# A job with ttlSecondsAfterFinished 0 created after the mutations: its pod runs 2 s (kwok), then the
# operator's scheduled re-check deletes it (about 5 s in all).
TTL_CANARY_SECONDS = 30
# The finalizer goes in one reconcile; the garbage collector takes the children in seconds.
DELETE_SECONDS = 60
# Failed reconciles: the counter of reconciles, its result="error" samples.
RECONCILE_ERRORS = "kubetune_operator_reconciles_total"
# The operator logs each failed reconcile with its exception's class; API trouble is retried by design,
# anything else (an OverflowError, a KeyError) is a bug the input found.
RECONCILE_FAILED = re.compile(r"reconcile failed \((\w+):")
API_ERRORS = {
    name for name, cls in vars(operator_errors).items() if isinstance(cls, type) and issubclass(cls, ApiError)
}

# Every optional section set with valid values, so that mutations reach every nested field.
RICH_SPEC: dict[str, Any] = {
    "model": {
        "source": "hf://HuggingFaceTB/SmolLM2-135M-Instruct@main",
        "dtype": "bfloat16",
        "trustRemoteCode": False,
    },
    "dataset": {
        "train": ["s3://training-data/lamini_docs.jsonl", "hf://datasets/lamini@main"],
        "validationSplit": 0.1,
        "format": "messages",
        "fieldMapping": {"messages": "conversation", "system": "sys"},
        "maxSeqLength": 1024,
        "packing": True,
        "preflight": "skip",
    },
    "method": {
        "type": "qlora",
        "rank": 8,
        "alpha": 16,
        "dropout": 0.1,
        "targetModules": ["q_proj", "v_proj"],
        "quantization": {"bits": 4, "quantType": "nf4", "doubleQuant": True, "computeDtype": "bfloat16"},
    },
    "hyperparameters": {
        "maxSteps": 100,
        "learningRate": 1e-4,
        "scheduler": "linear",
        "warmupSteps": 10,
        "perDeviceBatchSize": "auto",
        "gradientAccumulationSteps": 2,
        "weightDecay": 0.01,
        "maxGradNorm": 1.0,
        "seed": 7,
        "gradientCheckpointing": True,
        "precision": "bf16",
        "evalEverySteps": 50,
    },
    "resources": {
        "gpusPerNode": 1,
        "nodes": 1,
        "gpuProduct": "NVIDIA-H100-80GB-HBM3",
        "cpu": "4",
        "memory": "16Gi",
        "sharedMemory": "1Gi",
        "nodeSelector": {"node.kubernetes.io/pool": "gpu-h100"},
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        "affinity": {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [{"matchExpressions": [{"key": "type", "operator": "In", "values": ["kwok"]}]}]
                }
            }
        },
    },
    "trainer": {
        "image": "kubetune/trainer:test",
        "imagePullPolicy": "IfNotPresent",
        "env": [{"name": "LOG_LEVEL", "value": "debug"}],
    },
    "checkpointing": {"everySteps": 50, "keepLast": 3},
    "output": {"destination": "s3://outputs/run-1", "mergeAdapter": True},
    "runPolicy": {"backoffLimit": 1, "activeDeadlineSeconds": 3600, "ttlSecondsAfterFinished": 3600, "suspend": False},
    "credentials": {
        "huggingFaceToken": {"name": "hf", "key": "token"},
        "s3": {
            "accessKeyId": {"name": "s3", "key": "id"},
            "secretAccessKey": {"name": "s3", "key": "secret"},
            "endpointUrl": "http://minio.storage:9000",
            "region": "eu-west-1",
        },
    },
}
BASES = {"minimal": minimal_spec(), "rich": RICH_SPEC}

CANARY = "canary"
TTL_CANARY = "ttl-canary"

Path = tuple[str | int, ...]
NAME_PATH: Path = ("metadata", "name")
# Inputs the CRD accepts that the random search reaches too rarely to rely on, run before it as explicit
# examples: (base, [(kind, path, value)]).
TTL: Path = ("spec", "runPolicy", "ttlSecondsAfterFinished")
EDGES: list[tuple[str, list[tuple[str, Path, Any]]]] = [
    # Seconds beyond a timer's range (threading.TIMEOUT_MAX, about 2**33), and int64's edge, beyond a datetime.
    ("rich", [("huge-number", TTL, 10**10)]),
    ("rich", [("huge-number", TTL, 2**63 - 1)]),
    # A spec over 256 KiB, the limit of an object's annotations; the Job API drops the unknown affinity field.
    ("rich", [("huge-string", ("spec", "resources", "affinity", "note"), "x" * 300_000)]),
    # A DNS subdomain the CRD accepts for a name; a Service name, derived from it, takes no dot.
    ("minimal", [("name", NAME_PATH, "a.b")]),
]


class _Delete:
    def __repr__(self) -> str:
        return "<deleted>"


DELETE = _Delete()


def dotted(path: Path) -> str:
    """``("spec", "env", 0, "name")`` → ``spec.env[0].name``, as the API server names fields."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


def names_for(path: Path) -> set[str]:
    """How a message may name the field: its path, the path of its list, or its last key."""
    keys = [p for p in path if isinstance(p, str)]
    trimmed = path
    while trimmed and isinstance(trimmed[-1], int):
        trimmed = trimmed[:-1]
    return {dotted(path), dotted(trimmed), keys[-1]}


def declared_field(path: Path, spec_schema: dict[str, Any]) -> Path:
    """The field the CRD declares for ``path``: a key inside a map or a free-form object is data of that field."""
    if path[:1] != ("spec",):
        return path
    schema: dict[str, Any] = spec_schema
    for index, part in enumerate(path[1:], start=1):
        if isinstance(part, int):
            schema = schema.get("items") or {}
        elif part in (schema.get("properties") or {}):
            schema = schema["properties"][part]
        else:
            return path[:index]
    return path


@dataclass(frozen=True)
class Mutation:
    kind: str
    path: Path
    value: Any
    field: Path  # the declared field the path is in (the path itself, or the map holding its key)

    def __repr__(self) -> str:
        shown = repr(self.value)
        shown = shown if len(shown) <= 80 else f"{shown[:60]}... ({len(shown)} chars)"
        return f"{self.kind} {dotted(self.path)} = {shown}"


@dataclass(frozen=True)
class Example:
    index: int
    base: str
    mutations: tuple[Mutation, ...]
    manifest: dict[str, Any]

    @property
    def breaks_object_meta(self) -> bool:
        """A non-string metadata.name: the API server cannot decode ObjectMeta and answers 400, not 422."""
        return not isinstance(self.manifest["metadata"].get("name"), str | None)

    def names_fields(self, message: str) -> bool:
        return any(name in message for m in self.mutations for name in names_for(m.path) | names_for(m.field))


# --- Schema-driven strategies ---------------------------------------------------------------------------


def child_schema(schema: dict[str, Any] | None, part: str | int) -> dict[str, Any] | None:
    if schema is None:
        return None
    if isinstance(part, int):
        items = schema.get("items")
        return items if isinstance(items, dict) else None
    props = schema.get("properties") or {}
    if part in props:
        return dict(props[part])
    extra = schema.get("additionalProperties")
    if isinstance(extra, dict):
        return extra
    return {} if schema.get("x-kubernetes-preserve-unknown-fields") else None


def candidate_paths(doc: dict[str, Any], spec_schema: dict[str, Any]) -> list[tuple[Path, dict[str, Any] | None]]:
    """Every field present in ``doc`` and every declared field whose parent object is present."""
    out: list[tuple[Path, dict[str, Any] | None]] = [(NAME_PATH, None)]

    def walk(value: Any, path: Path, schema: dict[str, Any] | None) -> None:
        out.append((path, schema))
        if isinstance(value, dict):
            declared = (schema or {}).get("properties") or {}
            for key in sorted(set(value) | set(declared)):
                if key in value:
                    walk(value[key], (*path, key), child_schema(schema, key))
                else:
                    out.append(((*path, key), child_schema(schema, key)))
        elif isinstance(value, list):
            for index, item in enumerate(value):
                walk(item, (*path, index), child_schema(schema, index))

    if "spec" in doc:
        walk(doc["spec"], ("spec",), spec_schema)
    else:
        out.append((("spec",), spec_schema))
    return out


SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)
JSON_VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=10), inner, max_size=3),
    max_leaves=6,
)
# Seconds beyond what a timer (about 2**33) or a datetime (year 9999) can hold, int64's edges, and past them.
HUGE_NUMBERS = st.sampled_from(
    [2**31, 10**10, 3 * 10**11, 2**53 + 1, 2**63 - 1, 2**63, 2**64, 10**30, 1e300, -(2**63), -(2**64)]
)
NEGATIVES = st.one_of(st.sampled_from([-1, -(2**31), -1e-9, -0.5]), st.integers(max_value=-1))
FIELD_LIKE = st.from_regex(r"[a-zA-Z_][a-zA-Z0-9_]{0,15}", fullmatch=True)
SNAKE_CASE_MISTAKES = st.sampled_from(["max_steps", "gpus_per_node", "learning_rate", "target_modules", "dryRun"])
URI_SCHEMES = st.sampled_from(["hf", "pvc", "s3", "file", "ftp", "gs", "HF", "", "s3:", "file:/"])
URI_REST = st.text(alphabet=st.characters(codec="utf-8"), max_size=40)
NAME_EDGES = ["", "A", "a.b", "a..b", "-a", "a-", "a_b", "7b", "a" * 50, "a" * 51, "x" * 253, "x" * 254, "ab.c-d"]
NAMES = st.one_of(
    st.from_regex(r"[a-z0-9]([-a-z0-9.]{0,60}[a-z0-9])?", fullmatch=True),
    # DNS subdomains the CRD accepts: children's names derive from them (a Service name takes no dot).
    st.from_regex(r"[a-z][-a-z0-9]{0,8}(\.[a-z0-9]([-a-z0-9]{0,8}[a-z0-9])?){0,2}", fullmatch=True),
    st.text(max_size=60),
    st.integers(51, 300).map(lambda n: "a" * n),
    st.sampled_from(NAME_EDGES),
)


def boosted(schema: dict[str, Any] | None) -> bool:
    """URIs (which only the operator parses in full) and numbers without a maximum (int64 is the only bound)."""
    schema = schema or {}
    unbounded = schema.get("type") == "integer" and "maximum" not in schema
    return unbounded or schema.get("pattern") == URI_PATTERN


def json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def wrong_types(schema: dict[str, Any]) -> st.SearchStrategy[Any]:
    if schema.get("x-kubernetes-int-or-string"):
        allowed = {"integer", "string"}
    else:
        allowed = {schema.get("type", "object")} | ({"integer"} if schema.get("type") == "number" else set())
    return JSON_VALUES.filter(lambda v: json_type(v) not in allowed | {"null"})


def out_of_range(schema: dict[str, Any], current: Any) -> st.SearchStrategy[Any]:
    options: list[st.SearchStrategy[Any]] = []
    lo, hi = schema.get("minimum"), schema.get("maximum")
    integer = schema.get("type") == "integer"
    step: int | float = 1 if integer else 1e-6
    if lo is not None:
        edge = lo if schema.get("exclusiveMinimum") else lo - step
        options.append(st.just(edge))
        options.append(st.integers(1, 2**40).map(lambda d: lo - d))
    if hi is not None:
        edge = hi if schema.get("exclusiveMaximum") else hi + step
        options.append(st.just(edge))
        options.append(st.integers(1, 2**40).map(lambda d: hi + d))
    if "maxLength" in schema:
        prefix = "s3://bucket/" if schema.get("pattern") == URI_PATTERN else ""
        options.append(st.just(prefix + "x" * (schema["maxLength"] + 1 - len(prefix))))
    if schema.get("minLength"):
        options.append(st.just(""))
    if schema.get("minItems"):
        options.append(st.just([]))
    if "maxItems" in schema:
        item = current[0] if isinstance(current, list) and current else "x"
        options.append(st.just([copy.deepcopy(item) for _ in range(schema["maxItems"] + 1)]))
    if "maxProperties" in schema:
        options.append(st.just({f"k{i}": "v" for i in range(schema["maxProperties"] + 1)}))
    return st.one_of(options) if options else st.nothing()


def valid_values(schema: dict[str, Any]) -> st.SearchStrategy[Any]:
    """A value the schema allows (cross-field rules and the operator's URI parsing may still refuse it)."""
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    if schema.get("x-kubernetes-int-or-string"):
        return st.one_of(st.just("auto"), st.integers(1, 100))
    kind = schema.get("type")
    lo, hi = schema.get("minimum"), schema.get("maximum")
    if kind == "integer":
        return st.integers(int(lo) if lo is not None else -(2**63), int(hi) if hi is not None else 2**63 - 1)
    if kind == "number":
        return st.floats(
            lo if lo is not None else -1e9,
            hi if hi is not None else 1e9,
            exclude_min=bool(schema.get("exclusiveMinimum")),
            exclude_max=bool(schema.get("exclusiveMaximum")),
        )
    if kind == "boolean":
        return st.booleans()
    if kind == "string":
        size = schema.get("maxLength", 100)
        if "pattern" in schema:
            text = st.from_regex(schema["pattern"]).filter(lambda s: len(s) <= size and "\n" not in s)
        else:
            text = st.text(min_size=schema.get("minLength", 0), max_size=min(size, 100))
        return text
    return st.nothing()


def value_mutations(path: Path, schema: dict[str, Any] | None, current: Any) -> dict[str, st.SearchStrategy[Any]]:
    present = current is not DELETE
    kinds: dict[str, st.SearchStrategy[Any]] = {
        "null": st.none(),
        "random-string": st.text(max_size=40),
        "huge-string": st.sampled_from([4097, 65_536, 300_000]).flatmap(
            lambda n: st.characters(codec="ascii", min_codepoint=33).map(lambda c: c * n)
        ),
    }
    if present:
        kinds["delete"] = st.just(DELETE)
        kinds["structure"] = structure_changes(current)
    if path == NAME_PATH:
        kinds["name"] = NAMES
        return kinds
    if schema is None:
        return kinds
    kinds["wrong-type"] = wrong_types(schema)
    beyond = out_of_range(schema, current)
    if not beyond.is_empty:
        kinds["out-of-range"] = beyond
    if schema.get("type") in ("integer", "number") or schema.get("x-kubernetes-int-or-string"):
        kinds["negative"] = NEGATIVES
        kinds["huge-number"] = HUGE_NUMBERS
    if "enum" in schema:
        enum = [str(v) for v in schema["enum"]]
        kinds["enum"] = st.one_of(
            st.sampled_from(enum),
            st.sampled_from(enum).map(str.upper),
            st.sampled_from(enum).map(lambda v: v + " "),
            st.sampled_from(["LoRA", "prefix-tuning", "bf16", "Never", "nf8", "float64", "always"]),
        )
    if schema.get("pattern") == URI_PATTERN:
        kinds["uri"] = st.builds(lambda scheme, rest: f"{scheme}://{rest}", URI_SCHEMES, URI_REST)
    valid = valid_values(schema)
    if not valid.is_empty:
        kinds["valid"] = valid
    if isinstance(current, dict) or schema.get("type") == "object":
        kinds["unknown-field"] = st.tuples(st.one_of(FIELD_LIKE, SNAKE_CASE_MISTAKES), JSON_VALUES)
    return kinds


def structure_changes(current: Any) -> st.SearchStrategy[Any]:
    options = [st.just([current]), st.just({"value": current})]
    if isinstance(current, dict):
        options += [st.just(list(current.values())), st.just({}), st.just({"spec": current})]
    if isinstance(current, list):
        options += [st.just({str(i): v for i, v in enumerate(current)}), st.just([current]), st.just([{}])]
    return st.one_of(options)


def apply(doc: dict[str, Any], mutation: Mutation) -> None:
    *parents, last = mutation.path
    node: Any = doc
    for part in parents:
        node = node[part]
    if mutation.value is DELETE:
        del node[last]
    else:
        node[last] = mutation.value


def current_value(doc: dict[str, Any], path: Path) -> Any:
    node: Any = doc
    for part in path:
        if isinstance(node, dict):
            found = part in node
        else:
            found = isinstance(node, list) and isinstance(part, int) and part < len(node)
        if not found:
            return DELETE
        node = node[part]
    return node


@st.composite
def examples(draw: st.DrawFn, *, spec_schema: dict[str, Any], counter: list[int]) -> Example:
    base = draw(st.sampled_from(sorted(BASES)))
    counter[0] += 1
    doc = ftj_manifest(f"m{counter[0]:04d}", spec=copy.deepcopy(BASES[base]))
    del doc["metadata"]["annotations"]
    mutations: list[Mutation] = []
    for _ in range(draw(st.sampled_from([1, 1, 1, 2, 3]))):
        # A field once per example: a second mutation of it would only hide the first.
        paths = [
            p for p in candidate_paths(doc, spec_schema) if not any(p[0][: len(m.path)] == m.path for m in mutations)
        ]
        # Names and URIs are what only the operator checks in full: drawn more often than their share.
        paths += [p for p in paths if p[0] == NAME_PATH or boosted(p[1])] * 4
        if not paths:
            break
        path, schema = draw(st.sampled_from(paths))
        current = current_value(doc, path)
        kinds = value_mutations(path, schema, current)
        kind = draw(st.sampled_from(sorted(kinds)))
        value = draw(kinds[kind])
        if kind == "unknown-field":
            key, value = value
            if not isinstance(current, dict):
                continue
            path = (*path, key)
        mutation = Mutation(kind, path, value, declared_field(path, spec_schema))
        apply(doc, mutation)
        mutations.append(mutation)
    return Example(index=counter[0], base=base, mutations=tuple(mutations), manifest=doc)


# --- Verdicts ------------------------------------------------------------------------------------------


@dataclass
class Accepted:
    example: Example
    stored: dict[str, Any]
    problems: list[str]

    @property
    def name(self) -> str:
        return str(self.stored["metadata"]["name"])


@dataclass
class Tally:
    rejected: int = 0
    operator_invalid: int = 0
    valid: int = 0
    accepted: list[Accepted] = field(default_factory=list)
    kinds: Counter[str] = field(default_factory=Counter)


def operator_problems(stored: dict[str, Any]) -> list[str]:
    """What the operator's own checks say about the object as the API server stored it."""
    return name_problems(name=stored["metadata"]["name"]) + spec_errors(stored.get("spec") or {})


def api_verdict(kube: Kube, namespace: str, example: Example, tally: Tally) -> None:
    try:
        stored = kube.request("POST", ftj_collection(namespace), query=[("dryRun", "All")], body=example.manifest)
    except ApiError as err:
        expected = 400 if example.breaks_object_meta else 422
        assert err.status == expected, f"{example.mutations}: expected {expected} or acceptance, got {err}"
        assert example.names_fields(err.message), f"{example.mutations}: the 422 names no mutated field: {err}"
        tally.rejected += 1
        return
    problems = operator_problems(stored)
    tally.accepted.append(Accepted(example=example, stored=stored, problems=problems))
    if problems:
        tally.operator_invalid += 1
    else:
        tally.valid += 1


def stored_bytes(obj: dict[str, Any]) -> int:
    """The object's size as the API server writes it: Go's JSON escapes <, > and & as six bytes each."""
    text = json.dumps(obj, ensure_ascii=False)
    return len(text.encode()) + 5 * sum(text.count(c) for c in "<>&")


def mutation_keys(item: Accepted) -> set[tuple[str, str]]:
    return {(m.kind, re.sub(r"\[\d+\]", "[]", dotted(m.path))) for m in item.example.mutations}


def sample(accepted: Sequence[Accepted]) -> list[Accepted]:
    """Accepted objects with distinct stored names and specs, invalid and valid ones up to their caps.

    Rarest (mutation kind, field) first, and in a first pass only objects that bring one not chosen yet, so
    the sample spreads over the fields instead of being the first few hundred examples.
    """
    frequency = Counter(key for item in accepted for key in mutation_keys(item))
    ordered = sorted(accepted, key=lambda item: min((frequency[k] for k in mutation_keys(item)), default=EXAMPLES))
    chosen: list[Accepted] = []
    specs: set[str] = set()
    names: set[str] = set()
    covered: set[tuple[str, str]] = set()
    counts = {True: 0, False: 0}
    caps = {True: MAX_OPERATOR_INVALID, False: MAX_OPERATOR_VALID}
    for fresh_only in (True, False):
        for item in ordered:
            invalid = bool(item.problems)
            spec = json.dumps(item.stored["spec"], sort_keys=True)
            if stored_bytes(item.stored) > MAX_CREATED_BYTES:
                continue
            nodes = (item.stored["spec"].get("resources") or {}).get("nodes", 1)
            keys = mutation_keys(item)
            if spec in specs or item.name in names or counts[invalid] >= caps[invalid]:
                continue
            if (fresh_only and keys <= covered) or (not invalid and not 1 <= nodes <= MAX_SAMPLED_NODES):
                continue
            chosen.append(item)
            specs.add(spec)
            names.add(item.name)
            covered |= keys
            counts[invalid] += 1
    return chosen


def create_all(kube: Kube, namespace: str, items: Sequence[Accepted]) -> None:
    def create(item: Accepted) -> None:
        kube.request("POST", ftj_collection(namespace), body=item.example.manifest)

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(create, items))


def delete_all(kube: Kube, namespace: str, names: Sequence[str]) -> None:
    def delete(name: str) -> None:
        kube.request("DELETE", f"{ftj_collection(namespace)}/{name}")

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(delete, names))


def wait_gone(ftjs: FineTuneJobs, names: set[str], *, timeout: float) -> set[str]:
    """The FineTuneJobs of ``names`` still there after ``timeout`` (one LIST per round)."""
    deadline = time.monotonic() + timeout
    while True:
        items = ftjs.kube.request("GET", ftj_collection(ftjs.namespace))["items"]
        left = names & {obj["metadata"]["name"] for obj in items}
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(1.0)


@dataclass
class Observed:
    objects: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> the latest object with a phase
    jobs: set[str] = field(default_factory=set)  # FineTuneJob names that had a Job
    pods: set[str] = field(default_factory=set)  # FineTuneJob names that had pods

    def look(self, ftjs: FineTuneJobs) -> None:
        """One LIST each of FineTuneJobs, Jobs and pods; what was seen before is kept."""
        for obj in ftjs.kube.request("GET", ftj_collection(ftjs.namespace))["items"]:
            if status_of(obj).get("phase"):
                self.objects[obj["metadata"]["name"]] = obj
        self.jobs |= owners(ftjs.everything("jobs"))
        self.pods |= owners(ftjs.everything("pods"))


def owners(children: Sequence[dict[str, Any]]) -> set[str]:
    """The names of the FineTuneJobs these children belong to, by their label."""
    labels = [child["metadata"].get("labels") or {} for child in children]
    return {str(label[FINETUNEJOB_LABEL]) for label in labels if FINETUNEJOB_LABEL in label}


def observe_until_phased(ftjs: FineTuneJobs, names: set[str], *, timeout: float) -> Observed:
    """Poll until every object of ``names`` had a phase, or ``timeout``."""
    seen = Observed()
    deadline = time.monotonic() + timeout
    while True:
        seen.look(ftjs)
        if names <= set(seen.objects) or time.monotonic() > deadline:
            return seen
        time.sleep(1.0)


def counter(metrics: str, name: str) -> float:
    """The sum of a counter's ``result="error"`` samples over all other label values."""
    samples = re.findall(rf"^{name}{{([^}}]*)}} (\S+)$", metrics, flags=re.M)
    return sum(float(v) for labels, v in samples if 'result="error"' in labels)


def healthz(port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as response:
        return int(response.status)


# --- The test ------------------------------------------------------------------------------------------


def test_a_thousand_mutated_specs_are_refused_naming_the_field_or_reconciled_to_a_phase(
    admin: Kube, crd: dict[str, Any], namespace: str, ftjs: FineTuneJobs, operator: Any
) -> None:
    # A plain job first: a verdict below is about its mutation, never about an operator that acts on nothing.
    ftjs.create(CANARY)
    ftjs.wait(CANARY, lambda obj: bool(status_of(obj).get("phase")), what="a phase (the operator is up)")
    log_start = operator.log_path.stat().st_size
    errors_before = counter(operator.metrics(), RECONCILE_ERRORS)
    started = time.monotonic()
    spec_schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    tally = api_verdicts(admin, namespace, spec_schema=spec_schema)
    dry_run_seconds = time.monotonic() - started
    checked = tally.rejected + len(tally.accepted)
    assert checked >= EXAMPLES, f"hypothesis ran only {checked} examples"

    chosen = sample(tally.accepted)
    create_all(admin, namespace, chosen)
    seen = observe_until_phased(ftjs, {a.name for a in chosen}, timeout=PHASE_TIMEOUT_SECONDS)
    settle(ftjs, timeout=SETTLE_SECONDS)
    seen.look(ftjs)
    failures, outcomes = check_operator_verdicts(chosen, seen)
    errors_settled = counter(operator.metrics(), RECONCILE_ERRORS)
    # After every mutation has been reconciled, the operator still acts on time: a TTL expires.
    ftjs.create(TTL_CANARY, spec={**minimal_spec(), "runPolicy": {"ttlSecondsAfterFinished": 0}})
    time.sleep(QUIET_SECONDS)
    errors_quiet = counter(operator.metrics(), RECONCILE_ERRORS) - errors_settled
    errors = errors_settled + errors_quiet - errors_before
    failures += operator_health(
        operator, errors=errors, errors_quiet=errors_quiet, created=len(chosen), log_start=log_start
    )
    if wait_gone(ftjs, {TTL_CANARY}, timeout=TTL_CANARY_SECONDS):
        status = status_of(ftjs.get(TTL_CANARY) or {})
        failures.append(f"{TTL_CANARY}: ttlSecondsAfterFinished 0, still there after {TTL_CANARY_SECONDS} s: {status}")
    delete_all(admin, namespace, [a.name for a in chosen])
    left = wait_gone(ftjs, {a.name for a in chosen}, timeout=DELETE_SECONDS)
    failures += [
        f"{a.name} {list(a.example.mutations)}: still there {DELETE_SECONDS} s after its deletion"
        for a in chosen
        if a.name in left
    ]

    print(
        f"\n{checked} mutations in {dry_run_seconds:.0f} s of dry runs: {tally.rejected} refused by the API server, "
        f"{tally.operator_invalid} accepted and invalid by the operator's checks, {tally.valid} valid; "
        f"{len(chosen)} created: {dict(outcomes)}; {errors:.0f} reconcile errors; "
        f"mutation kinds {dict(sorted(tally.kinds.items()))}"
    )
    assert not failures, "\n".join(failures)


def operator_health(operator: Any, *, errors: float, errors_quiet: float, created: int, log_start: int) -> list[str]:
    """The operator process is up, logged no unexpected error, and no reconcile keeps failing."""
    out = []
    if healthz(operator.health_port) != 200:
        out.append("the operator's /healthz is not OK")
    log = operator.log_path.read_bytes()[log_start:].decode("utf-8", errors="replace").splitlines()
    unexpected = [line[:400] for line in log if " ERROR " in line or line.startswith("Exception in thread")]
    if unexpected or any(line.startswith("Traceback") for line in log):
        out.append("the operator logged unexpected errors:\n  " + "\n  ".join(unexpected[:5]))
    failed = [(m[1], line[:300]) for line in log if (m := RECONCILE_FAILED.search(line))]
    if any(kind not in API_ERRORS for kind, _ in failed):
        out.append("reconciles raised something other than an API error (see the failed reconciles below)")
    if errors_quiet:
        out.append(f"{errors_quiet:.0f} reconciles failed after every job had settled")
    if errors > max(3, MAX_RECONCILE_ERROR_SHARE * created):
        out.append(f"{errors:.0f} reconciles raised for {created} objects")
    if failed and out:
        out.append("failed reconciles (the last 8):\n  " + "\n  ".join(line for _, line in failed[-8:]))
    return out


def api_verdicts(kube: Kube, namespace: str, *, spec_schema: dict[str, Any]) -> Tally:
    """Hypothesis draws the examples; each gets the API server's verdict (and shrinks if that is wrong)."""
    tally = Tally()

    @given(example=examples(spec_schema=spec_schema, counter=[0]))
    def refused_naming_the_field_or_accepted(example: Example) -> None:
        for mutation in example.mutations:
            tally.kinds[mutation.kind] += 1
        api_verdict(kube, namespace, example, tally)

    test = refused_naming_the_field_or_accepted
    for index, (base, edits) in enumerate(EDGES):
        test = example(example=edge_example(index, base, edits, spec_schema=spec_schema))(test)
    settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,
        phases=(Phase.explicit, Phase.generate, Phase.shrink),
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    )(test)()
    return tally


def edge_example(
    index: int, base: str, edits: Sequence[tuple[str, Path, Any]], *, spec_schema: dict[str, Any]
) -> Example:
    doc = ftj_manifest(f"edge{index}", spec=copy.deepcopy(BASES[base]))
    del doc["metadata"]["annotations"]
    mutations = tuple(Mutation(kind, path, value, declared_field(path, spec_schema)) for kind, path, value in edits)
    for mutation in mutations:
        apply(doc, mutation)
    return Example(index=-index, base=base, mutations=mutations, manifest=doc)


def settle(ftjs: FineTuneJobs, *, timeout: float) -> None:
    """Wait, at most ``timeout``, until no FineTuneJob is Pending or Running (some legitimately stay so)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        items = ftjs.kube.request("GET", ftj_collection(ftjs.namespace))["items"]
        if all(status_of(obj).get("phase") not in ("Pending", "Running") for obj in items):
            return
        time.sleep(1.0)


def check_operator_verdicts(chosen: Sequence[Accepted], seen: Observed) -> tuple[list[str], Counter[str]]:
    """Each sampled object's failure, as a line naming its mutations; and how many ended which way."""
    failures, outcomes = [], Counter[str]()
    for item in chosen:
        outcome, failure = operator_verdict(item, seen)
        outcomes[outcome] += 1
        if failure is not None:
            failures.append(f"{item.name} {list(item.example.mutations)}: {failure}")
    return failures, outcomes


def operator_verdict(item: Accepted, seen: Observed) -> tuple[str, str | None]:
    """``(outcome, failure)``: a Job for a valid spec; Failed naming the field, with no Job, otherwise.

    A spec that passes the operator's checks may still build a Job the API server refuses (a free-form
    affinity, a toleration the pod API forbids): the operator then fails it the same way, naming the field.
    """
    obj = seen.objects.get(item.name)
    if obj is None:
        return "stuck", f"no phase after {PHASE_TIMEOUT_SECONDS} s (operator problems: {item.problems})"
    if not item.problems and item.name in seen.jobs:
        return "job", None
    outcome = "invalid" if item.problems else "job-refused"
    phase, validated = status_of(obj).get("phase"), condition_of(obj, "Validated")
    message = str(validated.get("message", ""))
    if phase != "Failed" or validated.get("status") != "False":
        return outcome, f"operator problems {item.problems}, but phase {phase} and no Job; status {status_of(obj)}"
    if not item.example.names_fields(message):
        return outcome, f"the Validated message names no mutated field: {message!r}"
    if item.name in seen.jobs or item.name in seen.pods:
        return outcome, "Failed as invalid, yet a Job or pod was created"
    return outcome, None
