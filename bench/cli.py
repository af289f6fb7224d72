"""`finpulse bench ...`: benchmarks are commands that print JSON, never tests."""

from __future__ import annotations

import click

from bench.baseline import bench_baseline_cmd
from bench.decode_bench import bench_decode_cmd
from bench.engine_bench import bench_engine_cmd
from bench.novelty_bench import bench_novelty_cmd
from bench.pipeline_bench import bench_pipeline_cmd
from bench.redis_durability import bench_redis_durability_cmd
from bench.redis_memory import bench_redis_memory_cmd
from bench.soak import bench_soak_cmd


@click.group("bench")
def bench() -> None:
    """Benchmarks (print one JSON object each; see BENCHMARKS.md)."""


bench.add_command(bench_engine_cmd, "engine")
bench.add_command(bench_pipeline_cmd, "pipeline")
bench.add_command(bench_baseline_cmd, "baseline")
bench.add_command(bench_redis_durability_cmd, "redis-durability")
bench.add_command(bench_redis_memory_cmd, "redis-memory")
bench.add_command(bench_soak_cmd, "soak")
bench.add_command(bench_decode_cmd, "decode")
bench.add_command(bench_novelty_cmd, "novelty")
