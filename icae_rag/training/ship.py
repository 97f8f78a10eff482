"""Ship a trained run as a package default: copy its `final/` checkpoint and write its model card.

Every figure in the card is read from JSON written by the run (`compressor_config.json`,
`run.json`) and by `icae-rag bench` (`results.json`), never typed by hand:

    python -m icae_rag.training.ship RUN_DIR icae-smollm2-135m --bench bench-out/results.json \
        --command "icae-rag train icae --stage finetune --config icae_rag/configs/icae-finetune.yaml"
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from ..compressors import SHIPPED_DIR
from ..compressors.base import CONFIG_NAME, WEIGHTS_NAME
from ..errors import CheckpointError, IcaeRagError
from ..io import read_json


def ship(run_dir: str | os.PathLike, name: str, *, bench: list[str | os.PathLike] = (), command: str = "",
         dest_root: str | os.PathLike = SHIPPED_DIR) -> Path:
    """Copy `run_dir/final` to `dest_root/name` (replacing it atomically) with a README.md model card."""
    run_dir = Path(run_dir)
    final = run_dir / "final"
    if not (final / CONFIG_NAME).is_file() or not (final / WEIGHTS_NAME).is_file():
        raise CheckpointError(f"{final} is not a finished run's checkpoint (no {CONFIG_NAME} / {WEIGHTS_NAME})")
    meta = read_json(final / CONFIG_NAME)
    results = [read_json(Path(p)) for p in bench]
    dest_root = Path(dest_root)
    dest_root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=dest_root))
    try:
        for f in (CONFIG_NAME, WEIGHTS_NAME):
            shutil.copy2(final / f, staging / f)
        (staging / "README.md").write_text(model_card(name, meta, results, command), encoding="utf-8")
        target = dest_root / name
        if target.exists():
            old = dest_root / f".{name}-old"
            shutil.rmtree(old, ignore_errors=True)
            target.rename(old)
            staging.rename(target)
            shutil.rmtree(old)
        else:
            staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def model_card(name: str, meta: dict[str, Any], results: list[dict[str, Any]], command: str) -> str:
    """Markdown: what the checkpoint is, its data and split, cost on this machine, measured numbers."""
    kind, train = meta["compressor_type"], meta.get("training") or {}
    cfg = train.get("config", {})
    dec = meta["backbones"]["decoder"]
    lines = [f"# {name}", "",
             f"A trained `{kind}` compressor for `{dec['name']}` (weights fingerprint `{dec['fingerprint'][:16]}`), "
             f"loaded by `icae_rag.load_compressor(\"{kind}\")`.", "",
             "## Configuration", "", "```json", _json(meta["config"]), "```", ""]
    for role, b in meta["backbones"].items():
        lines.append(f"- {role}: `{b['name']}` (fingerprint `{b['fingerprint'][:16]}`)")
    data = train.get("data", {})
    sources = ", ".join(f"{s['name']} ({s['train']} train / {s['val']} val samples"
                        + (f", {s['unanswerable']} of them unanswerable" if s.get("unanswerable") else "") + ")"
                        for s in data.get("sources", []))
    lines += ["", "## Training", "",
              f"- stage: {train.get('stage')}; steps: {train.get('steps')}; micro-batch {cfg.get('micro_batch')} x "
              f"grad-accum {cfg.get('grad_accum')}; lr {cfg.get('lr')} ({cfg.get('schedule')}, warm-up "
              f"{cfg.get('warmup_steps')}); precision {cfg.get('precision')}; seed {cfg.get('seed')}",
              f"- data: {sources}; split: {data.get('split')}; train ids sha256 `{data.get('train_ids_sha256')}`",
              f"- wall time: {train.get('wall_seconds', 0) / 60:.1f} min on {train.get('processes', 1)} process(es), "
              f"{train.get('tokens_per_second')} tokens/s, peak RSS {train.get('peak_rss_mb')} MB "
              f"({cfg.get('threads')} torch thread(s); see the bench environment below for the CPU)",
              f"- final validation loss: {_val(train)}",
              *([f"- after training: {train['inference_note']}"] if train.get("inference_note") else []),
              "", "Reproduce:", "", "```bash", command or f"icae-rag train {kind} --stage {train.get('stage')} --config ...",
              "```", ""]
    if train.get("previous"):
        prev = train["previous"]
        lines += [f"Started from an earlier `{prev.get('stage')}` run of {prev.get('steps')} steps "
                  f"({prev.get('wall_seconds', 0) / 60:.1f} min, {prev.get('tokens_per_second')} tokens/s; "
                  f"final validation loss {_val(prev)}).", ""]
    lines += ["## Measured", ""]
    if not results:
        lines += ["No benchmark has been run on this checkpoint yet.", ""]
    for res in results:
        lines += _bench_section(res, kind)
    return "\n".join(lines)


def _val(train: dict[str, Any]) -> str:
    if "val_loss" not in train:
        return "not recorded"
    out = f"{train['val_loss']:.3f}"
    if "val_loss_no_memory" in train:
        out += f" with the context, {train['val_loss_no_memory']:.3f} with the memory removed"
    return out


def _bench_section(res: dict[str, Any], kind: str) -> list[str]:
    env = res["environment"]
    hw = env["hardware"]
    opts = res.get("options", {})
    lines = [f"`icae-rag bench {res['suite']}` (limit {opts.get('limit')}, seed {opts.get('seed')}), commit "
             f"`{env['git_commit']}`, {hw['processor']} ({hw['cpu_count']} cores), torch {env['versions']['torch']}:", ""]
    for block in res.get("qa", {}).values():
        rec = block["record"]
        lines += [f"QA, {rec['split']}, n = {rec['n']}:", "",
                  "| mode | context positions | ratio | contained (95% CI) | F1 | EM |", "|---|---:|---:|---|---:|---:|"]
        for mode in ("raw", "none", kind, "longllmlingua"):
            if mode not in block["results"]:
                continue
            r = block["results"][mode]
            c = r.get("contained")
            cell = f"{c['mean']:.3f} ({c['ci95'][0]:.3f}-{c['ci95'][1]:.3f})" if c else "-"
            f1 = f"{r['f1']['mean']:.3f}" if "f1" in r else "-"
            em = f"{r['exact_match']['mean']:.3f}" if "exact_match" in r else "-"
            ratio = f"{r['compression_ratio']:.1f}x" if r.get("compression_ratio") else "-"
            lines.append(f"| {mode} | {r['mean_context_positions']:.0f} | {ratio} | {cell} | {f1} | {em} |")
        lines.append("")
    rows = [r for r in res.get("fidelity", {}).get("rows", []) if r["compressor"] == kind]
    if rows:
        lines += ["Reconstruction (WikiText-2 test):", "", "| span | ratio | BLEU-4 (95% CI) | token accuracy | n |",
                  "|---:|---:|---|---:|---:|"]
        for r in rows:
            b = r["bleu4"]
            lines.append(f"| {r['span_tokens']} | {r['compression_ratio']:.2f}x | {b['mean']:.3f} "
                         f"({b['ci95'][0]:.3f}-{b['ci95'][1]:.3f}) | {r['token_accuracy']['mean']:.3f} | {r['n']} |")
        lines.append("")
    return lines


def _json(obj: Any) -> str:
    import json

    return json.dumps(obj, indent=2, sort_keys=True)


def main(argv: list[str] | None = None) -> int:
    """Command line for `ship`."""
    p = argparse.ArgumentParser(prog="python -m icae_rag.training.ship", description=ship.__doc__)
    p.add_argument("run_dir")
    p.add_argument("name", help="directory name under icae_rag/checkpoints (see icae_rag.compressors.SHIPPED)")
    p.add_argument("--bench", action="append", default=[], help="an icae-rag bench results.json (repeatable)")
    p.add_argument("--command", default="", help="the exact command that trained the run")
    p.add_argument("--dest", default=str(SHIPPED_DIR))
    a = p.parse_args(argv)
    try:
        print(ship(a.run_dir, a.name, bench=a.bench, command=a.command, dest_root=a.dest))
    except IcaeRagError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
