"""The check of open pages against the replica (client_site/web/freshness.py), with stand-in sockets: which
sockets it finds behind, what each is handed, and what it asks the database."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from client_site.web import freshness
from client_site.web.consumers import UserConsumer
from client_site.web.freshness import Freshness
from tests.support.realtime import until


class Socket:
    def __init__(self, key: str, version: int) -> None:
        self.pushes = 0
        self.showing = (key, version)
        self.handed: list[tuple[dict[str, Any] | None, int]] = []
        self.heartbeats = 0

    def shown(self) -> tuple[str, int]:
        return self.showing

    async def catch_up(self, profile: dict[str, Any] | None, pushes_then: int) -> None:
        self.handed.append((profile, pushes_then))

    async def heartbeat(self) -> None:
        self.heartbeats += 1


def check(watch: Freshness) -> int:
    async def once() -> int:
        behind = await watch.check()
        await asyncio.gather(*watch.catching_up)
        return behind

    return asyncio.run(once())


@pytest.fixture
def replica(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """What the database says: versions by local user, profiles by local user, and the queries asked."""
    world: dict[str, Any] = {"versions": {}, "profiles": {}, "ended": {}, "asked": [], "during": None}

    def versions(pks: list[str]) -> dict[str, tuple[str, int]]:
        world["asked"].append(("versions", list(pks)))
        if world["during"]:
            world["during"]()
        return {pk: v for pk, v in world["versions"].items() if pk in pks}

    def profiles(pks: list[str]) -> dict[str, dict[str, Any]]:
        world["asked"].append(("profiles", list(pks)))
        return {pk: p for pk, p in world["profiles"].items() if pk in pks}

    def ended(pks: list[str]) -> dict[str, str]:
        world["asked"].append(("ended", list(pks)))
        return {pk: how for pk, how in world["ended"].items() if pk in pks}

    monkeypatch.setattr(freshness, "replica_versions", versions)
    monkeypatch.setattr(freshness, "ended_accounts", ended)
    monkeypatch.setattr(freshness, "profiles_by_pk", profiles)
    return world


def test_only_the_sockets_behind_get_a_profile_read_in_one_query(replica: dict[str, Any]) -> None:
    watch = Freshness()
    current, behind, other_tab, local, gone = (
        Socket("17", 3),
        Socket("18", 1),
        Socket("18", 1),
        Socket("", 0),
        Socket("19", 5),
    )
    for pk, socket in (("1", current), ("2", behind), ("2", other_tab), ("3", local), ("4", gone)):
        watch.sockets.setdefault(pk, set()).add(socket)
    replica["versions"] = {"1": ("17", 3), "2": ("18", 2)}  # 3 is a local account, 4's user was removed
    replica["profiles"] = {"2": {"key": "18", "version": 2}, "3": {"key": "", "version": 0}}
    behind.pushes = 4

    assert check(watch) == 3
    assert behind.handed == [({"key": "18", "version": 2}, 4)]
    assert other_tab.handed == [({"key": "18", "version": 2}, 0)]
    assert gone.handed == [(None, 0)]  # the socket ends the page itself
    assert current.handed == local.handed == []
    assert replica["asked"] == [
        ("versions", ["1", "2", "3", "4"]),
        ("ended", ["1", "2", "3", "4"]),
        ("profiles", ["2", "4"]),
    ]


def test_a_local_account_disabled_or_deleted_here_is_behind_though_no_version_changed(
    replica: dict[str, Any],
) -> None:
    """Accounts of this site alone (and replicas changed in its admin) have no version that moves: the
    check finds them by the account itself, and hands each socket what ends it."""
    watch = Freshness()
    disabled, deleted, fine, disabled_replica = Socket("", 0), Socket("", 0), Socket("", 0), Socket("17", 3)
    for pk, socket in (("1", disabled), ("2", deleted), ("3", fine), ("4", disabled_replica)):
        watch.sockets.setdefault(pk, set()).add(socket)
    replica["versions"] = {"4": ("17", 3)}
    replica["ended"] = {"1": "disabled", "2": "removed", "4": "disabled"}
    replica["profiles"] = {
        "1": {"key": "", "version": 0, "is_active": False},
        "4": {"key": "17", "version": 3, "is_active": False},
    }

    assert check(watch) == 3
    assert disabled.handed == [({"key": "", "version": 0, "is_active": False}, 0)]
    assert deleted.handed == [(None, 0)]
    assert disabled_replica.handed == [({"key": "17", "version": 3, "is_active": False}, 0)]
    assert fine.handed == []


def test_a_socket_opened_during_the_query_waits_for_the_next_round(replica: dict[str, Any]) -> None:
    """The answer says nothing about a user it was not asked about: such a socket is not 'behind'."""
    watch = Freshness()
    watch.sockets["1"] = {Socket("17", 3)}
    late = Socket("18", 1)
    replica["versions"] = {"1": ("17", 3), "2": ("18", 1)}
    replica["during"] = lambda: watch.sockets.setdefault("2", set()).add(late)

    assert check(watch) == 0
    assert late.handed == []
    assert replica["asked"] == [("versions", ["1"]), ("ended", ["1"])]  # no profile read at all


def test_nothing_open_asks_nothing(replica: dict[str, Any]) -> None:
    assert check(Freshness()) == 0
    assert replica["asked"] == []


def test_a_socket_catches_up_unless_a_push_came_since_or_it_is_ending() -> None:
    """The profile handed over was read after ``pushes_then`` pushes: a push that came since is at least as
    new, and stands. A socket that is ending sends nothing more, pushes included."""
    socket = UserConsumer()
    frames: list[dict[str, Any]] = []

    async def send_json(content: dict[str, Any], close: bool = False) -> None:
        frames.append(content)

    socket.send_json = send_json
    socket.sent = {"key": "17", "version": 3}
    read_before_push = {"key": "17", "version": 4, "first_name": "Alicia"}
    pushed = {"key": "17", "version": 5, "first_name": "Ali"}
    read_later = {"key": "17", "version": 6, "first_name": "Alison"}

    async def scenario() -> None:
        pushes_then = socket.pushes
        await socket.user_changed({"type": "user.changed", "profile": pushed})  # during the read
        await socket.catch_up(read_before_push, pushes_then)
        await socket.catch_up(read_later, socket.pushes)  # the next round: version 6's push was lost
        await socket.catch_up(read_later, socket.pushes)  # what it sent last: nothing again
        socket.closing = True
        await socket.user_changed({"type": "user.changed", "profile": {"key": "17", "version": 7}})
        await socket.catch_up({"key": "17", "version": 7}, socket.pushes)

    asyncio.run(scenario())
    assert frames == [{"type": "user.changed", "profile": pushed}, {"type": "profile", "profile": read_later}]


def test_a_check_loop_that_raised_says_so_and_starts_again(
    replica: dict[str, Any], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(freshness, "CHECK_SECONDS", 0.05)
    monkeypatch.setattr(freshness, "redis_epochs", lambda: Losses())
    rounds: list[int] = []
    real_check = Freshness.check

    async def check_failing_once(self: Freshness) -> int:
        rounds.append(len(rounds))
        if len(rounds) == 1:
            raise RuntimeError("a bug")
        return await real_check(self)

    monkeypatch.setattr(Freshness, "check", check_failing_once)

    async def scenario() -> None:
        watch = Freshness()
        watch.add("1", Socket("17", 3))
        await until(lambda: len(rounds) >= 3, what="two rounds after the one that raised")
        watch.discard("1", next(iter(watch.sockets["1"])))

    asyncio.run(scenario())
    stopped = [
        r for r in caplog.records if r.getMessage().startswith("user sockets: the freshness check stopped")
    ]
    assert len(stopped) == 1 and stopped[0].exc_info is not None


class Losses:
    """An epoch watch whose losses the test makes."""

    def __init__(self) -> None:
        self.losses = 0
        self.lost = asyncio.Event()
        self.waited = 0  # calls of next_loss so far

    def lose(self) -> None:
        self.losses += 1
        self.lost.set()
        self.lost = asyncio.Event()

    async def next_loss(self, timeout: float) -> None:
        self.waited += 1
        try:
            async with asyncio.timeout(timeout):
                await self.lost.wait()
        except TimeoutError:
            pass


def test_a_loss_during_a_check_gets_a_check_of_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    """Redis lost something while the process was checking: that check may have read too early, so another
    follows at once (after the rejoin), not a whole round later."""
    monkeypatch.setattr(freshness, "CHECK_SECONDS", 60.0)
    monkeypatch.setattr(freshness, "AFTER_LOSS_SECONDS", 0.01)
    epochs = Losses()
    monkeypatch.setattr(freshness, "redis_epochs", lambda: epochs)
    rounds: list[int] = []

    async def check(self: Freshness) -> int:
        rounds.append(epochs.losses)
        if len(rounds) == 1:
            epochs.lose()  # during the check
        return 0

    monkeypatch.setattr(Freshness, "check", check)

    async def scenario() -> None:
        watch = Freshness()
        watch.add("1", Socket("17", 3))
        await until(lambda: epochs.waited == 1, what="the loop waiting for its first round")
        epochs.lose()
        await until(lambda: len(rounds) >= 2, what="a second check")
        watch.discard("1", next(iter(watch.sockets["1"])))

    asyncio.run(scenario())
    assert rounds == [1, 2]


def test_a_loop_failing_at_its_start_is_restarted_once_a_round_not_in_a_spin(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(freshness, "CHECK_SECONDS", 0.1)
    starts: list[float] = []

    def broken_epochs() -> Losses:
        starts.append(asyncio.get_running_loop().time())
        raise RuntimeError("a bug")

    monkeypatch.setattr(freshness, "redis_epochs", broken_epochs)

    async def scenario() -> tuple[int, float, float]:
        watch = Freshness()
        watch.add("1", Socket("17", 3))
        await until(lambda: watch.restart is not None, what="a restart scheduled")
        assert watch.restart is not None
        started_before, restart_at = len(starts), watch.restart.when()  # a round on, not at once
        await until(lambda: len(starts) >= 2, what="the restart")
        watch.discard("1", next(iter(watch.sockets["1"])))
        return started_before, restart_at - starts[0], watch.restart is None

    started_before, restart_delay, timer_gone = asyncio.run(scenario())
    assert started_before == 1 and restart_delay >= 0.1 and timer_gone


def test_every_socket_gets_a_heartbeat_each_round_whatever_the_database_says(
    replica: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A page sends nothing: only frames tell it that its connection works. They must not wait on the
    check, whose queries may fail or hang; and they stop with the last socket."""
    monkeypatch.setattr(freshness, "HEARTBEAT_SECONDS", 0.01)
    monkeypatch.setattr(freshness, "redis_epochs", lambda: Losses())

    def down(pks: list[str]) -> dict[str, tuple[str, int]]:
        raise ConnectionError("the database is restarting")

    monkeypatch.setattr(freshness, "replica_versions", down)
    one, two = Socket("17", 3), Socket("", 0)

    async def scenario() -> asyncio.Task[None] | None:
        watch = Freshness()
        watch.add("1", one)
        watch.add("2", two)
        await until(lambda: one.heartbeats >= 3 and two.heartbeats >= 3, what="three rounds")
        beating = watch.heartbeats
        watch.discard("1", one)
        watch.discard("2", two)
        await asyncio.sleep(0)
        return beating

    beating = asyncio.run(scenario())
    assert beating is not None and beating.cancelled()


def test_a_socket_that_stopped_reading_does_not_hold_back_the_others_heartbeats(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Its send waits (up to its own timeout); the others' go out beside it, not after it."""
    monkeypatch.setattr(freshness, "HEARTBEAT_SECONDS", 0.01)
    stuck, healthy = Socket("17", 3), [Socket("18", 1), Socket("19", 1)]
    release = asyncio.Event()

    async def never_drains() -> None:
        stuck.heartbeats += 1
        await release.wait()

    stuck.heartbeat = never_drains  # type: ignore[method-assign]

    async def scenario() -> None:
        watch = Freshness()
        watch.add("1", stuck)  # first in the pass
        for index, socket in enumerate(healthy):
            watch.add(str(index + 2), socket)
        watch.task.cancel()  # the check is not under test
        await until(lambda: all(s.heartbeats for s in healthy), what="the healthy sockets' heartbeats")
        release.set()
        for socket in (stuck, *healthy):
            watch.discard("1" if socket is stuck else str(healthy.index(socket) + 2), socket)

    asyncio.run(scenario())
    assert stuck.heartbeats == 1
