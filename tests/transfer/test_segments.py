"""How many connections a file gets, decided from measured rates (a simulated clock feeds the rates)."""

from __future__ import annotations

from warmd.transfer import EARLY, MEASURE, SURE, HostMeter, Pieces, Width

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


def _trial(second_rate: float, seconds: float = MEASURE + 0.05) -> tuple[Width, list[str], int]:
    clock, verdicts = Clock(), []
    w = Width(8, None, verdicts.append, fast=500 * MiB, clock=clock)
    assert w.state == "measure" and w.wanted() == 1
    assert _feed(w, clock, 10 * MiB, MEASURE + 0.05, remaining=500 * MiB) == 1  # a trial connection
    assert w.state == "trial" and w.wanted() == 2 and verdicts == []
    _feed(w, clock, 10 * MiB, 0.2, remaining=500 * MiB)  # the first stream alone: no measurement yet
    added = _feed(w, clock, second_rate, seconds, remaining=500 * MiB, joining=True)
    return w, verdicts, added


def test_a_server_capping_each_connection_opens_them_all() -> None:
    w, verdicts, added = _trial(20 * MiB)  # two streams, twice the rate
    assert (w.state, verdicts, added, w.wanted()) == ("wide", ["capped"], 6, 8)
    assert w.limit(64 * MiB) == 4 * MiB  # two pieces per connection for what is left


def test_a_cap_is_called_as_soon_as_the_trial_shows_the_gain_but_a_shared_link_waits_out_the_measurement() -> None:
    w, verdicts, added = _trial(20 * MiB, EARLY + 0.02)
    assert (w.state, verdicts, added) == ("wide", ["capped"], 6)
    w, verdicts, added = _trial(11 * MiB, EARLY + 0.02)
    assert (w.state, verdicts, added) == ("trial", [], 0)


def test_a_shared_link_stays_on_one_stream() -> None:
    w, verdicts, added = _trial(11 * MiB)  # two streams share what one had
    assert (w.state, verdicts, added, w.wanted()) == ("single", ["shared"], 0, 1)
    assert w.limit(64 * MiB) is None  # the rest in one request


def test_a_stream_faster_than_uv_unpacks_is_called_fast_and_gets_no_trial() -> None:
    clock, verdicts = Clock(), []
    w = Width(8, None, verdicts.append, fast=500 * MiB, clock=clock)
    assert _feed(w, clock, 600 * MiB, 0.2, 5000 * MiB) == 0
    assert (w.state, verdicts) == ("single", ["fast"])


def test_a_host_that_brought_more_than_a_socket_buffer_at_the_fast_rate_is_fast_before_a_window_has_passed() -> None:
    clock, verdicts = Clock(), []
    w = Width(8, None, verdicts.append, fast=500 * MiB, clock=clock)
    _feed(w, clock, 1000 * MiB, 0.01, 5000 * MiB)  # the first bytes only mark the start
    _feed(w, clock, 1000 * MiB, 0.02, 5000 * MiB)  # 20 MiB in 0.02 s: past SURE, twice the fast rate
    assert (w.state, verdicts) == ("single", ["fast"]) and w.stream_rate >= 500 * MiB
    # a burst smaller than a socket buffer decides nothing, however fast it came
    burst = Width(8, None, fast=500 * MiB, clock=clock)
    burst.received(1, 5000 * MiB, False)
    clock.t += 0.01
    burst.received(SURE - 1 * MiB, 5000 * MiB, False)
    assert burst.state == "measure"


def test_a_file_nearly_done_gets_no_trial_and_no_verdict() -> None:
    clock, verdicts = Clock(), []
    w = Width(8, None, verdicts.append, fast=500 * MiB, clock=clock)
    assert _feed(w, clock, 10 * MiB, MEASURE + 0.05, 5 * MiB) == 0
    assert (w.state, verdicts) == ("single", [])


def test_a_host_verdict_decides_from_the_start_and_one_request_measures() -> None:
    assert Width(8, "capped").state == "wide" and Width(1, None).state == "single"
    assert Width(8, "shared").state == Width(8, "fast").state == "single"
    assert Width(8, None).limit(64 * MiB) is None  # no gaps between requests in the measurement


def test_a_file_still_measuring_adopts_the_verdict_another_file_found() -> None:
    clock, verdicts = Clock(), []
    capped = Width(8, None, verdicts.append, fast=500 * MiB, clock=clock)
    _feed(capped, clock, 10 * MiB, 0.1, remaining=500 * MiB)
    capped.adopt("capped")
    assert capped.received(1, 500 * MiB, False) == 7  # every other connection at once
    assert capped.state == "wide" and capped.cut_first() and not capped.cut_first()  # the first stream cut once
    shared = Width(8, None, fast=500 * MiB, clock=clock)
    shared.adopt("shared")
    assert shared.received(1, 500 * MiB, False) == 0 and shared.state == "single"
    trial, _, _ = _trial(11 * MiB)  # a file past its own measurement keeps its own verdict
    trial.adopt("capped")
    assert trial.state == "single" and trial.received(1, 500 * MiB, False) == 0
    assert verdicts == []  # adopting is not finding: nothing reported back to the host


