"""The verdict of gpu-check: every parity stage against thresholds; exit 1 when one misses them.

The thresholds are the agreement a user would not notice, per precision of the graphs the engine
was built from, measured against onnxruntime CPU fp32 on the same stroke prefixes:

* embedding cosine (worst stroke): the numerical gap;
* top-10 overlap (mean over strokes): whether the photos the user sees change, which is what the
  precision work judged on the task (m@B / acc@10 on held-out sketches, ``calibrate``'s yardstick).

fp32 engines must match to rounding; fp16 keeps the fp32 islands (ReduceL2, softmax) of the typed
graph, so it stays close; int8 moves embeddings more and is judged by the ranking first.

Where the dataset has held-out sketches (the demo dataset has), the ``task-*`` stages add the
precision work's own yardstick: m@B and acc@10 of the engines against fp32 on those sketches, the
paired-bootstrap upper bound of each drop within ``calibrate``'s default ``--max-drop``.
"""

from __future__ import annotations

from dcssa.calibration.options import DEFAULT_MAX_DROP

#: precision -> {metric: minimum}
THRESHOLDS: dict[str, dict[str, float]] = {
    "fp32": {"cosine_min": 0.9999, "top10_overlap": 0.95},
    "fp16": {"cosine_min": 0.999, "top10_overlap": 0.9},
    "int8": {"cosine_min": 0.98, "top10_overlap": 0.8},
}
VERDICT_FAIL_EXIT = 1
#: the task yardstick's largest loss against fp32, on the upper bound: ``calibrate``'s default --max-drop
TASK_MAX_DROP = dict(DEFAULT_MAX_DROP)


def judge(precision: str, result: dict) -> list[str]:
    """The thresholds ``result`` (a parity record) misses; empty when it passes."""
    out = []
    for metric, floor in THRESHOLDS[precision].items():
        value = result.get(metric)
        if value is None or value < floor:
            out.append(f"{metric} {value if value is None else round(value, 5)} < {floor}")
    return out


def judge_task(result: dict) -> list[str]:
    """The task drops (paired-bootstrap upper bounds) over :data:`TASK_MAX_DROP`."""
    drops = result.get("task_drops", {})
    return [f"{m} drop (upper bound) {drops.get(m, {}).get('drop_upper')} > {limit}"
            for m, limit in TASK_MAX_DROP.items() if drops.get(m, {}).get("drop_upper", float("inf")) > limit]


def verdict(stages: dict[str, dict]) -> dict:
    """Judge every parity record (``"parity": precision`` in a stage record); failed stages count too."""
    problems, judged = [], {}
    for name, rec in stages.items():
        if rec.get("status") == "failed":
            problems.append(f"{name} failed: {rec.get('error')}")
            continue
        if rec.get("judged_task"):
            misses = judge_task(rec)
            judged[name] = {"task_max_drop": TASK_MAX_DROP, "misses": misses}
            problems += [f"{name} (task): {m}" for m in misses]
            continue
        precision = rec.get("judged_as")
        if precision is None:
            continue
        misses = judge(precision, rec)
        judged[name] = {"precision": precision, "thresholds": THRESHOLDS[precision], "misses": misses}
        problems += [f"{name} ({precision}): {m}" for m in misses]
    return {"passed": not problems, "problems": problems, "judged": judged,
            "exit": 0 if not problems else VERDICT_FAIL_EXIT}
