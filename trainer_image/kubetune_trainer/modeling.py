"""Load the base model and tokenizer from any supported source, and apply the training method.

Sources: ``hf://org/name@revision`` (HF_TOKEN from the environment), a local directory of safetensors
(``file://``, ``pvc://``), an ``s3://`` prefix (downloaded first), each optionally with a GGUF file
(dequantized by transformers). The model is returned *clean*: a GGUF-loaded model is flagged as
quantized and refuses ``save_pretrained``, so it is rebuilt as a plain model around the same tensors.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import torch
from fsspec import AbstractFileSystem
from torch import nn

from kubetune.api.spec import MethodSpec, ModelSpec, QuantizationSpec
from kubetune.api.uris import PVC_MOUNT_ROOT, local_path, parse_uri
from kubetune_trainer.errors import ConfigError
from kubetune_trainer.settings import Precision

log = logging.getLogger(__name__)

# Files of a model directory that a tokenizer or a model config can read: JSON (config.json,
# tokenizer.json, tokenizer_config.json, special_tokens_map.json...), vocabularies (vocab.txt, merges.txt,
# sentencepiece's *.model, *.tiktoken), chat templates (chat_template.jinja, and more of them under
# additional_chat_templates/) and custom code for trustRemoteCode; never weights.
TOKENIZER_FILE_SUFFIXES = (".json", ".txt", ".model", ".tiktoken", ".jinja", ".py")
CHAT_TEMPLATE_DIR = "additional_chat_templates"

DTYPES: dict[str, torch.dtype] = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
PRECISION_DTYPES: dict[Precision, torch.dtype] = {
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
    "fp32": torch.float32,
}


@dataclass(frozen=True, kw_only=True)
class ModelSource:
    """Arguments for ``from_pretrained``: a local directory or a Hub repository id."""

    name_or_path: str
    revision: str | None
    gguf_file: str | None
    trust_remote_code: bool
    # The URI as the user wrote it, for the manifest.
    uri: str

    def pretrained_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"trust_remote_code": self.trust_remote_code}
        if self.revision is not None:
            kwargs["revision"] = self.revision
        if self.gguf_file is not None:
            kwargs["gguf_file"] = self.gguf_file
        token = os.environ.get("HF_TOKEN")
        if token:
            kwargs["token"] = token
        return kwargs


def resolve_model_source(
    spec: ModelSpec,
    *,
    pvc_root: PurePosixPath = PVC_MOUNT_ROOT,
    cache_dir: Path,
    tokenizer_only: bool = False,
    remote_fs: AbstractFileSystem | None = None,
) -> ModelSource:
    """Check the source exists (local) or fetch it (s3://); raise ConfigError naming the field.

    ``tokenizer_only``: fetch from s3:// only the tokenizer and config files (the data check needs no
    weights). ``remote_fs`` stands in for the s3 filesystem (tests).
    """
    uri = parse_uri(spec.source)
    if uri.scheme == "hf":
        name = uri.authority
    elif uri.scheme == "s3":
        fs = remote_fs if remote_fs is not None else _s3_filesystem()
        prefix = f"{uri.authority}/{uri.path}"
        if tokenizer_only:
            name = str(_download_tokenizer_files(fs, prefix, gguf_file=spec.gguf_file, into=cache_dir / "tokenizer"))
        else:
            name = str(_download_s3_prefix(fs, prefix, into=cache_dir / "model"))
    else:
        path = local_path(uri, pvc_root=pvc_root)
        assert path is not None
        local = Path(str(path))
        if not local.is_dir():
            raise ConfigError(f"model.source: {spec.source} is not a directory ({local} does not exist)")
        name = str(local)
    if spec.gguf_file is not None and uri.scheme != "hf" and not (Path(name) / spec.gguf_file).is_file():
        raise ConfigError(f"model.ggufFile: {spec.gguf_file} not found in {spec.source}")
    return ModelSource(
        name_or_path=name,
        revision=uri.revision,
        gguf_file=spec.gguf_file,
        trust_remote_code=spec.trust_remote_code,
        uri=spec.source,
    )


def _s3_filesystem() -> AbstractFileSystem:
    import fsspec

    try:
        fs: AbstractFileSystem = fsspec.filesystem("s3")
    except ImportError as err:
        raise ConfigError(f"model.source: s3:// needs s3fs, which this environment lacks ({err})") from None
    return fs


def _download_s3_prefix(fs: AbstractFileSystem, path: str, *, into: Path) -> Path:
    if not into.exists():
        fs.get(path, str(into), recursive=True)
    return into


def is_tokenizer_file(relative: str, *, gguf_file: str | None) -> bool:
    """Whether a file of a model directory is one a tokenizer or a model config reads (never weights)."""
    if gguf_file is not None and relative == gguf_file:
        return True  # a GGUF file holds the tokenizer and the config in its metadata, next to its weights
    folder, _, name = relative.rpartition("/")
    return folder in ("", CHAT_TEMPLATE_DIR) and name.endswith(TOKENIZER_FILE_SUFFIXES)


def _download_tokenizer_files(fs: AbstractFileSystem, path: str, *, gguf_file: str | None, into: Path) -> Path:
    """The tokenizer and config files under an s3 prefix, copied once into ``into``."""
    if into.exists():
        return into
    root = str(fs._strip_protocol(path)).rstrip("/")
    wanted = [
        (found, relative)
        for found in fs.find(root)
        if (relative := found[len(root) :].lstrip("/")) and is_tokenizer_file(relative, gguf_file=gguf_file)
    ]
    if not wanted:
        raise ConfigError(f"model.source: no tokenizer or config files under s3://{path}")
    staging = into.with_name(f".tmp-{into.name}")
    shutil.rmtree(staging, ignore_errors=True)
    for found, relative in wanted:
        (staging / relative).parent.mkdir(parents=True, exist_ok=True)
        fs.get_file(found, str(staging / relative))
    staging.rename(into)
    return into


# Hub answers that retrying cannot change (wrong name or revision, no access, file absent); anything
# else from the Hub (timeouts, 5xx, rate limits) stays an ordinary error: the Job retries the pod.
_PERMANENT_HUB_ERRORS = (
    "RepositoryNotFoundError",
    "RevisionNotFoundError",
    "GatedRepoError",
    "EntryNotFoundError",
    "RemoteEntryNotFoundError",
    "DisabledRepoError",
    "HFValidationError",
)


def is_permanent_load_error(err: BaseException, *, source: ModelSource) -> bool:
    """True when loading failed for a reason a retry cannot fix: always for local files (the
    directory is there but unusable), for the Hub only on the errors above (anywhere in the chain)."""
    if Path(source.name_or_path).is_dir():
        return True
    seen: BaseException | None = err
    while seen is not None:
        if type(seen).__name__ in _PERMANENT_HUB_ERRORS or isinstance(seen, ValueError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def load_tokenizer(source: ModelSource) -> Any:
    """The tokenizer from the same source; pad falls back to EOS (masks go by position, not token id)."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(source.name_or_path, **source.pretrained_kwargs())
    except (OSError, ValueError) as err:
        if not is_permanent_load_error(err, source=source):
            raise
        raise ConfigError(f"model.source: cannot load a tokenizer from {source.uri}: {err}") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def count_base_parameters(source: ModelSource) -> int:
    """The base model's parameter count from its config alone: the model is built on the meta device
    (shapes, no memory) and no weight is read. Tied weights count once, as ``model.parameters()`` does."""
    from transformers import AutoConfig, AutoModelForCausalLM

    kwargs = source.pretrained_kwargs()
    try:
        config = AutoConfig.from_pretrained(source.name_or_path, **kwargs)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(  # type: ignore[no-untyped-call]
                config, trust_remote_code=source.trust_remote_code
            )
    except (OSError, ValueError) as err:
        if not is_permanent_load_error(err, source=source):
            raise
        raise ConfigError(f"model.source: cannot build a causal LM from the config of {source.uri}: {err}") from None
    return sum(param.numel() for param in model.parameters())