def _host_trial(total: float) -> tuple[Width, Width, list[str], int]:
    """Two files of one host, each one stream at 10 MiB/s; the first measures, and once its two
    trial connections join the host delivers `total` bytes/s, three quarters of it to that file."""
    clock, verdicts, meter = Clock(), [], HostMeter()
    a = Width(8, None, verdicts.append, fast=500 * MiB, meter=meter, clock=clock)
    b = Width(8, None, verdicts.append, fast=500 * MiB, meter=meter, clock=clock)
    meter.join(), meter.join()
    added = 0
    for _ in range(int((MEASURE + 0.05) / 0.01)):
        clock.t += 0.01
        added += a.received(int(10 * MiB * 0.01), 500 * MiB, False)
        assert b.received(int(10 * MiB * 0.01), 500 * MiB, False) == 0  # b follows: no trial of its own
    assert (a.state, b.state, added, a.wanted()) == ("trial", "measure", 2, 3)  # as many streams again
    for _ in range(int((MEASURE + 0.1) / 0.01)):
        clock.t += 0.01
        added += a.received(int(total * 0.75 * 0.01), 500 * MiB, True)
        b.received(int(total * 0.25 * 0.01), 500 * MiB, False)
    return a, b, verdicts, added


def test_a_shared_link_is_judged_by_the_hosts_total_not_by_one_files_bigger_share() -> None:
    # with three streams of the host's four, the measured file gets 1.5x its rate: the link is no faster
    a, b, verdicts, added = _host_trial(20 * MiB)
    assert (a.state, verdicts, added) == ("single", ["shared"], 2)
    assert abs(a.stream_rate - 10 * MiB) < 0.01 * MiB  # one stream's share of what the host gave two
    b.adopt("shared")
    assert b.received(1, 500 * MiB, False) == 0 and b.state == "single"


def test_a_cap_per_connection_is_seen_in_the_hosts_total() -> None:
    a, _, verdicts, added = _host_trial(40 * MiB)  # four streams bring twice what two did
    assert (a.state, verdicts, added, a.wanted()) == ("wide", ["capped"], 7, 8)


def test_a_file_that_ends_its_measurement_without_a_verdict_hands_it_to_the_next() -> None:
    clock, meter = Clock(), HostMeter()
    a = Width(8, None, fast=500 * MiB, meter=meter, clock=clock)
    b = Width(8, None, fast=500 * MiB, meter=meter, clock=clock)
    meter.join(), meter.join()
    assert _feed(a, clock, 10 * MiB, MEASURE + 0.05, 1 * MiB) == 0 and a.state == "single"  # nearly done
    assert _feed(b, clock, 10 * MiB, MEASURE + 0.05, 500 * MiB) == 2 and b.state == "trial"  # b measures now


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


def test_a_wide_file_that_ends_leaves_its_connections_to_the_hosts_other_wide_files() -> None:
    meter = HostMeter()
    ending, left, alone = Width(4, "capped", meter=meter), Width(4, "capped", meter=meter), Width(4, "shared", meter=meter)
    for _ in range(3):
        meter.join()
    meter.leave(ending)
    assert (left.most, left.wanted(), alone.wanted()) == (8, 8, 1)  # a shared link gains nothing from more
    assert left.received(MiB, 2 * MiB, False) == 2  # no more connections than pieces left to give them
    assert left.received(MiB, 64 * MiB, False) == 0  # a grant is opened once
    meter.leave(left)
    assert alone.most == 4


def test_connections_go_first_to_the_file_with_most_still_to_come() -> None:
    meter = HostMeter()
    ending, nearly_done, long = (Width(4, "capped", meter=meter) for _ in range(3))
    nearly_done.received(MiB, 1 * MiB, False)
    long.received(MiB, 500 * MiB, False)
    meter.leave(ending)
    assert (long.most, nearly_done.most) == (8, 4)


def test_connections_are_handed_on_only_to_the_last_files_and_never_pile_up() -> None:
    meter = HostMeter()
    ending, left = Width(4, "capped", meter=meter), Width(4, "capped", meter=meter, ceiling=12)
    meter.leave(ending, hand_on=False)  # another file of the host waits to start in its place
    assert left.most == 4
    for _ in range(3):
        meter.leave(Width(4, "capped", meter=meter))
    assert left.most == 12  # what the host had from all its files at once, no more
