"""`icae-rag` command line: ask, compress, reconstruct, train, bench, info (every command has --json)."""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

from . import DEFAULT_KIND, __version__
from .data.retrieval import DEFAULT_BUDGET
from .errors import IcaeRagError, InvalidInputError, UsageError
from .plugins import BUILTIN_COMPRESSORS, compressor_kinds
from .text import check_file, check_text, read_document

# This module imports no torch or transformers at import time: every check of the command line and
# of the input files runs before a model (or torch) loads, so bad input is refused in well under a second.


def _quiet_transformers() -> None:
    # Say what matters once, plainly: no Hugging Face progress bars or advisory warnings.
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


# Third-party libraries whose advisory warnings (deprecations, future defaults) a command hides.
_QUIET_MODULES = r"(torch|transformers|peft|accelerate|sentence_transformers|huggingface_hub|tqdm|llmlingua)(\.|$)"


def _quiet_warnings() -> None:
    # Only these: icae-rag's own warnings (e.g. "ignoring ... keys written by a newer icae-rag") still
    # reach stderr. "Untrained" is said once, plainly, by `main` instead of as a Python warning.
    warnings.filterwarnings("ignore", module=_QUIET_MODULES)
    warnings.filterwarnings("ignore", message=r".*(is marked untrained|compressor is untrained)", category=UserWarning)


def _load(args: argparse.Namespace, kind: str | None = None):
    from .compressors import load_compressor

    _quiet_transformers()
    return load_compressor(args.checkpoint or kind or args.compressor, device=args.device, dtype=args.dtype)


def _positive(flag: str, value: int) -> None:
    if value <= 0:
        raise InvalidInputError(f"{flag} must be positive, got {value}")


def cmd_ask(args: argparse.Namespace) -> dict[str, Any]:
    """Answer a question from context files: whole if they fit the budget, else from retrieved passages."""
    from .data.retrieval import decoder_window, select_context

    question = check_text(args.question, what="question")
    texts = [read_document(p) for p in args.context]
    _positive("--max-new-tokens", args.max_new_tokens)
    _positive("--budget", args.budget)
    # Progress bars go to stderr: shown with --json too when a person is watching the terminal.
    progress = not args.json or sys.stderr.isatty()
    t0 = time.perf_counter()
    compressor = _load(args)
    t1 = time.perf_counter()

    def encoder():
        from .models.backbones import load_encoder

        return load_encoder(args.encoder, device=args.device)

    chosen, passages = select_context(texts, question, compressor.decoder.tokenizer, budget=args.budget,
                                      window=decoder_window(compressor), max_new_tokens=args.max_new_tokens,
                                      whole=args.whole, names=args.context, encoder_loader=encoder,
                                      progress=progress)
    t2 = time.perf_counter()
    contexts = chosen if compressor.reads_text else compressor.compress_many(chosen, progress=progress)
    t3 = time.perf_counter()
    ans = compressor.answer(question, contexts, max_new_tokens=args.max_new_tokens)
    # What the answer read of each memory (kvzip's read budget chooses it at the question's prefill;
    # the contexts as given otherwise): the same choice again, to show it.
    t4 = time.perf_counter()
    read = compressor.budget_contexts(contexts, question=question)
    from .compressors.kvzip import memory_budget
    from .memories.kv_memory import KvMemory

    budgets = [None if isinstance(c, str) else memory_budget(c) for c in contexts]
    reads = [r.compression_ratio if isinstance(r, KvMemory) else None for r in read]
    return {
        "answer": ans.text,
        "compressor": compressor.kind,
        "trained": compressor.trained,
        "retrieved": any(p.score is not None for p in passages),
        "chunks": [{"file": args.context[p.doc], "start": p.start, "end": p.end, "tokens": p.tokens,
                    "score": p.score} | ({} if b is None else {"ratio": b["ratio"], "fidelity": b["fidelity"]})
                   | ({} if r is None else {"read_ratio": round(r, 3)})
                   for p, b, r in zip(passages, budgets, reads, strict=True)],
        "input_tokens": ans.source_tokens,
        "context_positions": ans.context_positions,
        "soft_tokens": ans.context_positions,  # 0.1 name, emitted beside the new one until 0.3
        "decoder_positions": ans.input_positions,
        "compression_ratio": round(ans.compression_ratio, 3),
        "new_tokens": ans.new_tokens,
        "load_seconds": round(t1 - t0, 3),
        "retrieve_seconds": round(t2 - t1, 3),
        "compress_seconds": round(t3 - t2, 3),
        "answer_seconds": round(t4 - t3, 3),
        "seconds": round(t4 - t1, 3),
    }


