#!/usr/bin/env bash
# make demo's `arc solve`, the code at git revision REV (its src/ extracted to a temporary folder) and the
# working tree, one after the other, each with its own defaults; wall time and the summary of each.
#     bash bench/demo_ab.sh 5c28eb8
set -euo pipefail
cd "$(dirname "$0")/.."
REV=${1:?usage: bench/demo_ab.sh REV}
TASKS=66e6c45b,00576224,be03b35f,4cd1b7b2,ca8de6ea
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
git archive "$REV" src | tar -x -C "$TMP"
for version in old new; do
    src=$([ "$version" = old ] && echo "$TMP/src" || echo "$PWD/src")
    start=$(date +%s.%N)
    PYTHONPATH="$src" .venv/bin/python -c "from testtime.cli import app; app()" arc solve arc-agi-1/evaluation \
        --tasks "$TASKS" --ttt-sequences 24 --ttt-epochs 2 --ttt-max-len 1024 --out "$TMP/run-$version" \
        > "$TMP/$version.log" 2>&1
    end=$(date +%s.%N)
    echo "$version ($([ "$version" = old ] && echo "$REV" || echo "working tree")): wall $(python3 -c "print(f'{$end - $start:.1f}')") s"
    grep -E "score \(either|pass@1|TTT seconds|inference seconds|training tokens|truth bits / cell|mean rank" "$TMP/$version.log"
done
