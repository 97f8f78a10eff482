"""Run from the project root. An rsync-like fact and two own-text variants: the new memory among the old distractors (and vice versa)."""
import json
import sys

import icae_rag.compressors.kvzip.scoring as ks
from icae_rag import load_compressor

sys.path.insert(0, "docs/results/kvzip-company-check/planted")
from paragraphs import P  # noqa: E402

V = {
 "rsync": P[1][1],
 "ferry0": ("The --timeout option sets the maximum I/O timeout in seconds. If no data moves for that long, "
            "ferrysync exits. The default is 0, which means no timeout. The --contimeout option sets how long "
            "ferrysync waits for its connection to a daemon to succeed."),
 "ferry75": ("The --timeout option sets the maximum I/O timeout in seconds. If no data moves for that long, "
             "ferrysync exits. The default is 75. The --contimeout option sets how long "
             "ferrysync waits for its connection to a daemon to succeed."),
}
Q = {"rsync": ("What is the default value of rsync's --timeout option?", "0"),
     "ferry0": ("What is the default value of ferrysync's --timeout option?", "0"),
     "ferry75": ("What is the default value of ferrysync's --timeout option?", "75")}
others = [P[j][1] for j in (0, 2, 3, 4, 5)]
new = load_compressor("kvzip")
raw = load_compressor("raw")
def mems(texts, probes):
    saved = ks._probes
    if not probes:
        ks._probes = lambda ids, s: []
    try:
        return new.compress_many(texts)
    finally:
        ks._probes = saved
old_o, new_o = mems(others, False), mems(others, True)
for name, text in V.items():
    q, gold = Q[name]
    r = raw.answer(q, others + [text], max_new_tokens=24).text
    (op,), (np_,) = mems([text], False), mems([text], True)
    row = {"v": name, "raw_company": gold in r, "old_ratio": op.metadata["kvzip_ratio"], "new_ratio": np_.metadata["kvzip_ratio"]}
    for label, p, o in (("old/old", op, old_o), ("new/new", np_, new_o), ("new/old", np_, old_o), ("old/new", op, new_o)):
        a = new.answer(q, o + [p], max_new_tokens=24).text
        row[label] = [gold in new.answer(q, [p], max_new_tokens=24).text, gold in a, a[:50]]
    print(json.dumps(row), flush=True)