def weight_dtype(spec: ModelSpec, *, precision: Precision) -> torch.dtype:
    """``model.dtype`` auto follows the resolved precision (bf16 on capable GPUs, fp32 on the CPU)."""
    if spec.dtype == "auto":
        return PRECISION_DTYPES[precision]
    return DTYPES[spec.dtype]


def load_model(
    source: ModelSource,
    *,
    dtype: torch.dtype,
    device: torch.device,
    quantization: QuantizationSpec | None,
    compute_dtype: torch.dtype,
    cache_dir: Path,
) -> Any:
    """The base causal LM on ``device``: plain, or 4-bit (``quantization`` set, QLoRA)."""
    from transformers import AutoModelForCausalLM

    kwargs = source.pretrained_kwargs()
    if quantization is not None:
        from transformers import BitsAndBytesConfig

        if source.gguf_file is not None:
            # bitsandbytes cannot quantize while transformers dequantizes GGUF: write a plain copy first.
            source = _plain_copy(source, dtype=dtype, cache_dir=cache_dir)
            kwargs = source.pretrained_kwargs()
        kwargs["quantization_config"] = BitsAndBytesConfig(  # type: ignore[no-untyped-call]
            load_in_4bit=True,
            bnb_4bit_quant_type=quantization.quant_type,
            bnb_4bit_use_double_quant=quantization.double_quant,
            bnb_4bit_compute_dtype=compute_dtype,
            bnb_4bit_quant_storage=dtype,
        )
        kwargs["device_map"] = {"": device}
    try:
        model: Any = AutoModelForCausalLM.from_pretrained(source.name_or_path, dtype=dtype, **kwargs)
    except (OSError, ValueError) as err:
        if not is_permanent_load_error(err, source=source):
            raise
        raise ConfigError(f"model.source: cannot load a causal LM from {source.uri}: {err}") from None
    if source.gguf_file is not None:
        model = rebuild_plain(model)
    if quantization is None:
        model.to(device)
    model.config.use_cache = False
    return model


