"""A worker's run and wait times, added up in memory and written to the metrics hash the
way the transition script writes its own (real Redis, a spare database)."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
import redis

from config.settings import Settings
from config.topology import load_topology
from orchestrator.keys import Keys
from orchestrator.metrics import BUCKETS_S, TreadleCollector, bucket_of, series
from orchestrator.stack import Stack
from orchestrator.store import StateStore
from tests.conftest import spare_database, wait_until
from workers.observations import Observations

pytestmark = pytest.mark.e2e

KEY = Keys("treadle").metrics


@pytest.fixture
def spare(stack: Stack) -> Iterator[redis.Redis]:
    yield from spare_database(stack, 13)


def histogram(client: redis.Redis, name: str, task: str) -> tuple[list[float], float]:
    """(cumulative bucket counts, sum) of one task's histogram, as a scrape reads it."""
    collector = TreadleCollector(
        StateStore(client, Keys("treadle")), load_topology(Settings().topology)
    )
    family = next(
        f
        for f in collector._histograms(collector._stored())
        if f.name == f"treadle_step_{name}_seconds"
    )
    mine = [s for s in family.samples if s.labels.get("task") == task]
    buckets = [s.value for s in mine if s.name.endswith("_bucket")]
    total = next(s.value for s in mine if s.name.endswith("_sum"))
    return buckets, total


def test_observations_land_in_the_buckets_the_scrape_reads(spare: redis.Redis) -> None:
    observations = Observations(spare, KEY, every_s=3600)
    for seconds in (0.003, 0.3, 0.3, 4000.0):
        observations.run("shop.pay", seconds)
    observations.wait("shop.pay", 0.02)
    assert spare.hlen(KEY) == 0, "nothing is written before a flush"
    observations.flush()
    buckets, total = histogram(spare, "run", "shop.pay")
    assert total == pytest.approx(4000.603)
    # Cumulative: one up to 0.005 s, three up to 0.5 s, four only at +Inf.
    assert buckets[0] == 1
    assert buckets[BUCKETS_S.index(0.5)] == 3
    assert buckets[len(BUCKETS_S) - 1] == 3
    assert buckets[-1] == 4
    assert spare.hget(KEY, series("wait", "shop.pay", bucket_of(0.02))) == b"1"
    observations.flush()  # nothing new: nothing added twice
    assert histogram(spare, "run", "shop.pay")[1] == pytest.approx(4000.603)


def test_the_thread_flushes_on_its_own(spare: redis.Redis) -> None:
    observations = Observations(spare, KEY, every_s=0.05)
    observations.run("shop.pay", 0.1)
    wait_until(lambda: spare.hlen(KEY) == 2, 5, "the flush thread to write the timing")
    observations.close()


def test_timings_that_could_not_be_written_are_kept_for_the_next_flush(
    spare: redis.Redis,
) -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    away = redis.Redis(port=port, socket_connect_timeout=0.5)
    observations = Observations(away, KEY, every_s=3600)
    observations.run("shop.pay", 0.3)
    observations.flush()  # Redis is away: nothing is lost
    observations.run("shop.pay", 0.3)
    observations.client = spare
    observations.flush()
    buckets, total = histogram(spare, "run", "shop.pay")
    assert buckets[-1] == 2
    assert total == pytest.approx(0.6)


def test_buckets_are_numbered_as_the_lua_script_numbers_them() -> None:
    assert bucket_of(0.0) == 1
    assert bucket_of(0.005) == 1
    assert bucket_of(0.0051) == 2
    assert bucket_of(3600) == len(BUCKETS_S)
    assert bucket_of(3600.1) == len(BUCKETS_S) + 1
