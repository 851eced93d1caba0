#!/usr/bin/env bash
# The one command sent to the GPU machine, once per call (dev/README.md, "GPU run"):
#   bash dev/gpu/gpu_session.sh 1    carry [".gpu/call1"]: probe, install, stash part 1, CUDA smoke -> GO/STOP
#   bash dev/gpu/gpu_session.sh 2    carry [".gpu/call2"], at once after GO: model, parity, pretrain, evaluate
# Extra arguments go to dev/gpu/gpu_session.py (e.g. --budget-s 500; --dry-run --device cpu for the CPU test).
# $OUT is the folder that comes back; PYTHON picks the interpreter (the GPU image's python3 by default).
set -u
cd "$(dirname "$0")/../.." || exit 2
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
exec "${PYTHON:-python3}" dev/gpu/gpu_session.py --call "${1:?give the call: 1 or 2}" --out "${OUT:?set OUT}" "${@:2}"
