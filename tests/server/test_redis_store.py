"""``RedisStore`` under a ``Hub``, in one process, against a real ``redis-server``.

Claims and their settling, and a node's feed with holes in it: what the
multi-process tests (test_hub_redis.py) can only hit by chance.
"""

from __future__ import annotations

import json
import threading
from typing import Any, Callable, List

import pytest

from tether_sync.server import Hub, Message
from tether_sync.server.hub import Peer
from tether_sync.server.store import Publication


def _store(redis_server: Any, **options: Any) -> Any:
    from tether_sync.server import RedisStore

    return RedisStore(redis_server.url, **options)


def _messages(sid: str, seqs: List[int]) -> List[Message]:
    return [Message(sid, "c", seq, None, seq, {"channel": "c", "payload": seq}) for seq in seqs]


class RecordingPeer(Peer):
    """The hub's side of a connection: what would have been written to it."""

    def __init__(self, resume: bool = True) -> None:
        self.resume = resume
        self.frames: List[Any] = []
        self.cond = threading.Condition()

    def post(self, text: str) -> bool:
        with self.cond:
            self.frames.append(json.loads(text))
            self.cond.notify_all()
        return True

    def wait(self, predicate: Callable[[List[Any]], bool], timeout: float = 10.0) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: predicate(self.frames), timeout)

    def offsets(self) -> List[int]:
        return [f["offset"] for f in self.frames if f.get("type") == "data"]


@pytest.fixture
def hubs() -> Any:
    made: List[Hub] = []
    yield made
    for hub in made:
        hub.close()


def test_a_restarted_node_settles_its_claim_from_its_record_and_nothing_is_redelivered(
    redis_server: Any, hubs: List[Hub]
) -> None:
    # Node "n" claimed seq 1-5 of session s, delivered (recorded) 1-3, and was killed.
    crashed = Hub(_store(redis_server), node="n")
    hubs.append(crashed)
    crashed.start()
    assert crashed.store.claim("s", "n/1", [1, 2, 3, 4, 5]) == [1, 2, 3, 4, 5]
    other = Hub(_store(redis_server), node="m")
    hubs.append(other)
    other.start()
    assert other.store.claim("s", "m/1", [1, 2, 3, 4, 5]) is None  # n's lease holds it

    restarted = Hub(_store(redis_server), node="n")
    hubs.append(restarted)
    restarted.start(settle=lambda sid: 3 if sid == "s" else 0)
    assert restarted.store.highest("s") == 3

    delivered: List[Message] = []
    flags, highest = other._accept_run(
        "s", "m/1", _messages("s", [1, 2, 3, 4, 5]), delivered.append
    )
    assert [m.seq for m in delivered] == [4, 5]
    assert flags == [False, False, False, True, True]
    assert highest == 5
    assert other.metrics.duplicates_dropped == 3


def test_a_dead_owners_claim_is_taken_over_when_its_lease_ends(
    redis_server: Any, hubs: List[Hub]
) -> None:
    dead = Hub(_store(redis_server, lease=0.3), node="dead")
    hubs.append(dead)
    dead.start()
    assert dead.store.claim("s", "dead/1", [1, 2]) == [1, 2]
    other = Hub(_store(redis_server), node="other")
    hubs.append(other)
    delivered: List[Message] = []
    _, highest = other._accept_run("s", "other/1", _messages("s", [1, 2]), delivered.append)
    # Nothing was committed by the dead owner: the run is delivered (once, here).
    assert [m.seq for m in delivered] == [1, 2] and highest == 2


def test_a_node_fills_a_gap_in_its_feed_from_the_stream(redis_server: Any, hubs: List[Hub]) -> None:
    publisher = Hub(_store(redis_server), node="a")
    node = Hub(_store(redis_server), node="b")
    hubs.extend([publisher, node])
    node.start()
    feed = node.store._feed
    lost = {4, 5}
    node.store._feed = lambda pub: None if pub.offset in lost else feed(pub)  # lost messages

    peer = RecordingPeer()
    node._subscribe(peer, "news", None, None, True)
    assert peer.frames[0]["type"] == "tether:subscribed"
    for n in range(1, 7):
        publisher.publish("news", n)
    assert peer.wait(lambda frames: len(frames) >= 7)
    assert peer.offsets() == [1, 2, 3, 4, 5, 6]
    assert [f["payload"] for f in peer.frames[1:]] == [1, 2, 3, 4, 5, 6]


