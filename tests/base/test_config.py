"""Config: every key of the example parses; unknown keys and wrong types name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from warmd.base import Config, ConfigError, load_config, parse_config

EXAMPLE = Path(__file__).resolve().parents[2] / "config.example.toml"


def test_example_config_is_complete_and_matches_the_defaults() -> None:
    cfg = load_config(EXAMPLE)
    default = Config()
    for field in ("variant", "roots", "packages", "python", "uv", "cache_dir", "store_max_size",
                  "recheck_interval", "download", "watch", "ahead", "warm_unhashed", "projects", "mirrors",
                  "trusted_indexes", "limits"):
        assert getattr(cfg, field) == getattr(default, field), field
    text = EXAMPLE.read_text()
    for key in ("variant", "roots", "packages", "python", "uv", "cache-dir", "store-dir", "store-max-size",
                "state-dir", "recheck-interval", "connections", "parallel-files", "timeout", "retries",
                "max-depth", "debounce", "ignore", "warm-unhashed", "path", "extras", "groups",
                "no-default-groups", "all-packages", "enable", "interval", "budget", "max-age", "on-metered",
                "on-battery", "origin", "url", "trusted-indexes", "per-project", "min-free", "total"):
        assert f"{key} =" in text, f"config.example.toml does not document {key}"


def test_values_are_read(tmp_path: Path) -> None:
    cfg = parse_config({
        "variant": "rocm6.3", "roots": ["~/src"], "python": ["3.12"], "uv": "~/bin/uv",
        "store-max-size": "1.5GiB", "recheck-interval": "30m",
        "download": {"connections": 4, "timeout": 5}, "watch": {"ignore": ["data"]},
    })
    assert cfg.variant == "rocm6.3"
    assert cfg.roots == (Path.home() / "src",)
    assert cfg.uv == str(Path.home() / "bin" / "uv")
    assert cfg.store_max_size == int(1.5 * 2**30)
    assert cfg.recheck_interval == 1800
    assert cfg.download.connections == 4 and cfg.download.timeout == 5.0
    assert "data" in cfg.watch.ignore and ".venv" in cfg.watch.ignore


@pytest.mark.parametrize(
    "data, words",
    [
        ({"varient": "cpu"}, "unknown key varient"),
        ({"download": {"conections": 2}}, "unknown key download.conections"),
        ({"variant": "cuda"}, "variant"),
        ({"variant": 128}, "variant must be a string"),
        ({"roots": "~/src"}, "roots must be a list"),
        ({"roots": [1]}, "roots must be a list of strings"),
        ({"python": ["3"]}, "python"),
        ({"download": {"connections": 0}}, "download.connections"),
        ({"download": {"connections": True}}, "download.connections must be a whole number"),
        ({"download": 3}, "download must be a table"),
        ({"store-max-size": "big"}, "store-max-size"),
        ({"recheck-interval": "5s"}, "at least a minute"),
        ({"watch": {"debounce": -1}}, "watch.debounce"),
        ({"warm-unhashed": "yes"}, "warm-unhashed must be true or false"),
        ({"ahead": {"enable": 1}}, "ahead.enable must be true or false"),
        ({"ahead": {"interval": "10s"}}, "ahead.interval must be at least a minute"),
        ({"ahead": {"budget": "lots"}}, "ahead.budget"),
        ({"limits": {"total": "lots"}}, r"limits\.total = 'lots' is not a size like \"50GiB\""),
        ({"limits": {"total": -1}}, r"limits\.total = -1 is below 0 \(0 means no cap\)"),
        ({"limits": {"total": True}}, "limits.total must be a size"),
        ({"ahead": {"packages": "torch"}}, "ahead.packages must be a list"),
        ({"ahead": {"on-wifi": True}}, "unknown key ahead.on-wifi"),
        ({"project": {"path": "x"}}, r"project must be an array of tables \(\[\[project\]\]\)"),
        ({"project": [{"extras": ["gpu"]}]}, r"project\[0\]\.path is missing"),
        ({"project": [{"path": "x", "extra": ["gpu"]}]}, r"unknown key project\[0\]\.extra"),
        ({"project": [{"path": "x", "variant": "cuda"}]}, r"project\[0\]\.variant = 'cuda'"),
        ({"project": [{"path": "x", "groups": "gpu"}]}, r"project\[0\]\.groups must be a list"),
        ({"project": [{"path": "/x"}, {"path": "/x/"}]}, "two \\[\\[project\\]\\] tables for /x"),
        ({"mirrors": {"origin": "https://a/", "url": "http://m/"}}, r"mirrors must be an array of tables"),
        ({"mirrors": [{"origin": "https://a/"}]}, r"mirrors\[0\]\.url is missing"),
        ({"mirrors": [{"origin": "https://a/", "url": "wheels.lab:3142"}]}, r"mirrors\[0\]\.url = 'wheels.lab:3142' is not an http"),
        ({"mirrors": [{"origin": "file:///srv", "url": "http://m/"}]}, r"mirrors\[0\]\.origin = 'file:///srv'"),
        ({"mirrors": [{"origin": "https://a/", "url": "http://m/", "urls": []}]}, r"unknown key mirrors\[0\]\.urls"),
    ],
)
def test_bad_values_name_the_key(data: dict, words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        parse_config(data, source=Path("c.toml"))


def test_the_look_ahead_is_off_by_default_and_upgrades_what_warmd_warms() -> None:
    default = parse_config({"packages": ["torch", "nvidia-*"]})
    assert default.ahead.enable is False and default.ahead.packages == ("torch", "nvidia-*")
    assert not default.ahead.on_metered and not default.ahead.on_battery
    cfg = parse_config({"ahead": {"enable": True, "packages": ["torch"], "interval": "6h", "budget": "2GiB",
                                  "max-age": "3d", "on-metered": True}})
    assert (cfg.ahead.enable, cfg.ahead.packages, cfg.ahead.interval) == (True, ("torch",), 6 * 3600)
    assert (cfg.ahead.budget, cfg.ahead.max_age, cfg.ahead.on_metered) == (2 * 2**30, 3 * 86400, True)


def test_the_whole_plan_is_the_default_and_the_old_default_list_counts_as_unset() -> None:
    """A config copied from the old example named the old default list: it gets the new default, said once."""
    from loguru import logger

    from warmd.base import GPU_PACKAGES
    from warmd.base.config import _OLD_DEFAULT_PACKAGES

    assert Config().packages is None and Config().ahead.packages == GPU_PACKAGES
    old = sorted(_OLD_DEFAULT_PACKAGES)
    said: list[str] = []
    sink = logger.add(said.append, format="{message}")
    try:
        for _ in range(2):
            cfg = parse_config({"packages": old}, source=Path("/x/old.toml"))
            assert cfg.packages is None and cfg.ahead.packages == GPU_PACKAGES
    finally:
        logger.remove(sink)
    assert sum("once shipped as its default" in line for line in said) == 1
    narrowed = parse_config({"packages": old[:-1]})
    assert narrowed.packages == tuple(old[:-1]) == narrowed.ahead.packages  # any other list is the user's
    with pytest.raises(ConfigError, match=r"packages = \[\] warms nothing"):
        parse_config({"packages": []})


def test_project_tables_are_read_with_paths_from_the_config_folder(tmp_path: Path) -> None:
    cfg = parse_config({"project": [
        {"path": "proj", "extras": ["gpu"], "variant": "cu128"},
        {"path": "~/ws", "groups": [], "no-default-groups": True, "all-packages": True},
    ]}, source=tmp_path / "warmd.toml")
    first, second = cfg.projects
    assert first.path == tmp_path / "proj" and first.extras == ("gpu",) and first.groups is None
    assert first.variant == "cu128" and not first.no_default_groups
    assert second.path == Path.home() / "ws" and second.groups == () and second.extras is None
    assert second.no_default_groups and second.all_packages and second.variant is None


def test_mirrors_are_read_in_order() -> None:
    cfg = parse_config({"mirrors": [
        {"origin": "https://download.pytorch.org/", "url": "http://wheels.lab:3142/download.pytorch.org/"},
        {"origin": "https://files.pythonhosted.org", "url": "https://cache.lab/pypi"},
    ]})
    assert [(m.origin, m.url) for m in cfg.mirrors] == [
        ("https://download.pytorch.org/", "http://wheels.lab:3142/download.pytorch.org/"),
        ("https://files.pythonhosted.org", "https://cache.lab/pypi"),
    ]


def test_missing_default_file_means_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    assert load_config() == Config()
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.toml")
