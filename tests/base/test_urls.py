"""base.urls: the one URL parser, and SafeUrl, which never prints its credentials."""

from __future__ import annotations

import io
import json
import logging
import pickle

import pytest
from loguru import logger

from warmd.base import FetchError, HeaderCheck, MirrorSettings, Pin, SafeUrl, Skipped, WheelFile, host_of, place, reveal

SECRET = "https://alice:t0ps3cret@Wheels.Example.com:8443/simple/torch/torch-2.9.0-cp311-none-any.whl"


def test_a_safe_url_never_prints_its_password_or_token() -> None:
    token_only = SafeUrl("https://ghp_t0ps3cret@example.com/x.whl")  # a token as the user name
    for url, shown in ((SafeUrl(SECRET), "https://wheels.example.com:8443/simple/torch/torch-2.9.0-cp311-none-any.whl"),
                       (token_only, "https://example.com/x.whl")):
        printed = [str(url), repr(url), f"{url}", f"{url!r}", "%s" % url, "{}".format(url), url + "",
                   json.dumps({"url": url}), str(FetchError(f"could not fetch {url}")), str([url]),
                   repr(WheelFile(url, "x.whl", "0" * 64, None))]
        for text in printed:
            assert "t0ps3cret" not in text and "alice" not in text, text
        assert str(url) == shown
    # the full URL only when asked for by name, as a request needs it
    assert SafeUrl(SECRET).reveal() == SECRET and reveal(SafeUrl(SECRET)) == SECRET and reveal("x") == "x"
    assert pickle.loads(pickle.dumps(SafeUrl(SECRET))).reveal() == SECRET


def test_log_lines_of_a_safe_url_carry_no_secret() -> None:
    url = SafeUrl(SECRET)
    sink = io.StringIO()
    handler = logger.add(sink, format="{message}")
    try:
        logger.warning("fetching {} from {u}", url, u=url)
        logger.opt(exception=True).error(f"failed: {url}")
    finally:
        logger.remove(handler)
    std = io.StringIO()
    log = logging.getLogger("test_urls")
    log.addHandler(logging.StreamHandler(std))
    try:
        log.warning("fetching %s (%r)", url, url)
    finally:
        log.handlers.clear()
    text = sink.getvalue() + std.getvalue()
    assert "Wheels.Example.com" in text or "wheels.example.com" in text, text
    assert "t0ps3cret" not in text and "alice" not in text, text


def test_the_values_urls_enter_by_hold_safe_urls() -> None:
    """A str handed to the typed values at the seams becomes a SafeUrl: nothing downstream has to redact."""
    wheel = WheelFile(SECRET, "torch-2.9.0-cp311-none-any.whl", "0" * 64, None)
    pin = Pin("torch", "2.9.0", "https://alice:t0ps3cret@wheels.example.com/simple", wheel, "3.11", "linux")
    skipped = Skipped("torch", "2.9.0", "3.11", "why", url=SECRET, index=SECRET)
    mirror = MirrorSettings(SECRET, "http://bob:m1rr0rpass@mirror.lab/")
    header = HeaderCheck(SECRET, 200)
    values = [wheel.url, pin.index, skipped.url, skipped.index, mirror.origin, mirror.url, header.url]
    assert all(isinstance(v, SafeUrl) for v in values)
    text = repr((wheel, pin, skipped, mirror, header))
    assert "t0ps3cret" not in text and "m1rr0rpass" not in text, text
    assert wheel.url.reveal() == SECRET and mirror.url.reveal() == "http://bob:m1rr0rpass@mirror.lab/"


@pytest.mark.parametrize(("url", "expected"), [
    (SECRET, ("https", "wheels.example.com", 8443)),
    ("HTTP://Download.PyTorch.org./whl/cu128", ("http", "download.pytorch.org", 80)),
    ("git+https://github.com/org/repo", ("https", "github.com", 443)),
    ("https://[::1]/simple", ("https", "::1", 443)),
    ("https://host:notaport/x", None),
    ("file:///tmp/x.whl", None),
    ("/tmp/x.whl", None),
])
def test_one_parser_says_where_a_url_connects(url: str, expected: tuple[str, str, int] | None) -> None:
    p = place(url)
    assert (None if p is None else (p.scheme, p.host, p.port)) == expected
    assert host_of(url) == (expected[1] if expected else "")
    assert place(SafeUrl(url)) == p  # the same answer for the URL whichever form it is held in
