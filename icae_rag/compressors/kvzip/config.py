"""kvzip's settings: `KvzipConfig` and the constants that name its budget check (they enter the version)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ...errors import ConfigError
from ...memories.kv_memory import STORAGE_DTYPES
from ...models.backbones import DEFAULT_DECODER

# Ratios an adaptive memory may take, smallest memory first; keeping everything (1.0) always passes.
LADDER = (16.0, 12.0, 8.0, 6.0, 5.0, 4.0, 3.0, 2.5, 2.0, 1.5)
# The first ratio the check tries (the ladder step at or below it).
START_RATIO = 4.0
# The overlap the adaptive check was chosen at: `kvzip:fidelity=0.96` (docs/kvzip.md: how).
DEFAULT_FIDELITY = 0.96
# The default stores every entry and a question reads 1/DEFAULT_READ_RATIO of the entries of the
# memories it reads together (docs/kvzip.md, "The read budget": how it was chosen).
DEFAULT_READ_RATIO = 2.5
# The check grades every block of about this many tokens of a window, not the window's mean: a fact
# lost in one part of a long window is not averaged away by the rest, so a fidelity asks the same of
# a 100-token paragraph and a 512-token node.
CHECK_BLOCK_TOKENS = 64
# Look-up probes per window: how many, the cue before each probed token, and the tokens compared.
PROBES, PROBE_CUE, PROBE_SPAN = 8, 12, 4
# Names the self-check's algorithm in the compressor version: another check keeps other entries.
CHECK = f"repeat-overlap-2-block{CHECK_BLOCK_TOKENS}+probes{PROBES}-cue{PROBE_CUE}-span{PROBE_SPAN}"
# Names how a long passage's windows see the text before them, in the compressor version: windows
# after the first read the previous window's last entries as the passage computed them.
WINDOWS = "carried-lead-1"


@dataclass(frozen=True)  # the compressor hashes it once into its version
class KvzipConfig:
    """How much of each passage's KV cache to store, how it is stored, and how much a question reads.

    By default every entry is stored with its score, and a question reads 1/DEFAULT_READ_RATIO of the
    entries of the memories it reads together, chosen with the question in view (`read_ratio`). Set
    `ratio` or `keep_fraction` to store one fixed share, or `fidelity` for a share per window chosen
    by a self-check (see the package doc); those memories are read as stored unless `read_ratio` is set.
    """

    decoder: str = DEFAULT_DECODER
    # Adaptive: the smallest memory whose next-token distributions over its passage overlap the full
    # memory's by at least this much (0 < fidelity <= 1; None: not adaptive).
    fidelity: float | None = None
    max_ratio: float = 16.0  # adaptive: never keep less than 1/max_ratio of a window's entries
    ratio: float | None = None  # fixed: keep 1/ratio of the passage's (layer, head, position) entries
    keep_fraction: float | None = None  # fixed, instead of ratio: the share kept (1.0 keeps everything)
    storage: str = "float16"  # "float16", "float32", "int8", "int4" or "int2"
    quant_group: int = 128  # int4 / int2: entries per key scale group (a power of two >= 8; see kv_quant)
    # A question keeps 1/read_ratio of the entries of the memories it reads together (counted against
    # their passages' tokens x layers x heads): most by its attention, reading every stored entry,
    # the rest by the stored scores. None: DEFAULT_READ_RATIO when every entry is stored by default
    # (no fidelity, ratio or keep_fraction), else the memories are read as stored.
    read_ratio: float | None = None
    window_tokens: int = 512
    lead_tokens: int = 256

    def __post_init__(self) -> None:
        for name in ("fidelity", "max_ratio", "ratio", "keep_fraction", "read_ratio", "window_tokens", "lead_tokens"):
            value = getattr(self, name)
            if value is None and name in ("fidelity", "ratio", "keep_fraction", "read_ratio"):
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ConfigError(f"kvzip {name} must be a number, got {value!r}")
        if self.ratio is not None and self.keep_fraction is not None:
            raise ConfigError("kvzip takes ratio or keep_fraction, not both (ratio=4 is keep_fraction=0.25)")
        if self.fidelity is not None and (self.ratio is not None or self.keep_fraction is not None):
            raise ConfigError("kvzip fidelity chooses each passage's ratio; it cannot be combined with a fixed "
                              "ratio or keep_fraction: pass one of them")
        if self.fidelity is not None and not 0 < self.fidelity <= 1:
            raise ConfigError(f"kvzip fidelity must be in (0, 1] (0.96: the memory keeps 96% of what the decoder "
                              f"draws from the full passage), got {self.fidelity}")
        if self.max_ratio < 1:
            raise ConfigError(f"kvzip max_ratio must be >= 1 (1 keeps everything), got {self.max_ratio}")
        if self.ratio is not None and self.ratio <= 1:
            raise ConfigError(f"kvzip ratio must be > 1 (4 keeps a quarter of the entries), got {self.ratio}; "
                              "to keep everything set keep_fraction=1.0")
        if self.keep_fraction is not None and not 0 < self.keep_fraction <= 1:
            raise ConfigError(f"kvzip keep_fraction must be in (0, 1], got {self.keep_fraction}")
        if self.read_ratio is not None and self.read_ratio < 1:
            raise ConfigError(f"kvzip read_ratio must be >= 1 (3 reads a third of the entries, 1 all), got {self.read_ratio}")
        if self.storage not in STORAGE_DTYPES:
            raise ConfigError(f"kvzip storage must be one of {sorted(STORAGE_DTYPES)}, got {self.storage!r}")
        if isinstance(self.quant_group, bool) or not isinstance(self.quant_group, int) or self.quant_group < 8 \
                or self.quant_group & (self.quant_group - 1):
            raise ConfigError(f"kvzip quant_group must be a power of two >= 8, got {self.quant_group!r}")
        if self.window_tokens < 16 or self.lead_tokens < 0:
            raise ConfigError("kvzip window_tokens must be >= 16 and lead_tokens >= 0")

    @property
    def adaptive(self) -> bool:
        """Whether each window's budget is chosen by the self-check (`fidelity` is set)."""
        return self.fidelity is not None

    @property
    def target_fidelity(self) -> float | None:
        """The overlap adaptive memories must keep (None otherwise)."""
        return self.fidelity

    @property
    def ladder(self) -> tuple[float, ...]:
        """Adaptive mode: the ratios that may be chosen, smallest memory first (else everything is kept)."""
        return tuple(r for r in LADDER if r <= self.max_ratio)

    @property
    def keep(self) -> float | None:
        """Share of each window's entries a memory stores (None when adaptive; 1.0 by default)."""
        if self.adaptive:
            return None
        if self.ratio is not None:
            return 1 / self.ratio
        return 1.0 if self.keep_fraction is None else self.keep_fraction

    @property
    def read_at(self) -> float | None:
        """The ratio a question reads its memories at together (None: as stored)."""
        if self.read_ratio is not None:
            return self.read_ratio
        whole_by_default = self.fidelity is None and self.ratio is None and self.keep_fraction is None
        return DEFAULT_READ_RATIO if whole_by_default else None