def cmd_compress(args: argparse.Namespace) -> dict[str, Any]:
    """Compress a text file into a memory file (safetensors)."""
    text = read_document(args.file)
    compressor = _load(args)
    memory = compressor.compress(text, progress=not args.json)
    memory.save(args.output)
    from .compressors.kvzip import memory_budget

    budget = memory_budget(memory)
    return {"output": str(args.output), "compressor": compressor.kind, "context_positions": memory.num_positions,
            "soft_tokens": memory.num_positions,  # 0.1 name, until 0.3
            "input_tokens": memory.source_tokens, "compression_ratio": round(memory.compression_ratio, 3),
            "fidelity": budget["fidelity"], "fidelity_target": budget["fidelity_target"],
            "pieces": len(memory.pieces)}


def cmd_reconstruct(args: argparse.Namespace) -> dict[str, Any]:
    """Decode a saved memory (soft prompt or KV memory) back to text with the compressor that made it."""
    check_file(args.file)
    from .memories.base import Memory

    memory = Memory.load(args.file)
    compressor = _load(args, kind=memory.compressor)
    return {"text": compressor.reconstruct(memory), "compressor": memory.compressor,
            "context_positions": memory.num_positions,
            "soft_tokens": memory.num_positions,  # 0.1 name, until 0.3
            "input_tokens": memory.source_tokens}


def cmd_info(args: argparse.Namespace) -> dict[str, Any]:
    """Versions, default model paths, cache dir, device, shipped checkpoints."""
    from .compressors import SHIPPED, shipped_checkpoint
    from .compressors.base import package_versions
    from .models.backbones import cache_dir, default_decoder_gguf, default_encoder_dir
    from .models.runtime import resolve_device

    def path_or_error(fn) -> str:
        try:
            return str(fn())
        except IcaeRagError as e:
            return f"missing: {e}"

    return {
        "versions": package_versions() | {"python": platform.python_version()},
        "default_decoder_gguf": path_or_error(default_decoder_gguf),
        "default_encoder_dir": path_or_error(default_encoder_dir),
        "cache_dir": str(cache_dir()),
        "device": str(resolve_device("auto")),
        "shipped_checkpoints": {k: str(shipped_checkpoint(k) or "none yet") for k in SHIPPED},
    }


def cmd_train(args: argparse.Namespace) -> dict[str, Any]:
    """Train (or resume) a compressor from a YAML config."""
    from .training.config import load_config
    from .training.trainer import train

    _quiet_transformers()
    overrides: dict[str, Any] = {}
    for item in args.set or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise InvalidInputError(f"--set takes key=value, got {item!r}")
        import yaml

        overrides[key] = yaml.safe_load(value)
    cfg = load_config(args.config, overrides)
    if (cfg.compressor, cfg.stage) != (args.kind, args.stage):
        raise InvalidInputError(f"{args.config} trains {cfg.compressor}/{cfg.stage}, but the command asked for "
                                f"{args.kind}/{args.stage}: use the matching config")
    path = train(cfg, resume=args.resume, max_minutes=args.max_minutes, progress=not args.json)
    return {"checkpoint": str(path), "finished": path.name == "final", "output_dir": cfg.output_dir}


def cmd_bench(args: argparse.Namespace) -> dict[str, Any]:
    """Run a benchmark suite and write results.json, results.md and plots into --out."""
    from .eval.bench import BenchOptions, run_bench

    _quiet_transformers()
    opts = BenchOptions(suite=args.suite, out=args.out, data=args.data, limit=args.limit, seed=args.seed,
                        device=args.device, longllmlingua=not args.no_longllmlingua,
                        no_repeat_ngram_size=args.no_repeat_ngram)
    if args.compressor:
        opts.compressors = list(args.compressor)
    if args.checkpoint:
        opts.compressors = list(args.checkpoint)
    if args.dataset:
        opts.datasets = list(args.dataset)
    if args.lengths:
        opts.lengths = [int(x) for x in args.lengths.split(",")]
    result = run_bench(opts)
    return {"out": args.out, "report": str(Path(args.out) / "results.md"), "plots": result["plots"],
            "seconds": round(result["seconds"], 1)}


