"""Story novelty in the window script on the real Redis: near-duplicates found through the LSH index, novel
and all events counted apart, decisions that survive redelivery, the horizon, and the index dropped by
event time. Band keys come from the real sketcher (stream.novelty), texts from hand-written stories."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from stream.local import LocalServices
from stream.novelty import NoveltyParams, Sketcher
from stream.windows import TimePolicy, WindowStore, WindowUpdate

pytestmark = [pytest.mark.redis]

BUCKET = 60
HORIZON_S = 3600
T0 = 1_700_000_000_000 - 1_700_000_000_000 % (HORIZON_S * 1000)  # a generation boundary, in ms
PARAMS = NoveltyParams(bands=12, rows=4, threshold=0.7)
SKETCH = Sketcher(PARAMS)

STORY = "Apple shares fall 5% after the iPhone maker cuts its revenue forecast for the holiday quarter $AAPL"
# The same story as a retweet with another link: normalised away, so an exact near-duplicate.
REPOST = f"RT @somebody: {STORY} http://t.co/x1"
# The same story, a few words changed: still a near-duplicate.
EDITED = STORY.replace("holiday quarter $AAPL", "holiday quarter, analysts say $AAPL")
OTHER = "Tesla delivers a record number of cars in the third quarter, beating every estimate $TSLA"
THIRD = "Federal Reserve leaves rates unchanged and signals two cuts before the end of next year"


@pytest.fixture()
async def redis(services: LocalServices) -> AsyncIterator[Redis]:
    r = Redis.from_url(services.settings.redis_url)
    yield r
    await r.aclose()


def store(r: Redis, horizon_s: int = HORIZON_S) -> WindowStore:
    return WindowStore(
        r,
        f"test:{uuid.uuid4().hex[:10]}",
        BUCKET,
        7 * 86400,
        lateness_s=120,
        time_policy=TimePolicy(mode="replay", dedupe_horizon_s=86400),
        novelty_horizon_s=horizon_s,
        novelty_min_votes=PARAMS.min_votes,
    )


def ev(eid: str, text: str, ts: int, sentiment: int = 0, src: str = "in:0") -> WindowUpdate:
    (bands,) = SKETCH.band_keys([text])
    return WindowUpdate(eid, ts, sentiment, -0.5, [("ticker", "AAPL")], src, None, bands)


async def bucket(r: Redis, w: WindowStore, ts: int) -> dict[str, int]:
    raw = await r.hgetall(f"{w.prefix}:b:ticker:AAPL:{ts // 1000 - ts // 1000 % BUCKET}")
    return {k.decode(): int(v) for k, v in raw.items()}


def test_sketch_votes_reflect_similarity() -> None:
    story, repost, edited, other = SKETCH.band_keys([STORY, REPOST, EDITED, OTHER])
    assert repost == story  # links, the retweet marker and the handle are not the story
    shared = sum(a == b for a, b in zip(story, edited, strict=True))
    assert PARAMS.min_votes <= shared < PARAMS.bands
    assert sum(a == b for a, b in zip(story, other, strict=True)) < PARAMS.min_votes


async def test_reposts_are_near_duplicates_of_the_first_story_and_counted_apart(redis: Redis) -> None:
    w = store(redis)
    r = await w.apply(
        [ev("a", STORY, T0 + 1000), ev("b", REPOST, T0 + 2000), ev("c", EDITED, T0 + 3000), ev("d", OTHER, T0 + 4000)],
        ["in:0"],
    )
    assert r.statuses == ["counted"] * 4
    assert r.duplicate_of == [None, "a", "a", None]
    assert r.votes[1] == PARAMS.bands and PARAMS.min_votes <= r.votes[2] < PARAMS.bands
    assert PARAMS.novelty(r.votes[1]) == 0.0 and 0.0 < PARAMS.novelty(r.votes[2]) < 1 - PARAMS.threshold + 0.05
    # Every event is buzz; only the two stories are novel (both negative here).
    counts = await bucket(redis, w, T0)
    assert (counts["n"], counts["neg"], counts["nn"], counts["nneg"]) == (4, 4, 2, 2)
    (all_events,) = await w.window_sums([("ticker", "AAPL", T0 // 1000 + BUCKET)], BUCKET, BUCKET)
    (novel,) = await w.window_sums([("ticker", "AAPL", T0 // 1000 + BUCKET)], BUCKET, BUCKET, novel_only=True)
    assert (all_events.recent_n, all_events.recent_neg) == (4, 4)
    assert (novel.recent_n, novel.recent_neg) == (2, 2)
    # The read side (API, trends, indices) reports both.
    (pt,) = await w.series("ticker", "AAPL", T0 // 1000, T0 // 1000 + BUCKET, BUCKET)
    (tot,) = await w.window_totals("ticker", ["AAPL"], T0 // 1000, T0 // 1000 + BUCKET)
    assert (pt.n, pt.novel, pt.novel_neg) == (tot.n, tot.novel, tot.novel_neg) == (4, 2, 2)
    (trend,) = await w.trends("ticker")
    assert (trend.n, trend.novel, trend.novel_neg) == (4, 2, 2)


async def test_a_redelivered_event_reports_the_decision_it_was_counted_with(redis: Redis) -> None:
    w = store(redis)
    first = await w.apply([ev("a", STORY, T0 + 1000), ev("b", REPOST, T0 + 2000)], ["in:0"])
    again = await w.apply([ev("b", REPOST, T0 + 2000), ev("a", STORY, T0 + 1000)], ["in:0"])
    assert again.statuses == ["duplicate", "duplicate"]
    assert again.duplicate_of == first.duplicate_of[::-1] == ["a", None] and again.votes == first.votes[::-1]
    # Twice in one batch: the second copy of an id repeats the first one's decision.
    twice = await w.apply([ev("c", REPOST, T0 + 3000), ev("c", REPOST, T0 + 3000)], ["in:0"])
    assert twice.statuses == ["counted", "duplicate"] and twice.duplicate_of == ["a", "a"]


async def test_an_earlier_copy_arriving_later_takes_the_novel_count_over(redis: Redis) -> None:
    w = store(redis)
    await w.apply([ev("a", STORY, T0 + 61_000), ev("b", REPOST, T0 + 62_000)], ["in:0", "in:1"])
    # An earlier copy from a partition that was behind: a's novel count is taken back, z's counts.
    late = await w.apply([ev("z", STORY, T0 + 1000, src="in:1")], ["in:0", "in:1"])
    assert late.statuses == ["counted"] and late.duplicate_of == [None]
    assert (await bucket(redis, w, T0 + 61_000)).get("nn", 0) == 0
    assert (await bucket(redis, w, T0 + 1000))["nn"] == 1
    # A redelivered a now reports what its counts say.
    assert (await w.apply([ev("a", STORY, T0 + 61_000)], ["in:0", "in:1"])).duplicate_of == ["z"]
    assert (await redis.hgetall(f"{w.prefix}:metrics"))[b"novelty_retracted"] == b"1"


@pytest.mark.parametrize("order", [(0, 1, 2, 3), (3, 2, 1, 0), (2, 0, 3, 1), (1, 3, 0, 2)])
async def test_novel_counts_do_not_depend_on_the_order_copies_arrive_in(redis: Redis, order: tuple[int, ...]) -> None:
    # Four copies of one story and one other story, a batch each, in different arrival orders (two
    # partitions, so none of them is late): the windows end up the same.
    evs = [
        ev("s1", STORY, T0 + 1000, src="in:0"),
        ev("s2", REPOST, T0 + 61_000, src="in:1"),
        ev("s3", EDITED, T0 + 121_000, src="in:0"),
        ev("o1", OTHER, T0 + 61_500, src="in:1"),
    ]
    w = store(redis)
    for k in order:
        await w.apply([evs[k]], ["in:0", "in:1"])
    counts = [await bucket(redis, w, T0 + m * 60_000) for m in range(3)]
    assert [(c.get("n", 0), c.get("nn", 0)) for c in counts] == [(1, 1), (2, 1), (1, 0)]


async def test_within_a_batch_the_earlier_copy_is_the_original_whatever_the_arrival_order(redis: Redis) -> None:
    w = store(redis)
    r = await w.apply([ev("late-copy", REPOST, T0 + 9000, src="in:1"), ev("first", STORY, T0 + 1000)], ["in:0", "in:1"])
    assert r.duplicate_of == ["first", None]
    # Across batches, an earlier copy arriving after a later one takes the band keys over for what follows.
    w2 = store(redis)
    await w2.apply([ev("x2", STORY, T0 + 9000, src="in:1")], ["in:0", "in:1"])
    r1 = await w2.apply([ev("x1", REPOST, T0 + 1000, src="in:0")], ["in:0", "in:1"])
    assert r1.duplicate_of == [None]  # nothing earlier than it: novel (x2, already counted, stays novel)
    r2 = await w2.apply([ev("x3", EDITED, T0 + 20_000)], ["in:0", "in:1"])
    assert r2.duplicate_of == ["x1"]


async def test_the_horizon_bounds_how_far_back_a_repost_is_old_news(redis: Redis) -> None:
    # Generations of one horizon: an event is compared with its own generation and the one before.
    w = store(redis)
    h = HORIZON_S * 1000
    r = await w.apply(
        [
            ev("a", STORY, T0 + 1000),
            ev("b", REPOST, T0 + 2 * h - 1000),  # the next generation: still a repost, almost two horizons on
            ev("c", THIRD, T0 + 5000),
            ev("d", THIRD, T0 + 2 * h + 5000),  # two generations on: news again
        ],
        ["in:0"],
    )
    assert r.duplicate_of == [None, "a", None, None]


async def test_the_decision_does_not_depend_on_which_copy_arrived_first(redis: Redis) -> None:
    # A story reposted across three generations (as a retweet chain is, over days): the copy in the last
    # one repeats the copy in the middle one whether that copy was counted before it or after it.
    h = HORIZON_S * 1000
    # Each copy on its own partition, so that none is late whatever the order (replay mode).
    copies = [ev(f"g{k}", STORY if k == 0 else REPOST, T0 + k * h + 1000, src=f"in:{k}") for k in range(3)]
    states = []
    for order in ((0, 1, 2), (2, 1, 0), (0, 2, 1), (2, 0, 1)):
        w = store(redis)
        for k in order:
            await w.apply([copies[k]], ["in:0", "in:1", "in:2"])
        states.append([(await bucket(redis, w, T0 + m * h + 1000)).get("nn", 0) for m in range(3)])
    assert states == [[1, 0, 0]] * 4


async def test_index_generations_are_dropped_by_event_time(redis: Redis) -> None:
    w = store(redis)
    await w.apply([ev("a", STORY, T0 + 1000)], ["in:0"])
    gen0 = f"{w.prefix}:nov:{(T0 + 1000) // (HORIZON_S * 1000)}"
    assert await redis.exists(gen0)
    # One generation on, the previous one is still looked into; two on (past lateness), it is gone.
    await w.apply([ev("b", OTHER, T0 + HORIZON_S * 1000 + 1000)], ["in:0"])
    assert await redis.exists(gen0)
    await w.apply([ev("c", THIRD, T0 + 2 * HORIZON_S * 1000 + 300_000)], ["in:0"])
    assert not await redis.exists(gen0)
    assert await redis.smembers(f"{w.prefix}:novg") == {
        str((T0 + k * HORIZON_S * 1000) // (HORIZON_S * 1000)).encode() for k in (1, 2)
    }


async def test_without_novelty_every_event_is_novel(redis: Redis) -> None:
    w = store(redis, horizon_s=0)
    r = await w.apply([ev("a", STORY, T0 + 1000), ev("b", REPOST, T0 + 2000)], ["in:0"])
    assert r.duplicate_of == [None, None] and r.votes == [0, 0]
    counts = await bucket(redis, w, T0)
    assert counts["n"] == counts["nn"] == 2
    assert not await redis.exists(f"{w.prefix}:novg")
