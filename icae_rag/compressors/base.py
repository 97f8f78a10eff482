"""The compressor interface, its registry, and the checkpoint format shared by every compressor."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import logging
import os
import warnings
from collections.abc import Iterator, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from .. import decoding
from ..errors import (
    BackboneMismatchError,
    CheckpointError,
    ConfigError,
    InvalidInputError,
)
from ..io import read_json, read_tensors, write_json, write_tensors
from ..memories.base import Memory
from ..memories.soft_prompt import Piece, SoftPrompt, text_sha256
from ..models.backbones import DecoderBackbone, weights_fingerprint
from ..plugins import (  # noqa: F401  (the registry lives in icae_rag.plugins, which imports no torch)
    _REGISTRY,
    compressor_kinds,
    get_compressor_class,
    register_compressor,
    unregister_compressor,
)
from ..text import check_text, check_texts_and_leads

logger = logging.getLogger(__name__)

CONFIG_NAME = "compressor_config.json"
WEIGHTS_NAME = "compressor_model.safetensors"
# What `encode` returns per text: soft rows (n, d) and (token_start, token_end, n_rows) per piece.
Encoded = tuple[torch.Tensor, list[tuple[int, int, int]]]
# The keyword options `Compressor.build` takes.
BUILD_OPTIONS = ("device", "dtype")


def compressor_config_from_dict(config_cls: type, data: dict[str, Any], *, strict: bool) -> Any:
    """Build a config dataclass; unknown keys raise (strict) or are dropped with a warning."""
    names = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(data) - names)
    if unknown and strict:
        raise ConfigError(f"unknown {config_cls.__name__} keys {unknown}: valid keys are {sorted(names)}")
    if unknown:
        warnings.warn(
            f"ignoring {config_cls.__name__} keys {unknown} written by a newer icae-rag; "
            "upgrade icae-rag to use them", stacklevel=3)
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k in names}
    return config_cls(**values)


class Compressor(nn.Module):
    """Turns text into a `Memory` for one decoder, and answers from memories.

    Subclasses set `config_class` (their config dataclass) and `kind` (the registry sets both on
    registration), implement `encode` (or `compress_many`), and may override `build` (a kind with
    more backbones than the decoder), `reading()` (the context in which the decoder reads) and
    `mode_embedding`.
    """

    kind: ClassVar[str] = ""
    # The config dataclass `build` takes (its `decoder` field names the decoder to load).
    config_class: ClassVar[type]
    # True for a baseline whose memory is the text's own token embeddings (a soft prompt of ratio 1):
    # callers hand it the text, it is what compressed modes are measured against, and its memories
    # depend only on the backbone.
    reads_text: ClassVar[bool] = False
    # True when `icae-rag train` can train the kind (it has tensors in `trainable_state_dict`).
    trainable: ClassVar[bool] = False
    # True when `compress_many` reads `leads`: the text before each passage in its document, which
    # the memory is encoded after (so it is computed in context, as raw text in a long prompt is).
    uses_leads: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # 0.1's `decoding()` is `reading()` since 0.2: an override under the old name would be ignored.
        if "decoding" in vars(cls):
            raise TypeError(f"{cls.__name__} defines decoding(), which icae-rag 0.2 renamed to reading(): "
                            "rename the method")

    def __init__(self, config: Any, decoder: DecoderBackbone) -> None:
        super().__init__()
        self.config = config
        self.decoder = decoder
        self.trained = False
        self.training_info: dict[str, Any] = {}

    @classmethod
    def build(cls, config: Any, *, device: str = "auto", dtype: str = "auto", **unknown: Any) -> Compressor:
        """A compressor of this class on the backbones `config` names (untrained): the decoder
        `config.decoder`, loaded on `device` in `dtype`. Any other option raises ConfigError."""
        from ..models.backbones import load_decoder

        cls.check_build(config, unknown)
        return cls(config, load_decoder(config.decoder, device=device, dtype=dtype))

    @classmethod
    def check_build(cls, config: Any, unknown: dict[str, Any]) -> None:
        """Raise ConfigError for options `build` does not take, or a config of another class."""
        if unknown:
            raise ConfigError(f"{cls.__name__}.build got unknown options {sorted(unknown)}: "
                              f"the valid ones are {list(BUILD_OPTIONS)}")
        expected = getattr(cls, "config_class", None)
        if expected is not None and not isinstance(config, expected):
            raise ConfigError(f"{cls.__name__}.build needs a {expected.__name__}, got {type(config).__name__}")

    # --- compression -------------------------------------------------------------------------
    def compress(self, text: str, *, progress: bool = False) -> Memory:
        """Compress one text (any length) into one memory."""
        return self.compress_many([text], progress=progress)[0]

    def check_inputs(self, texts: Sequence[str],
                     leads: Sequence[str | None] | None) -> tuple[list[str], list[str | None]]:
        """The checked texts of a `compress_many` call and one lead (or None) per text; leads are
        refused unless this kind `uses_leads`."""
        texts = check_texts_and_leads(texts, leads)
        if leads is not None and any(leads) and not self.uses_leads:
            raise InvalidInputError(f"the {self.kind!r} compressor encodes each text on its own and cannot use leads; "
                                    f"pass leads only to kinds with uses_leads (kvzip)")
        return texts, [None] * len(texts) if leads is None else list(leads)

    @torch.no_grad()
    def compress_many(self, texts: Sequence[str], *, batch_size: int = 8, progress: bool = False,
                      leads: Sequence[str | None] | None = None) -> list[Memory]:
        """Compress several texts, batching their spans/chunks; one memory per text (here a
        `SoftPrompt` built from `encode`; kinds that keep another memory override this)."""
        texts, _ = self.check_inputs(texts, leads)
        encoded = self.encode(texts, batch_size=batch_size, progress=progress)
        version, backbone, out = self.version, self.backbone_id, []
        for text, (rows, spans) in zip(texts, encoded, strict=True):
            sha, pieces, offset = text_sha256(text), [], 0
            for start, end, n in spans:
                pieces.append(Piece(sha, start, end, offset, offset + n))
                offset += n
            out.append(SoftPrompt(rows, tuple(pieces), self.kind, version, backbone))
        return out

    def encode(self, texts: Sequence[str], *, batch_size: int = 8, progress: bool = False) -> list[Encoded]:
        """Differentiable core of compression: per text, soft rows (n, d) and (token_start, token_end, rows) per piece."""
        raise NotImplementedError

    def tokenize(self, text: str) -> list[int]:
        """Decoder token ids of a text (no special tokens), after validating it."""
        check_text(text)
        return self.decoder.tokenizer(text, add_special_tokens=False)["input_ids"]

    # --- decoding ----------------------------------------------------------------------------
    def reading(self):
        """Context manager in which the decoder reads memories (ICAE disables its LoRA)."""
        return nullcontext()

    def prefix_row(self) -> Any | None:
        """The prompt prefix that KV memories follow, already run, or None (only kvzip keeps it)."""
        return None

    def budget_contexts(self, contexts: Sequence[Any], question: str | None = None) -> list[Any]:
        """The contexts as this compressor reads them, for `question` if one is asked (kvzip may prune
        the memories read together to one budget)."""
        return list(contexts)

    def read_entries(self, contexts: Sequence[Any]) -> int | None:
        """How many entries of the KV memories among `contexts` a question's answer reads, or None to
        read them as given (only kvzip's read budget cuts them)."""
        return None

    def mode_embedding(self, mode: str) -> torch.Tensor:
        """Learned embedding that marks a mode ("autoencode", "continue", "answer"); may be empty."""
        return self.decoder.embed_ids(torch.zeros(0, dtype=torch.long))

    def answer(self, question: str, contexts: Sequence[Memory | str], **generation: Any):
        """Answer one question from memories and/or raw text pieces (see `icae_rag.decoding`)."""
        return decoding.answer(self, question, contexts, **generation)

    def answer_many(self, questions: Sequence[str], contexts: Sequence[Sequence[Memory | str]], **generation: Any):
        """Answer several questions in one batch, each from its own contexts."""
        return decoding.answer_many(self, questions, contexts, **generation)

    def stream(self, question: str, contexts: Sequence[Memory | str], **generation: Any) -> Iterator[str]:
        """Yield the answer's text as it is generated."""
        return decoding.stream(self, question, contexts, **generation)

    def stream_many(self, questions: Sequence[str], contexts: Sequence[Sequence[Memory | str]],
                    **generation: Any) -> Iterator[tuple[int, str]]:
        """Answer several questions in one batch, yielding (question index, text piece) as generated."""
        return decoding.stream_many(self, questions, contexts, **generation)

    def reconstruct(self, memory: Memory | None = None, **generation: Any) -> str:
        """Decode what a memory holds back to text (autoencoding / restate mode)."""
        if "soft_prompt" in generation:  # 0.1's keyword: it may be a KV memory
            warnings.warn("reconstruct(soft_prompt=...) is deprecated, pass reconstruct(memory=...) "
                          "(removed in 0.3)", DeprecationWarning, stacklevel=2)
            if memory is not None:
                raise TypeError("reconstruct got both memory= and soft_prompt=: pass memory= only")
            memory = generation.pop("soft_prompt")
        if memory is None:
            raise TypeError("reconstruct needs the memory to decode")
        return decoding.reconstruct(self, memory, **generation)

    # --- identity ----------------------------------------------------------------------------
    @property
    def backbone_id(self) -> str:
        """"decoder-name@fingerprint": what memories and checkpoints are tied to."""
        return f"{self.decoder.name}@{self.decoder.fingerprint}"

    @property
    def label(self) -> str:
        """Short name of this compressor in reports and benchmark tables (the kind by default)."""
        return self.kind

    @property
    def version(self) -> str:
        """Identifies the trained weights; memories of another version are not interchangeable."""
        return f"{self.kind}-{weights_fingerprint(_TensorBag(self.trainable_state_dict()))}"

    def check_memory(self, memory: Memory) -> None:
        """Raise if a memory was not made for this backbone (a soft prompt: not by this compressor)."""
        if memory.backbone != self.backbone_id:
            raise BackboneMismatchError(
                f"memory was made for backbone {memory.backbone}, this compressor uses "
                f"{self.backbone_id}: re-compress the text with this compressor")
        if memory.readable_by_any_compressor:
            return
        if (memory.compressor, memory.compressor_version) != (self.kind, self.version) \
                and not _reads_text(memory.compressor):
            raise BackboneMismatchError(
                f"memory was made by {memory.compressor}/{memory.compressor_version}, this is "
                f"{self.kind}/{self.version}: re-compress the text with this compressor")

    # --- checkpoints -------------------------------------------------------------------------
    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """The tensors a checkpoint stores (adapters, memory/mode embeddings), keyed stably."""
        return {}

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Load tensors written by `trainable_state_dict`; missing or extra keys raise."""
        if state:
            raise CheckpointError(f"{self.kind} compressor has no trainable tensors, got {sorted(state)[:5]}")

    def backbones_info(self) -> dict[str, dict[str, str]]:
        """Names + fingerprints of every backbone the checkpoint depends on."""
        return {"decoder": {"name": self.decoder.name, "fingerprint": self.decoder.fingerprint}}

    def save_pretrained(self, path: str | os.PathLike) -> Path:
        """Write `compressor_config.json` + `compressor_model.safetensors` into a directory."""
        path = Path(path)
        if path.is_file():
            raise InvalidInputError(f"{path} is a file; save_pretrained needs a directory path")
        path.mkdir(parents=True, exist_ok=True)
        state = self.trainable_state_dict()
        if state:
            write_tensors(path / WEIGHTS_NAME, state, {"format": "pt"})
        write_json(path / CONFIG_NAME, {
            "compressor_type": self.kind,
            "config": dataclasses.asdict(self.config),
            "backbones": self.backbones_info(),
            "trained": self.trained,
            "training": self.training_info,
            "versions": package_versions(),
        })
        return path


def _reads_text(kind: str) -> bool:
    """Whether `kind` is a text-reading baseline (its memories any compressor may read); loads
    the kind if it is declared but not used yet."""
    try:
        return get_compressor_class(kind)[1].reads_text
    except InvalidInputError:  # an unknown kind, or a plugin that does not load
        return False


class _TensorBag(nn.Module):
    """Lets weights_fingerprint hash a plain dict of tensors."""

    def __init__(self, tensors: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self._tensors = tensors

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:  # type: ignore[override]
        return self._tensors


def package_versions() -> dict[str, str]:
    """Versions of icae_rag and the libraries a checkpoint's numbers depend on."""
    from .. import __version__

    out = {"icae_rag": __version__, "torch": torch.__version__}
    for dist in ("transformers", "peft", "sentence-transformers"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Read a checkpoint directory's JSON config and tensors, with typed errors."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint {path} is not a directory: pass a directory written by save_pretrained")
    if not (path / CONFIG_NAME).is_file():
        raise CheckpointError(f"{path} has no {CONFIG_NAME}: it is not an icae_rag checkpoint")
    meta = read_json(path / CONFIG_NAME)
    for key in ("compressor_type", "config", "backbones"):
        if key not in meta:
            raise CheckpointError(f"{path / CONFIG_NAME} lacks {key!r}: the checkpoint is incomplete")
    state = read_tensors(path / WEIGHTS_NAME)[0] if (path / WEIGHTS_NAME).is_file() else {}
    return meta, state


def check_backbone(expected: dict[str, str], loaded_name: str, loaded_fingerprint: str, role: str, where: str) -> None:
    """Refuse a checkpoint whose backbone differs from the one loaded."""
    if expected["fingerprint"] != loaded_fingerprint:
        raise BackboneMismatchError(
            f"{where} was made for {role} {expected['name']!r} (weights {expected['fingerprint']}), "
            f"but the loaded {role} is {loaded_name!r} (weights {loaded_fingerprint}): load the "
            f"checkpoint with {role}={expected['name']!r}, or train one for your {role}")
