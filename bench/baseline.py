"""`finpulse bench baseline`: what a user would write instead of finpulse, in one file.

An aiokafka consumer that, for every message, tokenizes with the Hugging Face tokenizer (truncated
at 128 tokens, not padded), runs one PyTorch forward pass of the same model on CPU, and increments
per-ticker counters in Redis with one round trip per message. It is the per-message textbook loop,
built on the same model, data, Kafka and Redis, so the ratio to ``bench pipeline`` is like for like.
(A ``transformers.pipeline`` object cannot load finpulse's two-head model; this loop is what that
pipeline does per call: tokenize one text without padding, forward, softmax.) ``pad_to_max``
pads every message to 128 tokens instead, the other common way to write it, which is much slower.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Any

import click
import orjson

from bench.common import machine_info, now_iso, stream_texts
from engine.settings import DEFAULT_MAX_SEQ_LEN
from stream.security import kafka_client_kwargs, redis_from_settings
from stream.settings import StreamSettings


async def run_baseline(
    settings: StreamSettings, events: list[dict[str, Any]], model_dir: Path, pad_to_max: bool = False
) -> dict[str, Any]:
    """The naive per-event pipeline (consume, classify one event, write Redis) against ``settings``' Kafka and Redis."""
    import torch
    from aiokafka import AIOKafkaConsumer
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from transformers import AutoTokenizer

    from engine.bundle import EngineBundle, is_bundle
    from engine.modeling import load_model
    from stream.cli.replay import produce

    ckpt = EngineBundle.load(model_dir).checkpoint_path if is_bundle(model_dir) else model_dir
    loaded = load_model(ckpt)
    model = loaded.model.eval()
    tok = AutoTokenizer.from_pretrained(str(ckpt), local_files_only=True)
    labels = loaded.heads[0].labels

    tag = uuid.uuid4().hex[:8]
    topic = f"baseline.{tag}.events"
    admin = AIOKafkaAdminClient(**kafka_client_kwargs(settings))
    await admin.start()
    await admin.create_topics([NewTopic(topic, 4, 1)])
    await admin.close()
    await produce(settings, topic, events)

    redis = redis_from_settings(settings)
    consumer = AIOKafkaConsumer(
        topic, **kafka_client_kwargs(settings), group_id=f"baseline-{tag}", auto_offset_reset="earliest"
    )
    await consumer.start()
    done = 0
    t0 = time.perf_counter()
    try:
        async for msg in consumer:
            ev = orjson.loads(msg.value)
            enc = tok(
                ev["text"],
                padding="max_length" if pad_to_max else False,
                truncation=True,
                max_length=DEFAULT_MAX_SEQ_LEN,
                return_tensors="pt",
            )
            with torch.inference_mode():
                logits = model(enc["input_ids"], enc["attention_mask"])[0]
            label = labels[int(torch.softmax(logits, -1).argmax())]
            for t in ev.get("tickers", []):
                await redis.hincrby(f"baseline:{tag}:{t}", label, 1)
            done += 1
            if done >= len(events):
                break
    finally:
        elapsed = time.perf_counter() - t0
        await consumer.stop()
        keys = [k async for k in redis.scan_iter(match=f"baseline:{tag}:*")]
        if keys:
            await redis.delete(*keys)
        await redis.aclose()
        admin = AIOKafkaAdminClient(**kafka_client_kwargs(settings))
        await admin.start()
        await admin.delete_topics([topic])
        await admin.close()
    return {
        "events": done,
        "seconds": round(elapsed, 3),
        "events_per_s": round(done / elapsed, 1),
        "model_id": loaded.model_id,
        "backend": "torch (per message, HF tokenizer, "
        f"{f'padded to {DEFAULT_MAX_SEQ_LEN}' if pad_to_max else 'unpadded'})",
        "padding": f"max_length {DEFAULT_MAX_SEQ_LEN}" if pad_to_max else "none",
        "device": "cpu",
        "precision": "fp32",
        "threads": torch.get_num_threads(),
    }


@click.command("baseline")
@click.option("--events", "n", type=int, default=500, show_default=True)
@click.option("--model", "model_dir", type=click.Path(path_type=Path), default=None)
@click.option(
    "--pad-to-max",
    is_flag=True,
    help="Pad every message to 128 tokens (slower) instead of none, as a pipeline call does.",
)
@click.option("--out", type=click.Path(path_type=Path), default=None)
def bench_baseline_cmd(n: int, model_dir: Path | None, pad_to_max: bool, out: Path | None) -> None:
    """Per-message consumer + model + Redis loop: the naive system, on the same data and machine."""
    from engine.settings import EngineSettings
    from stream.cli.models import resolve_model_dir
    from stream.local import LocalServices
    from stream.settings import get_settings

    s = get_settings()
    services = LocalServices(s)
    services.ensure_installed()
    started = services.start()
    try:
        mdir = model_dir or resolve_model_dir(s, EngineSettings())
        events = stream_texts(s.require_data_dir(), n)
        res = asyncio.run(run_baseline(s, events, mdir, pad_to_max))
    finally:
        services.stop([k for k, v in started.items() if v])
    doc = {"benchmark": "baseline", "date": now_iso(), "machine": machine_info(), **res}
    text = orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode()
    click.echo(text)
    if out:
        out.write_text(text)
