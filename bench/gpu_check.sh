#!/usr/bin/env bash
# bench/gpu_check.py on a lent GPU machine: the pack's wheels (pydantic, datasets: the machine's Python lacks them)
# go into a private folder on PYTHONPATH, then the check reads the pack. Extra options go to gpu_check.py.
#   bash bench/gpu_check.sh bench-results/gpu-pack --json "$OUT/gpu_check.json"
set -euo pipefail
pack=${1:?usage: bash bench/gpu_check.sh PACK_DIR [gpu_check.py options]}; shift
site=$(mktemp -d /tmp/gpu-check-site.XXXXXX)
python3 -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir --target "$site" "$pack"/wheels/*.whl
PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 exec python3 "$(dirname "$0")/gpu_check.py" --from "$pack" "$@"
