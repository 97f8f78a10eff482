"""`icae-rag bench`: one suite for fidelity, QA quality and efficiency, with a report and plots.

Everything that can be checked without a model (suite name, limit, data paths and schema,
checkpoints and their backbones) is checked first; then models load once and each suite runs.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..compressors import shipped_kinds
from ..data.readers import load_text
from ..data.registry import DEFAULT_BENCH_LIMIT, dataset_names, get_dataset
from ..errors import BackboneMismatchError, CheckpointError, InvalidInputError, MissingFileError
from .record import environment, write_report

logger = logging.getLogger(__name__)
SUITES = ("fidelity", "qa", "efficiency", "all")
# Per suite when run by `all`: sized to finish in under 30 minutes on 2 CPU cores (fp32); the QA
# data sets carry their own size (`Dataset.bench_limit`).
SIZES = {"fidelity_limit": 4, "lengths": [512, 2048, 8192]}


@dataclass
class BenchOptions:
    """What to run; `compressors` are kinds or checkpoint directories (default: the shipped kinds)."""

    suite: str
    out: str = "bench-out"
    compressors: list[str] = field(default_factory=shipped_kinds)
    data: str | None = None
    data_root: str | None = None
    limit: int | None = None
    seed: int = 0
    device: str = "auto"
    datasets: list[str] = field(default_factory=lambda: dataset_names(use="bench-qa-default"))
    spans: list[int] = field(default_factory=lambda: [128, 512])
    lengths: list[int] = field(default_factory=lambda: list(SIZES["lengths"]))
    top_k: int = 5
    passage_tokens: int = 512
    max_new_tokens: int = 24  # extractive answers are short; the anchors in docs/experiments.md use 24
    no_repeat_ngram_size: int | None = None  # None: the generation default (loop stop on); 0: off
    batch_size: int = 8
    longllmlingua: bool = True


def _checkpoint_decoder(spec: str) -> str:
    """The decoder a compressor spec will load, read from JSON only (no model)."""
    from ..compressors import compressor_kinds, parse_spec, shipped_checkpoint
    from ..compressors.base import get_compressor_class, read_checkpoint

    parsed = parse_spec(spec)
    if parsed is not None and shipped_checkpoint(parsed[0]) is None:
        return parsed[1].get("decoder", get_compressor_class(parsed[0])[0]().decoder)
    if spec in compressor_kinds():
        shipped = shipped_checkpoint(spec)
        if shipped is None:
            return get_compressor_class(spec)[0]().decoder  # what new_compressor(spec) loads
        spec = str(shipped)
    path = Path(spec)
    if not path.exists():
        raise CheckpointError(f"compressor {spec!r} is neither a kind ({compressor_kinds()}) nor a checkpoint directory")
    meta, _ = read_checkpoint(path)
    return meta["backbones"]["decoder"]["name"]


def validate(opts: BenchOptions) -> dict[str, Any]:
    """Check the options and load the data; raise before any model loads."""
    from .fidelity import load_fidelity_texts
    from .qa import load_items

    if opts.suite not in SUITES:
        raise InvalidInputError(f"unknown suite {opts.suite!r}: choose one of {SUITES}")
    if opts.no_repeat_ngram_size is not None and opts.no_repeat_ngram_size < 0:
        raise InvalidInputError(f"--no-repeat-ngram must be >= 0 (0 turns the loop stop off), got {opts.no_repeat_ngram_size}")
    if opts.limit is not None and opts.limit <= 0:
        raise InvalidInputError(f"--limit must be a positive number of examples, got {opts.limit}")
    if opts.data is not None and not Path(opts.data).exists():
        raise MissingFileError(f"--data {opts.data} does not exist")
    for name in opts.datasets:
        if name not in dataset_names(use="bench-qa"):
            raise InvalidInputError(f"unknown QA dataset {name!r}: choose from {dataset_names(use='bench-qa')}")
    decoders = {spec: _checkpoint_decoder(spec) for spec in opts.compressors}
    if len(set(decoders.values())) > 1:
        raise BackboneMismatchError(f"the compressors use different decoders {decoders}: compare compressors of one decoder")
    root = Path(opts.data_root) if opts.data_root else None
    run = {"fidelity": opts.suite in ("fidelity", "all"), "qa": opts.suite in ("qa", "all"),
           "efficiency": opts.suite in ("efficiency", "all")}
    data: dict[str, Any] = {"decoder": next(iter(decoders.values()), None)}
    if run["fidelity"]:
        data["fidelity_texts"] = load_fidelity_texts(opts.data if opts.suite == "fidelity" else None, root)
    if run["qa"]:
        names = ["custom"] if (opts.data and opts.suite == "qa") else opts.datasets
        data["qa"] = {}
        for name in names:
            limit = opts.limit or (DEFAULT_BENCH_LIMIT if name == "custom" else get_dataset(name).bench_limit)
            data["qa"][name] = load_items(name, opts.data if name == "custom" else None, limit, opts.seed, root)
    if run["efficiency"]:
        data["efficiency_text"] = "\n".join(load_text("wikitext2-test", root=root))
    data["run"] = run
    return data


def run_bench(opts: BenchOptions) -> dict[str, Any]:
    """Validate, load models, run the suites, write results.json, results.md and PNG plots."""
    import torch

    from ..compressors import load_compressor, new_compressor
    from ..models.backbones import load_encoder
    from .efficiency import efficiency_markdown, run_efficiency
    from .fidelity import fidelity_markdown, run_fidelity
    from .plots import plot_latency_vs_length, plot_quality_vs_ratio
    from .qa import per_question, qa_markdown, retrieve, run_qa

    data = validate(opts)
    torch.manual_seed(opts.seed)
    out = Path(opts.out)
    started = time.perf_counter()
    compressors = [load_compressor(spec, device=opts.device) for spec in opts.compressors]
    raw = new_compressor("raw", device=opts.device, decoder=data["decoder"])
    results: dict[str, Any] = {"suite": opts.suite, "options": asdict(opts), "environment": environment(opts.seed),
                               "compressors": [{"spec": s, "kind": c.kind, "version": c.version, "trained": c.trained}
                                               for s, c in zip(opts.compressors, compressors, strict=True)]}
    md = [f"# icae-rag bench: {opts.suite}", "", f"commit `{results['environment']['git_commit']}`, "
          f"{results['environment']['hardware']['processor']} ({results['environment']['hardware']['cpu_count']} cores), "
          f"torch {results['environment']['versions']['torch']}, seed {opts.seed}", ""]
    untrained = [c.kind for c in compressors if not c.trained]
    if untrained:
        md += [f"> Untrained compressors in this run: {untrained}. Their numbers measure noise.", ""]

    if data["run"]["fidelity"]:
        limit = opts.limit or SIZES["fidelity_limit"]
        results["fidelity"] = run_fidelity(compressors, data["fidelity_texts"], opts.spans, limit, opts.seed)
        results["fidelity"]["split"] = "WikiText-2 test (never a training source)" if not opts.data else opts.data
        md += ["## Fidelity (reconstruction)", "", results["fidelity"]["split"], "",
               fidelity_markdown(results["fidelity"])]

    if data["run"]["qa"]:
        lingua = _longllmlingua(opts, data["decoder"], str(raw.decoder.device))
        encoder = None
        results["qa"] = {}
        md += ["## QA", ""]
        for name, (items, record) in data["qa"].items():
            if name in dataset_names(records="longqa"):
                encoder = encoder or load_encoder(device=str(raw.decoder.device))
                retrieve(items, encoder, raw.decoder.tokenizer, opts.passage_tokens, opts.top_k)
                record |= {"retrieval": f"FAISS IndexFlatIP, MiniLM normalised, top {opts.top_k} of "
                                        f"{opts.passage_tokens}-token passages"}
            modes, readers = _qa_modes(items, compressors, raw, lingua)
            answered = run_qa(items, modes, readers, max_new_tokens=opts.max_new_tokens, batch_size=opts.batch_size,
                              seed=opts.seed, no_repeat_ngram_size=opts.no_repeat_ngram_size)
            results["qa"][name] = {"record": record, "questions": per_question(items, answered), "results": answered}
            if lingua is None:
                results["qa"][name]["longllmlingua"] = "not run: " + _lingua_reason(opts)
            md += [qa_markdown(name, record, results["qa"][name]["results"]), ""]

    if data["run"]["efficiency"]:
        modes = {"raw": raw} | {c.label: c for c in compressors}
        results["efficiency"] = run_efficiency(modes, data["efficiency_text"], opts.lengths, new_tokens=16)
        md += ["## Efficiency", "", f"Question: {results['efficiency']['question']!r}, 16 new tokens; text: "
               "WikiText-2 test.", "", efficiency_markdown(results["efficiency"])]

    plots = []
    if "qa" in results or "fidelity" in results:
        plots.append(plot_quality_vs_ratio(results.get("qa"), results.get("fidelity"), out / "quality_vs_ratio.png"))
    if "efficiency" in results:
        plots.append(plot_latency_vs_length(results["efficiency"], out / "latency_vs_length.png"))
    md += [f"![{p.stem}]({p.name})" for p in plots]
    results["plots"] = [p.name for p in plots]
    results["seconds"] = time.perf_counter() - started
    write_report(out, results, "\n".join(md) + "\n")
    return results


def _qa_modes(items, compressors, raw, lingua):
    """Contexts per mode: raw passages, none, each compressor's memories, LongLLMLingua text
    at the budget (decoder positions) the first compressor used for the same item."""
    modes = {"raw": lambda it: list(it.passages), "none": lambda it: []}
    readers = {"raw": raw, "none": raw}
    budget: dict[str, int] = {}
    for i, comp in enumerate(compressors):
        def make(it, comp=comp, first=(i == 0)):
            prompts = comp.compress_many(it.passages)
            if first:
                budget[it.id] = sum(p.num_positions for p in prompts)
            return prompts
        modes[comp.label] = make
        readers[comp.label] = comp
    if lingua is not None and compressors:
        def compress_text(it):
            text, _ = lingua.compress(list(it.passages), it.question, max(1, budget[it.id]))
            return [text] if text.strip() else []
        modes["longllmlingua"] = compress_text
        readers["longllmlingua"] = raw
    return modes, readers


def _lingua_reason(opts: BenchOptions) -> str:
    return "disabled by --no-longllmlingua" if not opts.longllmlingua else "llmlingua is not installed (pip install llmlingua)"


def _longllmlingua(opts: BenchOptions, decoder: str, device: str):
    """The LongLLMLingua baseline scored by the same local decoder, or None if unavailable."""
    if not opts.longllmlingua:
        return None
    try:
        from ..models.backbones import decoder_source
        from .longllmlingua import LongLLMLinguaBaseline

        return LongLLMLinguaBaseline(decoder_source(decoder)[0], device=device)
    except ImportError as e:
        logger.warning("LongLLMLingua baseline skipped: %s", e)
        return None
