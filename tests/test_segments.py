"""How many connections a file gets, decided from measured rates (a simulated clock feeds the rates)."""

from __future__ import annotations

from warmd.segments import MEASURE, Pieces, Width

MiB = 2**20


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def _feed(width: Width, clock: Clock, rate: float, seconds: float, remaining: int, joining: bool = False) -> int:
    """Deliver `rate` bytes/s in 10 ms reads for `seconds`; returns the connections asked for."""
    added = 0
    for _ in range(int(seconds / 0.01)):
        clock.t += 0.01
        added += width.received(int(rate * 0.01), remaining, joining)
    return added


def _trial(second_rate: float) -> tuple[Width, list[str], int]:
    clock, verdicts = Clock(), []
    w = Width(8, None, verdicts.append, fast=500 * MiB, clock=clock)
    assert w.state == "measure" and w.wanted() == 1
    assert _feed(w, clock, 10 * MiB, MEASURE + 0.05, remaining=500 * MiB) == 1  # a trial connection
    assert w.state == "trial" and w.wanted() == 2 and verdicts == []
    _feed(w, clock, 10 * MiB, 0.2, remaining=500 * MiB)  # the first stream alone: no measurement yet
    added = _feed(w, clock, second_rate, MEASURE + 0.05, remaining=500 * MiB, joining=True)
    return w, verdicts, added


def test_a_server_capping_each_connection_opens_them_all() -> None:
    w, verdicts, added = _trial(20 * MiB)  # two streams, twice the rate
    assert (w.state, verdicts, added, w.wanted()) == ("wide", ["capped"], 6, 8)
    assert w.limit(64 * MiB) == 4 * MiB  # two pieces per connection for what is left


def test_a_shared_link_stays_on_one_stream() -> None:
    w, verdicts, added = _trial(11 * MiB)  # two streams share what one had
    assert (w.state, verdicts, added, w.wanted()) == ("single", ["shared"], 0, 1)
    assert w.limit(64 * MiB) is None  # the rest in one request


def test_a_stream_faster_than_uv_unpacks_is_called_fast_and_gets_no_trial() -> None:
    clock, verdicts = Clock(), []
    w = Width(8, None, verdicts.append, fast=500 * MiB, clock=clock)
    assert _feed(w, clock, 600 * MiB, 0.2, 5000 * MiB) == 0
    assert (w.state, verdicts) == ("single", ["fast"])


def test_a_file_nearly_done_gets_no_trial_and_no_verdict() -> None:
    clock, verdicts = Clock(), []
    w = Width(8, None, verdicts.append, fast=500 * MiB, clock=clock)
    assert _feed(w, clock, 10 * MiB, MEASURE + 0.05, 5 * MiB) == 0
    assert (w.state, verdicts) == ("single", [])


def test_a_host_verdict_decides_from_the_start_and_one_request_measures() -> None:
    assert Width(8, "capped").state == "wide" and Width(1, None).state == "single"
    assert Width(8, "shared").state == Width(8, "fast").state == "single"
    assert Width(8, None).limit(64 * MiB) is None  # no gaps between requests in the measurement


def test_pieces_are_handed_out_front_first_and_a_long_one_shortened() -> None:
    p = Pieces([(0, 10), (20, 30)])
    a, b = p.take(4), p.take(None)
    assert (a.start, a.end, b.start, b.end, p.remaining()) == (0, 4, 4, 10, 10)
    c = p.take(100)
    assert (c.start, c.end) == (20, 30) and p.take(1) is None and p.remaining() == 0
    whole = Pieces([(0, 64 * MiB)])
    first = whole.take(None)
    first.pos = 10 * MiB
    whole.shorten(4 * MiB)  # the piece with most to come stops 4 MiB further; the rest is out again
    assert (first.end, whole.remaining()) == (14 * MiB, 50 * MiB)
    nxt = whole.take(2 * MiB)
    assert (nxt.start, nxt.end) == (14 * MiB, 16 * MiB)
