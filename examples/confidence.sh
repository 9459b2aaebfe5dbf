#!/usr/bin/env bash
# README "Confidence": fit and measure the per-stroke confidence on three structured demo models, each
# with 100+ held-out tracings (fitting split: train tracings; measured on: test tracings; gallery: every
# photo of the catalogue). Writes OUT/<case>/report (confidence.md, reliability.png, early_stop.png).
set -euo pipefail
OUT=${1:-confidence-out}
BIN=.venv/bin
mkdir -p "$OUT"

# 1. DC-SSA: the demo of `make demo` (40 shapes) and a 200-shape catalogue of another seed
run_dcssa () {  # name shapes seed sketches-per-photo
  local d="$OUT/$1"; mkdir -p "$d"
  [ -f "$d/demo.pth" ] || "$BIN/dcssa-export" demo-checkpoint "$d/demo.pth" --seed "$3" --shapes "$2" --catalogue-seed "$3" -q
  [ -d "$d/bundle" ] || "$BIN/dcssa-export" --ckpt "$d/demo.pth" --out "$d/bundle" -q
  "$BIN/dcssa-rt" make-dataset "$d/data" --photos "$2" --seed "$3" --sketches-per-photo "$4" --force --json > /dev/null
  "$BIN/dcssa-rt" index "$d/data/Shapes/photo" --bundle "$d/bundle" --force -q
  "$BIN/dcssa-rt" calibrate-confidence --dataset "$d/data/Shapes" --bundle "$d/bundle" --backend ort-cpu \
    --out "$d/report" --force
}
run_dcssa dcssa-40 40 0 6      # 120 fitting, 120 held-out tracings of the 40-shape demo catalogue
run_dcssa dcssa-200 200 1 1    # 100 fitting, 100 held-out tracings of a 200-shape catalogue

# 2. ARNet: a structured ViT-S demo (ViT-B works the same, 4x slower), ARNet layout, gallery trainB + testB
d="$OUT/arnet-40"; mkdir -p "$d"
[ -f "$d/model_Best.pth" ] || "$BIN/dcssa-export" demo-checkpoint "$d/model_Best.pth" --family arnet --vit small -q
[ -d "$d/bundle" ] || "$BIN/dcssa-export" --ckpt "$d/model_Best.pth" --out "$d/bundle" -q
"$BIN/dcssa-rt" make-dataset "$d/data" --format arnet --photos 40 --seed 0 --sketches-per-photo 6 --force --json > /dev/null
rm -rf "$d/catalogue" && mkdir -p "$d/catalogue" && cp -r "$d/data/Shapes/trainB" "$d/data/Shapes/testB" "$d/catalogue/"
"$BIN/dcssa-rt" index "$d/catalogue" --bundle "$d/bundle" --force -q
"$BIN/dcssa-rt" calibrate-confidence --dataset "$d/data/Shapes" --format arnet --bundle "$d/bundle" --backend ort-cpu \
  --out "$d/report" --force