def test_a_gap_the_history_no_longer_covers_is_said_with_recovered_false(
    redis_server: Any, hubs: List[Hub]
) -> None:
    publisher = Hub(_store(redis_server), node="a", history_size=2)
    node = Hub(_store(redis_server), node="b")
    hubs.extend([publisher, node])
    node.start()
    feed = node.store._feed
    lost = {4, 5, 6, 7}
    node.store._feed = lambda pub: None if pub.offset in lost else feed(pub)

    resumed, plain = RecordingPeer(), RecordingPeer(resume=False)
    node._subscribe(resumed, "news", None, None, True)
    node._subscribe(plain, "news", None, None, False)
    for n in range(1, 9):
        publisher.publish("news", n)
    assert resumed.wait(lambda frames: any(f.get("payload") == 8 for f in frames))
    epoch = resumed.frames[0]["epoch"]
    assert resumed.frames[-2:] == [
        {
            "type": "tether:subscribed",
            "channel": "news",
            "recovered": False,
            "epoch": epoch,
            "offset": 7,
        },
        {"channel": "news", "type": "data", "payload": 8, "offset": 8, "epoch": epoch},
    ]
    assert node.metrics.not_recovered == 1
    # A plain (§3) subscriber is told nothing, and gets no offsets.
    assert plain.wait(lambda frames: len(frames) == 4)
    assert plain.frames[-1] == {"channel": "news", "type": "data", "payload": 8}


def test_a_resubscribe_recovers_from_the_stream_on_another_node(
    redis_server: Any, hubs: List[Hub]
) -> None:
    a = Hub(_store(redis_server), node="a")
    b = Hub(_store(redis_server), node="b")
    hubs.extend([a, b])
    for n in range(1, 6):
        a.publish("news", n)
    epoch, newest = b.store.position("news")
    assert newest == 5
    peer = RecordingPeer()
    b._subscribe(peer, "news", epoch, 2, True)
    assert peer.frames[0] == {
        "type": "tether:subscribed",
        "channel": "news",
        "recovered": True,
        "epoch": epoch,
        "offset": 2,
    }
    assert peer.offsets() == [3, 4, 5]
    assert b.metrics.recovered == 1
    # An unknown epoch is not recovered: the newest position, no replay.
    other = RecordingPeer()
    b._subscribe(other, "news", "old-epoch", 2, True)
    assert other.frames == [
        {
            "type": "tether:subscribed",
            "channel": "news",
            "recovered": False,
            "epoch": epoch,
            "offset": 5,
        }
    ]


def test_store_publication_round_trips_through_pub_sub(redis_server: Any, hubs: List[Hub]) -> None:
    # The feed carries exactly what the script numbered.
    hub = Hub(_store(redis_server), node="a")
    hubs.append(hub)
    got: List[Publication] = []
    seen = threading.Event()
    hub.store.open("a", lambda pub: (got.append(pub), seen.set()), lambda: None)
    hub._feeding = True
    pub = hub.store.publish("x", {"channel": "x", "type": "data", "payload": "é"})
    assert seen.wait(10)
    assert got == [Publication("x", pub.epoch, 1, pub.text)]
    assert json.loads(pub.text) == {
        "channel": "x",
        "type": "data",
        "payload": "é",
        "offset": 1,
        "epoch": pub.epoch,
    }


def test_a_commit_lost_to_a_redis_restart_is_settled_before_the_next_claim(
    redis_server: Any, hubs: List[Hub]
) -> None:
    from tether_sync.server import StoreUnavailable

    hub = Hub(_store(redis_server), node="n")
    hubs.append(hub)
    delivered: List[int] = []

    def deliver(msg: Message) -> None:
        delivered.append(msg.seq or 0)
        if msg.seq == 2:
            redis_server.stop()  # Redis goes away between delivery and commit

    with pytest.raises(StoreUnavailable):
        hub._accept_run("s", "n/1", _messages("s", [1, 2]), deliver)
    redis_server.start()
    # The client reconnects (a new owner on this node) and resends 1-3: 1 and 2
    # were delivered before the failure, so only 3 is new, and at once (no lease wait).
    flags, highest = hub._accept_run("s", "n/2", _messages("s", [1, 2, 3]), deliver)
    assert delivered == [1, 2, 3]
    assert flags == [False, False, True] and highest == 3
