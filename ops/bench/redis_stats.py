"""What a run asks of Redis: commands by name, client round trips and server CPU time.

``INFO commandstats`` counts every command Redis executes, including those a Lua script
runs (``redis.call``); ``total_reads_processed`` counts reads from client sockets, about
one per round trip (a pipeline that arrives in one read counts once);
``used_cpu_user`` and ``used_cpu_sys`` the server's CPU time, what all of it cost Redis
(a count weighs a command run inside a script like one sent alone). All are
server-wide, so idle workers' polling is measured in a quiet window and taken off, as
are the bench's own commands. MONITOR tells a client's command from a script's: a
separate, untimed pass uses it to split the count.
"""

from __future__ import annotations

import re
import threading
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field

import redis

SCRIPT_COMMANDS = frozenset({"eval", "evalsha", "eval_ro", "evalsha_ro", "fcall", "fcall_ro"})
_MONITOR_LINE = re.compile(r'^[\d.]+ \[(\d+) ([^\]]*)\] "([^"]+)"')
_STOP_WORD = "treadle-bench-monitor-stop"


@dataclass(frozen=True)
class Usage:
    """Commands by name, socket reads and the server's CPU seconds, over ``seconds``."""

    calls: Mapping[str, float]
    reads: float
    seconds: float
    cpu_s: float = 0.0

    @property
    def commands(self) -> float:
        return sum(self.calls.values())

    @property
    def script_calls(self) -> float:
        return sum(n for name, n in self.calls.items() if name in SCRIPT_COMMANDS)

    def less(self, other: Usage, scale: float = 1.0) -> Usage:
        """This usage minus ``scale`` times ``other`` (never below zero per command)."""
        names = set(self.calls) | set(other.calls)
        calls = {
            n: max(self.calls.get(n, 0.0) - scale * other.calls.get(n, 0.0), 0.0) for n in names
        }
        return Usage(
            calls,
            max(self.reads - scale * other.reads, 0.0),
            self.seconds,
            max(self.cpu_s - scale * other.cpu_s, 0.0),
        )

    def per(self, count: int) -> Usage:
        return Usage(
            {n: c / count for n, c in self.calls.items()},
            self.reads / count,
            self.seconds,
            self.cpu_s / count,
        )


@dataclass(frozen=True)
class Snapshot:
    calls: Mapping[str, int]
    reads: int
    at: float
    cpu_s: float = 0.0


def snapshot(client: redis.Redis) -> Snapshot:
    """One INFO (it counts itself in the next snapshot: see ``BENCH_OWN``)."""
    info = client.info("all")
    calls = {
        key.removeprefix("cmdstat_"): int(value["calls"])
        for key, value in info.items()
        if key.startswith("cmdstat_") and isinstance(value, dict)
    }
    cpu_s = float(info["used_cpu_user"]) + float(info["used_cpu_sys"])
    return Snapshot(calls, int(info["total_reads_processed"]), time.monotonic(), cpu_s)


def between(before: Snapshot, after: Snapshot) -> Usage:
    names = set(before.calls) | set(after.calls)
    calls = {n: float(after.calls.get(n, 0) - before.calls.get(n, 0)) for n in names}
    return Usage(
        {n: c for n, c in calls.items() if c},
        float(after.reads - before.reads),
        after.at - before.at,
        after.cpu_s - before.cpu_s,
    )


def own(commands: Mapping[str, int]) -> Usage:
    """Commands the bench itself sent in a window (one read each): to be taken off."""
    calls = {n: float(c) for n, c in commands.items()}
    return Usage(calls, float(sum(commands.values())), 0.0)


def idle_rate(client: redis.Redis, seconds: float) -> Usage:
    """What the idle processes send per second (heartbeats, polling, blocking pops)."""
    before = snapshot(client)
    time.sleep(seconds)
    usage = between(before, snapshot(client)).less(own({"info": 1}))
    return Usage(
        {n: c / usage.seconds for n, c in usage.calls.items()},
        usage.reads / usage.seconds,
        1.0,
        usage.cpu_s / usage.seconds,
    )


def attributable(usage: Usage, idle: Usage, bench_own: Mapping[str, int]) -> Usage:
    """``usage`` less the idle background over its length and the bench's own commands."""
    return usage.less(idle, scale=usage.seconds).less(own({"info": 1, **bench_own}))


@dataclass
class CommandMix:
    """Commands seen by MONITOR, by source: a client's round trip or a script's call."""

    by_client: Counter[str] = field(default_factory=Counter)
    by_script: Counter[str] = field(default_factory=Counter)
    # A client's own round trips, by its address ("127.0.0.1:50000", as CLIENT INFO says):
    # what one connection sent while others share the server.
    by_address: dict[str, Counter[str]] = field(default_factory=dict)

    def add(self, source: str, name: str) -> None:
        (self.by_script if source == "lua" else self.by_client)[name.lower()] += 1
        if source != "lua":
            self.by_address.setdefault(source, Counter())[name.lower()] += 1


@contextmanager
def monitored(url: str, db: int) -> Iterator[CommandMix]:
    """Record the commands Redis runs in database ``db`` during the block (a script's
    commands count in its caller's database). MONITOR slows Redis: untimed runs only."""
    mix = CommandMix()
    listener = redis.Redis.from_url(url)
    ready = threading.Event()

    def listen() -> None:
        with listener.monitor() as monitor:  # type: ignore[no-untyped-call]
            ready.set()
            while True:
                line = monitor.connection.read_response()
                text = line.decode(errors="replace") if isinstance(line, bytes) else str(line)
                if _STOP_WORD in text:
                    return
                match = _MONITOR_LINE.match(text)
                if match and int(match.group(1)) == db:
                    mix.add(match.group(2), match.group(3))

    thread = threading.Thread(target=listen, name="bench-monitor", daemon=True)
    thread.start()
    ready.wait(10)
    sender = redis.Redis.from_url(url)
    try:
        yield mix
    finally:
        sender.echo(_STOP_WORD)
        thread.join(30)
        sender.close()
        listener.close()