def cmd_index(args: argparse.Namespace) -> dict[str, Any]:
    """Compress documents into a memory store (skipping what it holds), in this process or on Ray workers."""
    from .indexing import index, read_documents

    _quiet_transformers()
    texts = read_documents(args.docs, chunk_tokens=args.chunk_tokens, compressor_spec=args.compressor)
    workers = args.workers or (2 if args.engine == "ray" else 1)
    options: dict[str, Any] = {"concurrency": workers, "batch_size": args.batch_size, "device": args.device,
                               "progress": not args.json}
    if args.engine == "ray":
        options |= {"num_cpus": args.cpus_per_worker, "num_gpus": args.gpus_per_worker}
    report = index(texts, args.compressor, args.store, engine=args.engine, **options)
    return {"store": args.store, "engine": report.engine, "workers": report.workers, "nodes": report.texts,
            "written": report.written, "already_stored": report.texts - report.written,
            "seconds": round(report.seconds, 3), "nodes_per_second": round(report.nodes_per_second, 3)}


def _print_human(result: dict[str, Any]) -> None:
    for key in ("answer", "text"):
        if key in result:
            print(result.pop(key))
    for key, value in result.items():
        print(f"{key}: {json.dumps(value) if isinstance(value, (dict, list)) else value}")


# The built-in kinds; tests/test_cli_input.py still imports this name (the CLI reads `compressor_kinds`).
BUILTIN_KINDS = tuple(BUILTIN_COMPRESSORS)


