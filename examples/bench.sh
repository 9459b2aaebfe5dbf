#!/usr/bin/env bash
# The benchmark of README "Performance" on this machine: the demo bundle (made by demo.sh when
# missing) with its int8 graphs (added once, `--recipe default`), then `dcssa-bench run` with its
# default settings. Writes OUT (default bench-out/): bench.json, bench.md and two PNG plots.
set -euo pipefail
DEMO=${1:-demo-out}
OUT=${2:-bench-out}
BIN=.venv/bin
if [ ! -f "$DEMO/bundle/manifest.json" ] || [ ! -d "$DEMO/bundle/gallery" ]; then
  bash examples/demo.sh "$DEMO"
fi
if ! "$BIN/python" -c "import json, sys; sys.exit('int8' not in json.load(open('$DEMO/bundle/manifest.json'))['precisions'])"; then
  "$BIN/dcssa-export" calibrate "$DEMO/bundle" --data "$DEMO/data/Shapes" --precision int8 --recipe default
fi
"$BIN/dcssa-bench" run --bundle "$DEMO/bundle" --gallery "$DEMO/bundle/gallery" --out "$OUT" --force
