"""Training run configuration: a dataclass loaded from YAML, validated before any model loads."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..compressors import compressor_kinds
from ..compressors.base import compressor_config_from_dict, get_compressor_class
from ..data.registry import dataset_names, get_dataset, load_dataset
from ..errors import ConfigError, MissingFileError


@dataclass
class DataSource:
    """One training data source: a data set registered for training (`dataset_names(use="train")`)."""

    name: str
    path: str | None = None  # for jsonl-text / jsonl-qa
    squad_version: str = "v2.0"  # squad-train: v2.0 adds unanswerable questions
    max_items: int | None = None  # cap documents/questions taken from this source
    # QA sources: share of unanswerable questions kept (by a seeded hash). SQuAD v2.0 is half
    # unanswerable; at small budgets that prior wins and a model replies "unanswerable" to everything.
    keep_unanswerable: float = 1.0

    def __post_init__(self) -> None:
        sources = dataset_names(use="train")
        if self.name not in sources:
            raise ConfigError(f"unknown data source {self.name!r}: use one of {sorted(sources)}")
        if "path" in get_dataset(self.name).params and not self.path:
            raise ConfigError(f"data source {self.name!r} needs a 'path' to a JSONL file")
        if self.squad_version not in ("v1.1", "v2.0"):
            raise ConfigError(f"squad_version must be 'v1.1' or 'v2.0', got {self.squad_version!r}")
        if not 0.0 <= self.keep_unanswerable <= 1.0:
            raise ConfigError(f"keep_unanswerable must be in [0, 1], got {self.keep_unanswerable}")

    @property
    def is_qa(self) -> bool:
        """True for question-answer sources (fine-tuning), False for plain text (pretraining)."""
        return get_dataset(self.name).records == "qa"

    def load(self, root: Path | None) -> list:
        """The source's documents or QA examples."""
        return load_dataset(self.name, root, **{p: getattr(self, p) for p in get_dataset(self.name).params})


@dataclass
class TrainConfig:
    """Everything a run needs; saved beside every checkpoint so a run can be reproduced."""

    compressor: str
    stage: str
    data: list[DataSource]
    compressor_config: dict[str, Any] = field(default_factory=dict)
    init_from: str | None = None  # checkpoint to start from (fine-tuning starts from pretraining)
    data_root: str | None = None  # default: $ICAE_RAG_DATA or ../shared/data
    output_dir: str = "runs/train"
    # objectives
    ae_lambda: float = 0.5  # pretraining: share of autoencoding vs continuation samples
    sample_tokens: int = 128  # pretraining: tokens compressed per sample
    continuation_tokens: int = 64
    max_answer_tokens: int = 48
    unanswerable_answer: str = "unanswerable"
    eval_fraction: float = 0.02  # held out from the training sources for validation loss
    # optimisation
    steps: int = 100
    micro_batch: int = 4
    grad_accum: int = 1
    lr: float = 5e-4
    weight_decay: float = 0.0
    warmup_steps: int = 10
    schedule: str = "cosine"  # cosine | linear | constant
    grad_clip: float = 1.0
    precision: str = "fp32"  # fp32 | bf16
    seed: int = 0
    threads: int | None = None  # torch CPU threads; None = torch's default
    # bookkeeping
    save_every: int = 50
    log_every: int = 1
    eval_every: int = 0  # 0 = only at the end
    eval_batches: int = 4

    def __post_init__(self) -> None:
        errors = []
        trainable = compressor_kinds(trainable=True)
        if self.compressor not in trainable:
            errors.append(f"compressor must be one of the trainable kinds {trainable}, got {self.compressor!r}")
        else:
            errors += _compressor_config_errors(self.compressor, self.compressor_config)
        if self.stage not in ("pretrain", "finetune"):
            errors.append(f"stage must be 'pretrain' or 'finetune', got {self.stage!r}")
        if self.schedule not in ("cosine", "linear", "constant"):
            errors.append(f"schedule must be cosine, linear or constant, got {self.schedule!r}")
        if self.precision not in ("fp32", "bf16"):
            errors.append(f"precision must be fp32 or bf16, got {self.precision!r}")
        if not 0.0 <= self.ae_lambda <= 1.0:
            errors.append(f"ae_lambda must be in [0, 1], got {self.ae_lambda}")
        if not 0.0 < self.eval_fraction < 0.5:
            errors.append(f"eval_fraction must be in (0, 0.5), got {self.eval_fraction}")
        for name in ("steps", "micro_batch", "grad_accum", "sample_tokens", "max_answer_tokens", "save_every", "log_every"):
            if getattr(self, name) <= 0:
                errors.append(f"{name} must be positive, got {getattr(self, name)}")
        if not self.data:
            errors.append("data is empty: list at least one source")
        wanted_qa = self.stage == "finetune"
        for src in self.data:
            if src.is_qa != wanted_qa:
                errors.append(f"data source {src.name!r} is {'QA' if src.is_qa else 'plain text'}, "
                              f"but stage {self.stage!r} needs {'QA' if wanted_qa else 'plain text'} sources")
        if errors:
            raise ConfigError("invalid training config:\n  - " + "\n  - ".join(errors))

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (for JSON next to checkpoints)."""
        return dataclasses.asdict(self)


def _compressor_config_errors(kind: str, values: Any) -> list[str]:
    """What is wrong with `compressor_config` for `kind`, checked by the kind's config dataclass."""
    if not isinstance(values, dict):
        return [f"compressor_config must be a mapping of {kind} config keys, got {type(values).__name__}"]
    try:
        compressor_config_from_dict(get_compressor_class(kind)[0], values, strict=True)
    except (ConfigError, TypeError) as e:
        return [f"compressor_config: {e}"]
    return []


def train_config_from_dict(raw: dict[str, Any], where: str = "config") -> TrainConfig:
    """Build a TrainConfig, reporting every unknown or missing key at once."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must be a mapping of keys to values, got {type(raw).__name__}")
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    required = {f.name for f in dataclasses.fields(TrainConfig)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
    errors = [f"unknown key {k!r}" for k in sorted(set(raw) - names)]
    errors += [f"missing key {k!r}" for k in sorted(required - set(raw))]
    sources = []
    source_keys = {f.name for f in dataclasses.fields(DataSource)}
    for i, src in enumerate(raw.get("data") or []):
        if not isinstance(src, dict):
            errors.append(f"data[{i}] must be a mapping with at least 'name'")
            continue
        bad = sorted(set(src) - source_keys)
        if bad:
            errors.append(f"data[{i}] has unknown keys {bad}: valid keys are {sorted(source_keys)}")
            continue
        try:
            sources.append(DataSource(**src))
        except (ConfigError, TypeError) as e:
            errors.append(f"data[{i}]: {e}")
    if errors:
        raise ConfigError(f"{where} is invalid (valid keys: {sorted(names)}):\n  - " + "\n  - ".join(errors))
    return TrainConfig(**(raw | {"data": sources}))


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Read a YAML training config, apply overrides, validate everything."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"training config {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {e}") from e
    return train_config_from_dict(raw | (overrides or {}), where=str(path))
