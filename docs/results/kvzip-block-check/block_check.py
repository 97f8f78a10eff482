"""Experiment: kvzip's adaptive check graded by its worst block, not its mean.

The library's check passes a budget when the pruned memory's next-token distributions over the
repeated window overlap the full memory's by `fidelity` on average over the window. Here the
window's positions are cut into blocks of BLOCK tokens (at least one) and the check uses the lowest
block mean: every part of a passage must keep the fidelity, so a fact lost in one part of a long
window is not averaged away by the rest. Imported for its side effect (patches the library before
a compressor is built), then runs what is named on the command line:

    python block_check.py ratios OUT.json            # chosen ratios, mean vs block check (calibration data)
    python block_check.py rag ARGS...                 # benchmarks.llamaindex_rag with the block check
    python block_check.py qa ARGS...                  # icae-rag bench qa ARGS with the block check
"""

import sys

import torch

from icae_rag.compressors.kvzip import check, compressor, reports

BLOCK = 64


def mean_overlap(reference: torch.Tensor, got: torch.Tensor) -> float:
    """The check before this experiment: the mean over the window's positions."""
    return float(torch.minimum(reference, got).sum(-1).mean())


def block_overlap(reference: torch.Tensor, got: torch.Tensor) -> float:
    """The lowest mean overlap over blocks of about BLOCK consecutive positions."""
    per_position = torch.minimum(reference, got).sum(-1)
    blocks = torch.tensor_split(per_position, max(1, len(per_position) // BLOCK))
    return float(min(b.mean() for b in blocks))


def use_block_check() -> None:
    """Patch the library: the block statistic, and a check name that gives memories their own version."""
    check._overlap = block_overlap
    compressor.CHECK = reports.CHECK = f"repeat-overlap-2-block{BLOCK}"


def use_mean_check() -> None:
    """Undo `use_block_check`."""
    check._overlap = mean_overlap
    compressor.CHECK = reports.CHECK = "repeat-overlap-2"


if __name__ == "__main__":
    what, rest = sys.argv[1], sys.argv[2:]
    if what == "rag":
        use_block_check()
        from benchmarks.llamaindex_rag import main

        sys.exit(main(rest))
    if what == "qa":
        use_block_check()
        from icae_rag.cli import main

        sys.exit(main(["bench", "qa", *rest]))
    if what == "ratios":
        from ratios import run

        run(rest[0])
