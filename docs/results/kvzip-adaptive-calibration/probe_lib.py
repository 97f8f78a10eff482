"""Experiment helpers: teacher-forced target log-probs from answer prompts with KV memories."""

import re
from dataclasses import replace

import torch

import icae_rag.decoding.prefill as G  # was icae_rag.generation (removed in 0.2)
from icae_rag.decoding import build_prompt
from icae_rag.kv_attention import KvView
from icae_rag.kv_memory import KvMemory


@torch.no_grad()
def target_logprobs(comp, contexts_list, questions, targets, mode="answer"):
    """Per row: (n_t, V) log-softmax of the next-token distribution at each target token."""
    dec = comp.decoder
    prompts = [
        build_prompt(comp, ctx, question=q, mode=mode)
        if mode == "answer"
        else build_prompt(comp, ctx, mode=mode)
        for ctx, q in zip(contexts_list, questions, strict=False)
    ]
    prompts = [
        replace(
            p,
            segments=[
                *p.segments[:-1],
                torch.cat(
                    [
                        p.segments[-1],
                        dec.embed_ids(torch.tensor(t[:-1], dtype=torch.long)).to(
                            p.segments[-1].dtype
                        ),
                    ]
                )
                if len(t) > 1
                else p.segments[-1],
            ],
        )
        for p, t in zip(prompts, targets, strict=False)
    ]
    # replicate _prefill (memory path) keeping all text positions' hidden states
    prefix = prompts[0].segments[0]
    shared = G._extend(dec, G._RowCache.empty(), prefix)[1]
    rows, texts = [], []
    for p in prompts:
        row = shared
        text, text_positions = [], []
        for seg in p.segments[1:]:
            if isinstance(seg, KvMemory):
                row = G._extend(dec, row, seg)[1]
            else:
                text.append(seg)
                text_positions.append(torch.arange(row.position, row.position + seg.shape[0]))
                row = replace(row, position=row.position + seg.shape[0])
        rows.append(row)
        texts.append((torch.cat(text), torch.cat(text_positions)))
    lengths = [t.shape[0] for t, _ in texts]
    t = max(lengths)
    x = texts[0][0].new_zeros(len(rows), t, texts[0][0].shape[-1])
    qpos = torch.zeros(len(rows), t, dtype=torch.long)
    real = torch.zeros(len(rows), t, dtype=torch.bool)
    for i, (emb, pos) in enumerate(texts):
        n = emb.shape[0]
        x[i, :n], qpos[i, :n], real[i, :n] = emb, pos, True
        qpos[i, n:] = pos[-1]
    cache, _, valid, columns = G._stack_rows(dec, rows)
    heads = valid[0].shape[1]
    view = KvView(
        valid=[torch.cat([v, real[:, None].expand(-1, heads, -1)], dim=2) for v in valid],
        positions=[torch.cat([p, qpos[:, None].expand(-1, heads, -1)], dim=2) for p in columns],
        query_positions=qpos,
    )
    out = dec.model.model(
        inputs_embeds=x, position_ids=qpos, past_key_values=cache, use_cache=False, kv_view=view
    )
    h = out.last_hidden_state
    res = []
    for i, (n, tg) in enumerate(zip(lengths, targets, strict=False)):
        hs = h[i, n - len(tg) : n]
        res.append(torch.log_softmax(dec.model.lm_head(hs).float(), -1))
    return res


_SALIENT = re.compile(
    r"[A-Za-z_\-\.]*\d[\w\-\.,:/%]*|--?[A-Za-z][\w\-]*|[A-Z][\w\-]*[A-Z_\d][\w\-]*|\b[a-z]+_[\w]+|\b[A-Z][a-z]{2,}"
)


def cloze_spans(text, n, prev_words=8):
    """Up to n (prefix words, target text) pairs over salient words spread over the text."""
    cands = []
    for m in _SALIENT.finditer(text):
        s = m.start()
        before = text[:s].split()
        if len(before) < 3:
            continue
        # skip sentence-initial capitalised words
        if (
            m.group()[0].isupper()
            and not any(c.isdigit() for c in m.group())
            and text[:s].rstrip()[-1:] in ".!?\n"
        ):
            continue
        target = text[s:].split()[:3]
        cands.append((" ".join(before[-prev_words:]), " ".join(target)[:40]))
    if not cands:
        words = text.split()
        cands = [
            (" ".join(words[max(0, i - prev_words) : i]), " ".join(words[i : i + 3]))
            for i in range(3, len(words), 7)
        ]
    if len(cands) <= n:
        return cands
    step = len(cands) / n
    return [cands[int(i * step)] for i in range(n)]