def rebuild_plain(model: Any) -> Any:
    """The same weights in a fresh model that is not flagged as quantized (no copy: tensors are reused)."""
    from transformers import AutoModelForCausalLM

    config_dict = model.config.to_dict()
    config_dict.pop("quantization_config", None)
    config = type(model.config).from_dict(config_dict)
    with torch.device("meta"):
        plain = AutoModelForCausalLM.from_config(config, dtype=model.dtype)  # type: ignore[no-untyped-call]
    plain.load_state_dict(model.state_dict(), assign=True, strict=True)
    # Non-persistent buffers (rotary frequencies) are not in the state dict: take them over as well.
    originals = dict(model.named_buffers())
    for name, buffer in list(plain.named_buffers()):
        if buffer.is_meta:
            owner, _, attr = name.rpartition(".")
            plain.get_submodule(owner).register_buffer(attr, originals[name], persistent=False)
    plain.tie_weights()
    plain.generation_config = model.generation_config
    return plain


def _plain_copy(source: ModelSource, *, dtype: torch.dtype, cache_dir: Path) -> ModelSource:
    """Write the GGUF model as plain safetensors once (cached by file name) and point at that copy."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert source.gguf_file is not None
    target = cache_dir / "plain" / source.gguf_file.removesuffix(".gguf")
    if not (target / "config.json").is_file():
        log.info("writing a plain safetensors copy of %s for 4-bit quantization", source.gguf_file)
        kwargs = source.pretrained_kwargs()
        model = rebuild_plain(AutoModelForCausalLM.from_pretrained(source.name_or_path, dtype=dtype, **kwargs))
        tmp = target.with_name(f".tmp-{target.name}")
        model.save_pretrained(tmp)
        AutoTokenizer.from_pretrained(source.name_or_path, **kwargs).save_pretrained(tmp)
        tmp.rename(target)
    return ModelSource(
        name_or_path=str(target),
        revision=None,
        gguf_file=None,
        trust_remote_code=source.trust_remote_code,
        uri=source.uri,
    )


def apply_method(model: Any, *, method: MethodSpec, gradient_checkpointing: bool) -> Any:
    """Wrap the base model for the method: a PEFT LoRA/DoRA model, or the model itself for full."""
    if method.type == "full":
        model.requires_grad_(True)
        if gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        return model
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if method.type == "qlora":
        model = prepare_model_for_kbit_training(  # type: ignore[no-untyped-call]
            model,
            use_gradient_checkpointing=gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    elif gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    targets: str | list[str] = "all-linear" if method.target_modules == ["all-linear"] else method.target_modules
    config = LoraConfig(
        r=method.rank,
        lora_alpha=method.alpha,
        lora_dropout=method.dropout,
        target_modules=targets,
        use_dora=method.type == "dora",
        task_type="CAUSAL_LM",
    )
    try:
        return get_peft_model(model, config)
    except ValueError as err:
        raise ConfigError(f"method.targetModules: {err}") from None


def trainable_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The weights the optimizer updates (adapters, or every weight for full fine-tuning)."""
    return {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; 4-bit weights count as their unpacked size."""
    trainable = total = 0
    for param in model.parameters():
        n = param.numel()
        if param.__class__.__name__ == "Params4bit":
            n *= 2
        total += n
        if param.requires_grad:
            trainable += n
    return trainable, total


def build_merged_model(source: ModelSource, *, adapter_dir: Path, dtype: torch.dtype) -> Any:
    """Base model (16-bit, never quantized) with the saved adapter merged in, on the CPU."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(source.name_or_path, dtype=dtype, **source.pretrained_kwargs())
    if source.gguf_file is not None:
        base = rebuild_plain(base)
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    merged.config.use_cache = True
    return merged
