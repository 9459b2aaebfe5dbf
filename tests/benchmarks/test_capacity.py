"""`dcssa-bench capacity`: the capacity model against the README's example worked by hand, and its
Redis inputs read from a redis-capacity report."""

from __future__ import annotations

import json

from click.testing import CliRunner

from dcssa.benchmarks.capacity import Load, plan
from dcssa.benchmarks.cli import main


def test_the_readme_example_by_hand():
    # 1,000 people, a stroke every 2 s: 500 strokes/s; x 0.17 core-s = 85 busy cores, / 0.7 -> 121.4 -> 122
    # a sketch started every 60 s: 16.67 sessions/s, each held 40 + 1,800 s -> 30,667; x 206,524 B = 6.33 GB
    # -> 4 Redis of 2 GB; Redis CPU 500 x 65 us = 0.0325 of a core
    p = plan(Load())
    assert (p["strokes_per_s"], p["busy_cores"], p["cores"]) == (500.0, 85.0, 122)
    assert p["sessions_held"] == 30_667 and p["redis_memory_gb"] == 6.33
    assert p["redis_cpu_cores"] == 0.033 and p["redis_instances"] == 4 and p["redis_bound_by"] == "memory"
    # CPU-bound Redis: 100,000 strokes/s x 65 us = 6.5 cores, at half a core each -> 13 instances
    p = plan(Load(people=200_000, ttl=0, bytes_per_session=1))
    assert p["redis_cpu_cores"] == 6.5 and p["redis_instances"] == 13 and p["redis_bound_by"] == "cpu"


def test_redis_inputs_come_from_the_report(tmp_path):
    report = {"memory": [{"strokes": 20, "bytes_per_session": 200_000}, {"strokes": 100, "bytes_per_session": 10**6}],
              "sweep": [{"server_us_per_stroke": 50.0}, {"server_us_per_stroke": 80.0}]}
    path = tmp_path / "redis_capacity.json"
    path.write_text(json.dumps(report))
    r = CliRunner().invoke(main, ["capacity", "--redis-json", str(path), "--strokes", "100", "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output)
    assert doc["load"]["bytes_per_session"] == 10**6 and doc["load"]["redis_us_per_stroke"] == 80.0
    assert doc["plan"]["redis_memory_gb"] == round(30_666.67 * 10**6 / 1e9, 2)
    r = CliRunner().invoke(main, ["capacity", "--redis-json", str(path), "--strokes", "50"])
    assert r.exit_code != 0 and "[20, 100]" in r.output and "redis_capacity.json" in r.output