class _RegisteredKinds:
    """argparse choices: the compressor kinds with these traits, listed only when argparse checks a
    value or prints help. Without traits only the names are read (registered kinds and the names of
    the `icae_rag.compressors` entry points), so `--help` and `ask --compressor raw` do not import
    torch; a trait loads every kind to read it. Arguments using it set `metavar`: without one
    argparse lists the choices while the parser is built."""

    def __init__(self, **traits: bool) -> None:
        self._traits = traits

    def _names(self) -> list[str]:
        return compressor_kinds(**self._traits)

    def __contains__(self, kind: object) -> bool:
        # "kvzip:ratio=8" names a kind with config values (see load_compressor).
        return isinstance(kind, str) and kind.partition(":")[0] in self._names()

    def __iter__(self) -> Iterator[str]:
        return iter(self._names())


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are UsageError, so `main` reports them like any other error
    (as JSON with --json)."""

    def error(self, message: str) -> NoReturn:
        """Raise UsageError carrying this (sub)command's usage line."""
        raise UsageError(f"{message} (see `{self.prog} --help`)", usage=self.format_usage())


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `icae-rag`."""
    from .data.registry import dataset_names

    parser = _Parser(prog="icae-rag", description="Answer from compressed context.")
    parser.add_argument("--version", action="version", version=f"icae-rag {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser, compressor: bool = True) -> None:
        p.add_argument("--json", action="store_true", help="print one JSON object")
        if compressor:
            p.add_argument("--compressor", default=DEFAULT_KIND, choices=_RegisteredKinds(), metavar="KIND",
                           help="%(choices)s, or KIND:key=value,... for a kind without a shipped "
                                "checkpoint, e.g. kvzip:ratio=8 (default %(default)s)")
            p.add_argument("--checkpoint", help="checkpoint directory (default: the shipped one)")
            p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
            p.add_argument("--dtype", default="auto", help="auto, fp32, bf16 or fp16")

    ask = sub.add_parser("ask", help="answer a question from context files")
    ask.add_argument("--context", required=True, action="append", help="UTF-8 text file (repeatable)")
    ask.add_argument("--max-new-tokens", type=int, default=64)
    ask.add_argument("--budget", type=int, default=DEFAULT_BUDGET,
                     help="context tokens read: longer files are chunked and the passages nearest the question "
                          "kept up to this many tokens (default %(default)s)")
    ask.add_argument("--whole", action="store_true",
                     help="read every file whole; refused if they do not fit the decoder's positions")
    ask.add_argument("--encoder", default="all-minilm-l6-v2", help="sentence encoder that ranks passages")
    ask.add_argument("question")
    common(ask)
    ask.set_defaults(func=cmd_ask)

    comp = sub.add_parser("compress", help="compress a text file into a memory file")
    comp.add_argument("file")
    comp.add_argument("-o", "--output", required=True, help="output .safetensors path")
    common(comp)
    comp.set_defaults(func=cmd_compress)

    rec = sub.add_parser("reconstruct", help="decode a memory file back to text")
    rec.add_argument("file")
    common(rec)
    rec.set_defaults(func=cmd_reconstruct)

    tr = sub.add_parser("train", help="train a compressor from a YAML config (resumable)")
    tr.add_argument("kind", choices=_RegisteredKinds(trainable=True), metavar="KIND", help="%(choices)s")
    tr.add_argument("--stage", required=True, choices=["pretrain", "finetune"])
    tr.add_argument("--config", required=True, help="YAML training config (see icae_rag/configs/)")
    tr.add_argument("--resume", help="output directory of an interrupted run")
    tr.add_argument("--max-minutes", type=float, help="checkpoint and stop after this many minutes")
    tr.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key (repeatable)")
    common(tr, compressor=False)
    tr.set_defaults(func=cmd_train)

    bench = sub.add_parser("bench", help="benchmark fidelity, QA quality and efficiency")
    bench.add_argument("suite", choices=["fidelity", "qa", "efficiency", "all"])
    bench.add_argument("--compressor", action="append", choices=_RegisteredKinds(reads_text=False), metavar="KIND",
                       help="%(choices)s (repeatable; default: the kinds that ship a trained checkpoint)")
    bench.add_argument("--checkpoint", action="append", help="checkpoint directory (repeatable; replaces --compressor)")
    bench.add_argument("--data", help="fidelity: a .txt or {text} JSONL file; qa: a {context,question,answer} JSONL")
    bench.add_argument("--dataset", action="append", choices=dataset_names(use="bench-qa"),
                       help="qa datasets (repeatable; default: " + ", ".join(dataset_names(use="bench-qa-default")) + ")")
    bench.add_argument("--limit", type=int, help="examples per dataset (default: sized for 30 minutes on 2 cores)")
    bench.add_argument("--lengths", help="efficiency context lengths, comma separated (default 512..8192)")
    bench.add_argument("--out", default="bench-out")
    bench.add_argument("--seed", type=int, default=0)
    bench.add_argument("--device", default="auto")
    bench.add_argument("--no-longllmlingua", action="store_true", help="skip the LongLLMLingua baseline")
    bench.add_argument("--no-repeat-ngram", type=int, metavar="N",
                       help="QA answers: forbid repeating any N generated tokens (default: generation's 4; 0: off)")
    common(bench, compressor=False)
    bench.set_defaults(func=cmd_bench)

    idx = sub.add_parser("index", help="compress documents into a memory store (local or Ray workers)")
    idx.add_argument("docs", nargs="+", metavar="DOCS", help="UTF-8 text files")
    idx.add_argument("--store", required=True, help="SqliteMemoryStore directory, .lance path, lance://... or s3://.../x.lance")
    idx.add_argument("--compressor", default=DEFAULT_KIND,
                     help="kind, kind:key=value,... or checkpoint dir (default %(default)s)")
    idx.add_argument("--engine", default="local", choices=["local", "ray"])
    idx.add_argument("--workers", type=int, help="Ray actors (default 2; local: 1)")
    idx.add_argument("--cpus-per-worker", type=float, default=1.0, help="CPUs Ray reserves per actor (default 1)")
    idx.add_argument("--gpus-per-worker", type=float, default=0.0, help="GPUs Ray reserves per actor (default 0)")
    idx.add_argument("--chunk-tokens", type=int, default=0, help="sentence-packed nodes of at most N tokens (0: one per file)")
    idx.add_argument("--batch-size", type=int, default=16, help="nodes per worker call and per store commit")
    idx.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    common(idx, compressor=False)
    idx.set_defaults(func=cmd_index)

    info = sub.add_parser("info", help="versions, model paths, cache dir, device")
    common(info, compressor=False)
    info.set_defaults(func=cmd_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `icae-rag` console script."""
    argv = sys.argv[1:] if argv is None else list(argv)
    # Known before parsing, so a malformed command line is reported as JSON too.
    as_json = "--json" in argv
    try:
        args = build_parser().parse_args(argv)
        with warnings.catch_warnings():
            _quiet_warnings()
            result = args.func(args)
    except IcaeRagError as e:
        if as_json:
            print(json.dumps({"error": str(e), "type": type(e).__name__}))
        else:
            print(f"{getattr(e, 'usage', '')}icae-rag: error: {e}", file=sys.stderr)
        return 2
    if result.get("trained") is False:
        print(f"icae-rag: warning: the {result['compressor']} compressor is untrained; its memories carry "
              "no usable information", file=sys.stderr)
    if args.json:
        print(json.dumps(result, ensure_ascii=False))
    else:
        _print_human(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
