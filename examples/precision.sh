#!/usr/bin/env bash
# README "Precision plans": the int8 and bf16 plan searches judged by the task, on two structured
# demo models with 100+ held-out tracings each (the models and data of examples/confidence.sh):
# the 40-shape demo (seed 0, 6 tracings per photo: 120 held-out) and a 200-shape catalogue of
# another seed (1 tracing per photo: 100 held-out). Writes OUT/<case>/{report.json,work/}.
# Usage: examples/precision.sh [OUT] [all|dcssa-40|dcssa-200]
# bf16 needs a CPU with native bf16 (AMX or AVX512-BF16); elsewhere it is left out.
set -euo pipefail
OUT=${1:-precision-out}
BIN=.venv/bin
mkdir -p "$OUT"
PREC=int8,bf16
"$BIN/python" -c "from dcssa.calibration.bf16 import check_bf16_machine as c; c()" 2>/dev/null || PREC=int8

run () {  # name shapes seed sketches-per-photo [extra calibrate options]
  local d="$OUT/$1"; mkdir -p "$d"
  [ -f "$d/demo.pth" ] || "$BIN/dcssa-export" demo-checkpoint "$d/demo.pth" --seed "$3" --shapes "$2" --catalogue-seed "$3" -q
  [ -d "$d/bundle" ] || "$BIN/dcssa-export" --ckpt "$d/demo.pth" --out "$d/bundle" -q
  [ -d "$d/data/Shapes" ] || "$BIN/dcssa-rt" make-dataset "$d/data" --photos "$2" --seed "$3" --sketches-per-photo "$4" --json > /dev/null
  "$BIN/dcssa-export" calibrate "$d/bundle" --data "$d/data/Shapes" --precision "$PREC" --workdir "$d/work" \
    "${@:5}" --json > "$d/report.tmp" && mv "$d/report.tmp" "$d/report.json"
}
case "${2:-all}" in
  all|dcssa-40) run dcssa-40 40 0 6 ;;&
  # the second model: one calibration method (the first model shows they barely differ) and a
  # 16-sketch sensitivity order, to fit a 2-core machine's afternoon
  all|dcssa-200) run dcssa-200 200 1 1 --methods entropy --sensitivity-sketches 16 ;;
esac
