"""Which wheel a mirror serves is decided on the parsed URL, never on a string prefix."""

from __future__ import annotations

import pytest

from warmd.base import MirrorSettings
from warmd.transfer import mirror_for, mirror_url

MIRROR = MirrorSettings("https://mirror.example.com/simple/", "http://user:m1rr0r@cache.lab:3142/pytorch/")
WHEEL = "torch-2.9.0+cu128-cp311-cp311-manylinux_2_28_x86_64.whl"


@pytest.mark.parametrize("url", [
    f"https://mirror.example.com/simple/torch/{WHEEL}",
    f"https://MIRROR.example.com:443/simple/torch/{WHEEL}",  # the same server, spelt otherwise
    f"https://token:x@mirror.example.com/simple/torch/{WHEEL}",  # the lock's login goes nowhere near the mirror
])
def test_a_wheel_under_the_origin_goes_to_the_mirror(url: str) -> None:
    assert mirror_for([MIRROR], url) is MIRROR
    at = mirror_url(MIRROR, url)
    assert at.reveal() == f"http://user:m1rr0r@cache.lab:3142/pytorch/torch/{WHEEL}"
    assert str(at) == f"http://cache.lab:3142/pytorch/torch/{WHEEL}"  # printed without the mirror's login


@pytest.mark.parametrize("url", [
    f"https://mirror.example.com.evil/simple/torch/{WHEEL}",  # a look-alike host
    f"https://mirror.example.com@evil.example/simple/torch/{WHEEL}",  # the origin's name as a user name
    f"https://mirror.example.com/simple2/torch/{WHEEL}",  # a look-alike path
    f"https://mirror.example.com/simple/../private/{WHEEL}",  # a path that climbs out
    f"http://mirror.example.com/simple/torch/{WHEEL}",  # another scheme
    f"https://mirror.example.com:8443/simple/torch/{WHEEL}",  # another port
])
def test_a_look_alike_is_not_taken_for_the_mirror(url: str) -> None:
    assert mirror_for([MIRROR], url) is None


def test_the_longest_origin_wins() -> None:
    deeper = MirrorSettings("https://mirror.example.com/simple/torch", "http://other.lab/torch/")
    url = f"https://mirror.example.com/simple/torch/{WHEEL}"
    assert mirror_for([MIRROR, deeper], url) is deeper
    assert mirror_url(deeper, url).reveal() == f"http://other.lab/torch/{WHEEL}"
