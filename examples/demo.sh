#!/usr/bin/env bash
# The main job on the embedded default (onnxruntime on CPU, local files only):
# demo checkpoint -> verified bundle -> synthetic catalogue -> gallery -> per-stroke query.
set -euo pipefail
OUT=${1:-demo-out}
BIN=.venv/bin
mkdir -p "$OUT"
if [ ! -f "$OUT/demo.pth" ]; then
  "$BIN/dcssa-export" demo-checkpoint "$OUT/demo.pth"
fi
"$BIN/dcssa-export" --ckpt "$OUT/demo.pth" --out "$OUT/bundle" --force
"$BIN/dcssa-rt" make-dataset "$OUT/data" --photos 40 --seed 0 --force
"$BIN/dcssa-rt" index "$OUT/data/Shapes/photo" --bundle "$OUT/bundle" --force
"$BIN/dcssa-rt" query examples/strokes.json --bundle "$OUT/bundle" --backend ort-cpu --topk 5 --target shape0036.png
