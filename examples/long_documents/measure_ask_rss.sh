#!/usr/bin/env bash
# Peak resident memory of `icae-rag ask` on a 5 MB and a 50 MB text, for every compressor kind.
#
#   examples/long_documents/measure_ask_rss.sh [OUT_DIR]           # the real models (idle machine)
#   TINY=1 examples/long_documents/measure_ask_rss.sh [OUT_DIR]    # tiny random models: the pipeline's own memory
#   KINDS="raw kvzip" examples/long_documents/measure_ask_rss.sh [OUT_DIR]   # some kinds only
#   PYTHON=/path/to/python ...                                     # the interpreter that runs icae_rag
#
# Writes OUT_DIR/rss.tsv (kind, size, exit code, peak RSS MB, wall seconds, load average before the run)
# and prints it; OUT_DIR/machine.txt gets the date, CPU, memory and load at the start and end (the
# load column says whether the machine was shared). The texts are made by repeating a man page (tar's
# if installed, else this repository's README) up to the size.
set -euo pipefail
OUT=${1:-ask-rss-out}
PY=${PYTHON:-python}
mkdir -p "$OUT"
machine() {
  echo "$1: $(date -u +%Y-%m-%dT%H:%M:%SZ); $(nproc) CPUs ($(lscpu 2>/dev/null | sed -n 's/^Model name: *//p'));" \
    "$(free -g | awk '/^Mem:/ {print $2 " GB RAM"}'); load average $(cut -d' ' -f1-3 /proc/loadavg)"
}
machine start >>"$OUT/machine.txt"
src="$OUT/source.txt"
if man tar >/dev/null 2>&1; then MANWIDTH=80 man tar 2>/dev/null | col -b >"$src"; else cat "$(dirname "$0")/../../README.md" >"$src"; fi
for mb in 5 50; do
  f="$OUT/doc-${mb}mb.txt"
  [ -s "$f" ] || "$PY" - "$src" "$f" "$mb" <<'PYEOF'
import sys
src, dst, mb = sys.argv[1], sys.argv[2], int(sys.argv[3])
text = open(src, encoding="utf-8").read()
with open(dst + ".tmp", "w", encoding="utf-8") as f:
    written = 0
    while written < mb * 1_000_000:
        f.write(text)
        written += len(text.encode("utf-8"))
import os
os.replace(dst + ".tmp", dst)
PYEOF
done
if [ -n "${TINY:-}" ]; then
  kinds=("raw:decoder=tiny-llama" "kvzip:decoder=tiny-llama")
  extra=(--encoder tiny-bert --device cpu)
else
  kinds=(raw kvzip icae e2llm)
  extra=()
fi
if [ -n "${KINDS:-}" ]; then read -r -a kinds <<<"$KINDS"; fi
# Appended to, so kinds measured one at a time end in one table.
[ -s "$OUT/rss.tsv" ] || printf "kind\tsize\texit\tpeak_rss_mb\tseconds\tload_before\n" >"$OUT/rss.tsv"
for kind in "${kinds[@]}"; do
  for mb in 5 50; do
    for whole in "" "--whole"; do
      log="$OUT/time-${kind%%:*}-${mb}mb${whole}.log"
      load=$(cut -d' ' -f1 /proc/loadavg)
      set +e
      /usr/bin/time -v "$PY" -m icae_rag.cli ask --json --compressor "$kind" "${extra[@]}" $whole \
        --context "$OUT/doc-${mb}mb.txt" "How do I extract a single file from an archive?" \
        >"$OUT/answer-${kind%%:*}-${mb}mb${whole}.json" 2>"$log"
      code=$?
      set -e
      rss=$(awk -F': ' '/Maximum resident set size/ {printf "%.0f", $2 / 1024}' "$log")
      secs=$(awk -F': ' '/Elapsed \(wall clock\)/ {n = split($2, t, ":"); s = 0; for (i = 1; i <= n; i++) s = s * 60 + t[i]; printf "%.1f", s}' "$log")
      printf "%s\t%s MB%s\t%s\t%s\t%s\t%s\n" "$kind" "$mb" "${whole:+ (whole)}" "$code" "$rss" "$secs" "$load" >>"$OUT/rss.tsv"
    done
  done
done
machine end >>"$OUT/machine.txt"
cat "$OUT/machine.txt"
column -t -s $'\t' "$OUT/rss.tsv"
