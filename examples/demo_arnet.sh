#!/usr/bin/env bash
# The ARNet family on the embedded default (onnxruntime on CPU, local files only): structured ViT-B
# demo checkpoint in ARNet's model_Best.pth layout -> verified bundle -> ARNet-layout catalogue ->
# gallery -> per-stroke query -> the authors' acc@1/5/10 on the sketch PNGs.
set -euo pipefail
OUT=${1:-demo-out/arnet}
BIN=.venv/bin
mkdir -p "$OUT"
if [ ! -f "$OUT/model_Best.pth" ]; then
  "$BIN/dcssa-export" demo-checkpoint "$OUT/model_Best.pth" --family arnet
fi
"$BIN/dcssa-export" --ckpt "$OUT/model_Best.pth" --out "$OUT/bundle" --force
"$BIN/dcssa-rt" make-dataset "$OUT/data" --format arnet --photos 40 --seed 0 --test-share 1 --force
"$BIN/dcssa-rt" index "$OUT/data/Shapes/testB" --bundle "$OUT/bundle" --force
"$BIN/dcssa-rt" query examples/strokes.json --bundle "$OUT/bundle" --backend ort-cpu --topk 5 --target shape0036.png
"$BIN/dcssa-rt" eval --dataset "$OUT/data/Shapes" --format arnet --bundle "$OUT/bundle" --backend ort-cpu \
  --gallery "$OUT/bundle/gallery" --out "$OUT/eval" --force
