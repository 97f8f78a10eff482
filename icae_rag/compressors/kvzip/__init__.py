"""kvzip: keep the decoder's own keys and values that it needs to repeat the passage (no training).

KVzip (arXiv 2505.23416; this project's measurements and choices in docs/kvzip.md):
1. Prefill the answer prompt's prefix, then the passage; keep the passage's cache entries.
2. Teacher-forced reconstruction: continue with the repeat request and the passage's own tokens.
3. Score each passage entry (layer, KV head, position) by the largest attention it receives from a
   repeat query, over the query heads that share that KV head.
4. Keep the top `keep` share of all the passage's entries together (one budget over every layer
   and head: some heads keep most of the passage, others almost nothing).

5. Adaptive budget (`fidelity`): instead of one fixed share, each window keeps the smallest share
   of a ladder (1/16 ... 1/1.5, then everything) whose memory passes a self-check: read in the
   repeat prompt after what the scoring pass read before the window (nothing, for a passage
   encoded apart; its lead otherwise, kept whole), the pruned memory must lead the decoder to the
   same next-token distributions over the window as the full memory does: overlap (sum over the
   vocabulary of min(p_full, p_pruned), 1.0 = identical) averaged over every block of about
   CHECK_BLOCK_TOKENS consecutive tokens, the lowest block mean at least `fidelity`. The
   check reads the decoder's own distributions, so the budget follows the decoder as well as the
   text. The full memory's distributions come from the scoring pass itself; each ladder step tried
   costs one forward over the window (at most two are tried, see `check._search`).
6. Look-up probes the repeat did not choose: the repeat is teacher-forced through the whole passage,
   so after a few tokens it is easy, and a memory can pass it while losing an exact token a question
   asks for (a number, a flag, a name). So the check also cues the decoder, in the same repeat
   prompt, with the PROBE_CUE tokens before each of the window's PROBES most surprising tokens
   (surprisal under the decoder reading the text itself, from the scoring pass's prefill) and
   compares the next PROBE_SPAN tokens' distributions from the candidate and from the full memory.
   A memory passes when the repeat's worst block and the probes' mean overlap both reach
   `fidelity`. The probes cost two short forwards per window (the full memory's, once, and the
   candidate's per ladder step).

7. The read budget (the default, `read_ratio`): every entry is stored with its score, and the
   memories a question reads together keep 1/DEFAULT_READ_RATIO of their passages' entries, two
   thirds of them chosen by the question's attention with every stored entry in view, the rest by
   the stored scores
   (`icae_rag.decoding.selection`, `KvzipCompressor.budget_contexts`).

The prefix is never evicted (it is recomputed at answer time and holds the attention sinks).
Passages longer than `window_tokens` are scored window by window. Each window after the first reads
the last `lead_tokens` entries of the passage before it as the passage computed them (carried from
the previous window's cache, not computed again), the first window follows up to `lead_tokens` of
the caller's `leads` (e.g. the document text before a RAG node); each window is given its own
budget. Each passage token is computed once, and peak memory depends on the window, not on the
passage: the cache of prefix + lead + 2 x window tokens plus one layer's attention weights (query
heads x (window + repeat request) x window tokens, float32).

Modules: `config` (KvzipConfig and the constants the version names), `compressor` (KvzipCompressor:
windows, leads, batching, the prefix cache), `scoring` (the scoring passes and the kept entries),
`check` (the adaptive budget's self-check and ladder search), `reports` (budget metadata and
summaries).
"""

from .compressor import KvzipCompressor
from .config import (
    CHECK,
    CHECK_BLOCK_TOKENS,
    DEFAULT_FIDELITY,
    DEFAULT_READ_RATIO,
    LADDER,
    PROBE_CUE,
    PROBE_SPAN,
    PROBES,
    START_RATIO,
    WINDOWS,
    KvzipConfig,
)
from .reports import budget_summary, memory_budget

__all__ = ["CHECK", "CHECK_BLOCK_TOKENS", "DEFAULT_FIDELITY", "DEFAULT_READ_RATIO", "LADDER", "PROBES", "PROBE_CUE", "PROBE_SPAN",
           "START_RATIO", "WINDOWS", "KvzipCompressor", "KvzipConfig", "budget_summary", "memory_budget"]
