"""The flake and both Nix modules, evaluated by the real module system: nixpkgs' lib and
home-manager's own systemd and xdg modules (../shared/nix beside the checkout), with stand-ins only
for the rest of NixOS and for pkgs. Each module renders the [Service] `warmd install-service` writes."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest

from tests.support.prereqs import SHARED_NIX, need
from warmd.base import Config
from warmd.service import install_service

REPO = Path(__file__).resolve().parents[1]
# The tree whose Nix files are evaluated: this checkout, or a broken copy of it in the test of
# these tests at the end.
ROOT = Path(os.environ.get("WARMD_TEST_NIX_ROOT") or REPO)
NIX_FILES = [REPO / "flake.nix", *sorted((REPO / "nix").glob("*.nix")), *sorted((REPO / "tests" / "support").glob("*.nix"))]
MODULES = ("nixos", "home-manager")
pytestmark = pytest.mark.usefixtures("nix")


@pytest.fixture
def nix() -> None:
    """nix-instantiate and ../shared/nix; missing, each test says what to install (fails under CI)."""
    need("nix-instantiate")
    need("nix-shared")


def _run(expr: str) -> subprocess.CompletedProcess[str]:
    """nix-instantiate on `expr`, which sees `t`: tests/support/modules.nix for ROOT."""
    prelude = (f'let t = import (/. + "{REPO / "tests/support/modules.nix"}") {{ shared = /. + "{SHARED_NIX}"; '
               f'root = /. + "{ROOT}"; }}; inherit (t) lib; in ')
    return subprocess.run([str(need("nix-instantiate")), "--eval", "--strict", "--json", "--expr", prelude + expr],
                          capture_output=True, text=True, timeout=120)


def nix_eval(expr: str) -> Any:
    """The value of `expr`, as JSON."""
    done = _run(expr)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def nix_error(expr: str) -> str:
    """The error `expr` fails with (it must fail), on one line."""
    done = _run(expr)
    assert done.returncode != 0, f"evaluated to {done.stdout}"
    return " ".join(done.stderr.split())


def evaluate(module: str, *definitions: str, system: str = "x86_64-linux") -> str:
    """An expression for the config of a system (`nixos`) or a home (`home-manager`) with `definitions`
    (each a module of its own, as in a user's several files)."""
    modules = " ".join(f"{{ {d} }}" for d in definitions)
    if module == "nixos":
        return f"(t.nixos {{ modules = [ {modules} ]; }})"
    return f'(t.home {{ system = "{system}"; modules = [ {modules} ]; }})'


def enabled(module: str, more: str = "") -> str:
    """The least that turns the service on, and `more` in services.warmd."""
    users = 'users = [ "alice" ]; ' if module == "nixos" else ""
    return f"services.warmd = {{ enable = true; {users}{more}}};"


def unit_of(module: str) -> str:
    """A function of a config to what module_unit() reads."""
    if module == "nixos":
        return '(c: { text = c.systemd.user.units."warmd.service".text; })'
    return "(c: { service = c.systemd.user.services.warmd; })"


# ---------------------------------------------------------------------------------------------
# Unit files, as systemd reads them


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """A unit file's sections: each key with its values, one per line, in order."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def hm_unit(service: dict[str, dict[str, object]]) -> dict[str, dict[str, list[str]]]:
    """systemd.user.services.<name> of home-manager as its unit file has it: lists are one line
    per item, booleans true/false, nulls and empty lists left out (modules/systemd.nix)."""
    def line(value: object) -> str:
        return ("true" if value else "false") if isinstance(value, bool) else str(value)
    unit: dict[str, dict[str, list[str]]] = {}
    for name, section in service.items():
        for key, value in section.items():
            if value is None or value == []:
                continue
            unit.setdefault(name, {})[key] = [line(v) for v in value] if isinstance(value, list) else [line(value)]
    return unit


def module_unit(module: str, got: dict[str, Any]) -> dict[str, dict[str, list[str]]]:
    """The unit file a module renders, from what unit_of() evaluated to."""
    return parse_unit(got["text"]) if module == "nixos" else hm_unit(got["service"])


# ---------------------------------------------------------------------------------------------
# The rendered service for a typical configuration

SETTINGS = 'settings = { variant = "auto"; roots = [ "~/src" ]; download.connections = 8; }; '
SETTINGS_JSON = {"variant": "auto", "roots": ["~/src"], "download": {"connections": 8}}
NIXOS_PATH = ["uv", "coreutils", "findutils", "gnugrep", "gnused", "systemd"]  # uv, then NixOS's default path


def test_nixos_module_renders_the_user_service() -> None:
    got = nix_eval(f"""let c = {evaluate("nixos", f'services.warmd = {{ enable = true; users = [ "alice" "bob" ]; {SETTINGS}}};')};
      in {unit_of("nixos")} c // {{ settings = c.services.warmd.settings; failed = c.failedAssertions;
            options = builtins.attrNames (t.nixos {{ modules = [ ]; }}).services.warmd; }}""")
    unit = module_unit("nixos", got)
    # Several triggering conditions ("|"): the unit starts for any one of the listed users.
    assert unit["Unit"]["ConditionUser"] == ["|alice", "|bob"]
    service = unit["Service"]
    assert service["ExecStart"] == ["/nix/store/warmd/bin/warmd --config /nix/store/warmd.toml run"]
    env = dict(item.split("=", 1) for line in service["Environment"] for item in shlex.split(line))
    assert env["UV_CACHE_DIR"] == "%C/uv"
    # warmd's folders for each user, under that user's XDG folders (pinned, as install-service does).
    assert (env["XDG_CONFIG_HOME"], env["XDG_CACHE_HOME"], env["XDG_STATE_HOME"]) == ("%E", "%C", "%h/.local/state")
    assert service["ExecStartPre"] == ["+/nix/store/coreutils/bin/mkdir -p %C/uv %C/warmd/store %h/.local/state/warmd"]
    assert service["ReadWritePaths"] == ["%C/uv", "%C/warmd/store", "%h/.local/state/warmd"]
    # NixOS appends its default path after `path`: uv stays first.
    assert env["PATH"].split(":") == [f"/nix/store/{p}/{d}" for d in ("bin", "sbin") for p in NIXOS_PATH]
    assert unit["Install"] == {"WantedBy": ["default.target"]}
    assert got["settings"] == SETTINGS_JSON  # what the TOML file is generated from
    assert got["failed"] == []
    assert got["options"] == ["enable", "mirror", "package", "sandbox", "settings", "users", "uvPackage"]


@pytest.mark.parametrize("module", MODULES)
def test_folders_from_the_settings_are_made_and_allowed(module: str) -> None:
    folders = 'settings = { cache-dir = "/data/uv"; store-dir = "~/big/warmd"; state-dir = "/data/state"; }; '
    got = nix_eval(f"""let c = {evaluate(module, enabled(module, folders))}; in {unit_of(module)} c""")
    service = module_unit(module, got)["Service"]
    expected = "/data/uv %h/big/warmd /data/state"  # "~/" as warmd reads it, "%h/" as systemd does
    assert service["ExecStartPre"] == [f"+/nix/store/coreutils/bin/mkdir -p {expected}"]
    assert " ".join(service["ReadWritePaths"]) == expected
    assert "UV_CACHE_DIR=/data/uv" in " ".join(service["Environment"])


def test_nixos_module_wants_a_user_and_is_off_until_enabled() -> None:
    got = nix_eval(f"""{{
      none = {evaluate("nixos", "services.warmd.enable = true;")}.failedAssertions;
      off = builtins.attrNames {evaluate("nixos", 'services.warmd.users = [ "alice" ];')}.systemd.user.units; }}""")
    assert got == {"none": ["services.warmd.users must name at least one user to run warmd for."], "off": []}


def test_home_manager_module_renders_the_user_service() -> None:
    got = nix_eval(f"""let c = {evaluate("home-manager", enabled("home-manager", SETTINGS))};
      in {unit_of("home-manager")} c // {{ files = builtins.attrNames c.xdg.configFile;
            config = c.xdg.configFile."warmd/config.toml".source.value; failed = c.failedAssertions;
            packages = map (p: p.name) c.home.packages;
            options = builtins.attrNames (t.home {{ modules = [ ]; }}).services.warmd; }}""")
    unit = module_unit("home-manager", got)
    service = unit["Service"]
    assert service["ExecStart"] == ["/nix/store/warmd/bin/warmd --config /home/alice/.config/warmd/config.toml run"]
    # This user's XDG folders as home-manager knows them, pinned for warmd (config, store, state).
    # uv first; then this user's Nix profile (either place home-manager installs to), the default
    # profile and NixOS's system folder, before the folders of other systems.
    assert service["Environment"] == ["PATH=/nix/store/uv/bin:%h/.nix-profile/bin:/etc/profiles/per-user/%u/bin:"
                                      "/nix/var/nix/profiles/default/bin:/run/current-system/sw/bin:"
                                      "/usr/local/bin:/usr/bin:/bin",
                                      "UV_CACHE_DIR=/home/alice/.cache/uv", "XDG_CACHE_HOME=/home/alice/.cache",
                                      "XDG_CONFIG_HOME=/home/alice/.config", "XDG_STATE_HOME=/home/alice/.local/state"]
    folders = ["/home/alice/.cache/uv", "/home/alice/.cache/warmd/store", "/home/alice/.local/state/warmd"]
    assert service["ExecStartPre"] == ["+/nix/store/coreutils/bin/mkdir -p " + " ".join(folders)]
    assert service["ReadWritePaths"] == folders
    assert unit["Install"] == {"WantedBy": ["default.target"]}
    # The settings go where warmd looks by default, and a new file restarts the service.
    assert got["config"] == SETTINGS_JSON
    assert unit["Unit"]["X-Restart-Triggers"] == ["/nix/store/warmd-config.toml"]
    assert got["files"] == ["systemd/user/default.target.wants/warmd.service", "systemd/user/warmd.service",
                            "warmd/config.toml"]
    assert got["packages"] == ["warmd"]  # `warmd status` and `warmd doctor` in the user's shell
    assert got["failed"] == []
    assert got["options"] == ["enable", "package", "sandbox", "settings", "uvPackage"]


def test_home_manager_module_is_linux_only() -> None:
    got = nix_eval(f"""{{
      mac = {evaluate("home-manager", "services.warmd.enable = true;", system="aarch64-darwin")}.failedAssertions;
      off = {evaluate("home-manager", "", system="aarch64-darwin")}.failedAssertions; }}""")
    assert got["off"] == []
    [message] = got["mac"]
    assert message.startswith("The module services.warmd does not support your platform.")
    assert "  - x86_64-linux" in message and "  - aarch64-linux" in message


# ---------------------------------------------------------------------------------------------
# What a user can get wrong, refused with the option's name


def built(module: str) -> str:
    """A function of a config to what switching to it evaluates: the unit, the config file, the mirror."""
    if module == "nixos":
        return ('(c: [ c.systemd.user.units."warmd.service".text c.services.warmd.settings '
                "c.services.nginx.appendHttpConfig c.networking.firewall.allowedTCPPorts c.failedAssertions ])")
    return '(c: [ c.systemd.user.services.warmd c.xdg.configFile."warmd/config.toml".source.value c.failedAssertions ])'


MISTAKES = [
    # (id, the modules it applies to, the user's definition, what the error says)
    ("users-not-a-list", ["nixos"], 'services.warmd.users = "alice";',
     ["A definition for option `services.warmd.users' is not of type `list of string'"]),
    ("null-in-settings", MODULES, 'services.warmd.settings.roots = [ "~/src" null ];',
     ["A definition for option `services.warmd.settings.roots.", "is not of type `TOML value'"]),
    ("port-out-of-range", ["nixos"], "services.warmd.mirror = { enable = true; port = 70000; };",
     ["A definition for option `services.warmd.mirror.port' is not of type `16 bit unsigned integer"]),
    ("misspelt-option", MODULES, "services.warmd.setings.roots = [ ];",
     ["The option `services.warmd.setings' does not exist.", "Did you mean `services.warmd.settings'"]),
    # home-manager's unit sections are freeform: it checks no Restart= value.
    ("restart-sometimes", ["nixos"], 'systemd.user.services.warmd.serviceConfig.Restart = "sometimes";',
     ["Systemd Service field `Restart' cannot have value `sometimes'",
      "A definition for option `systemd.user.services.warmd.serviceConfig' is not of type"]),
    ("two-execstart", ["nixos"], 'systemd.user.services.warmd.serviceConfig.ExecStart = "/opt/warmd/bin/warmd run";',
     ["The option `systemd.user.services.warmd.serviceConfig.ExecStart' has conflicting definition values",
      "/opt/warmd/bin/warmd run"]),
    ("two-execstart", ["home-manager"], 'systemd.user.services.warmd.Service.ExecStart = "/opt/warmd/bin/warmd run";',
     ["The option `systemd.user.services.warmd.Service.ExecStart' has conflicting definition values",
      "/opt/warmd/bin/warmd run"]),
]


@pytest.mark.parametrize(("module", "mistake", "says"), [
    pytest.param(module, mistake, says, id=f"{module}-{name}")
    for name, modules, mistake, says in MISTAKES for module in modules])
def test_a_mistake_is_refused_naming_the_option(module: str, mistake: str, says: list[str]) -> None:
    error = nix_error(f"{built(module)} {evaluate(module, enabled(module), mistake)}")
    for words in says:
        assert words in error


def test_every_mistake_evaluates_without_it() -> None:
    """What the mistakes are added to builds, assertions met: each error above is the mistake's."""
    nixos, home = nix_eval(f"[ ({built('nixos')} {evaluate('nixos', enabled('nixos'), 'services.warmd.mirror.enable = true;')}) "
                           f"({built('home-manager')} {evaluate('home-manager', enabled('home-manager'))}) ]")
    assert nixos[-1] == home[-1] == []


@pytest.mark.parametrize("module", MODULES)
def test_mkforce_overrides_a_unit_setting(module: str) -> None:
    section = "serviceConfig" if module == "nixos" else "Service"
    force = f'systemd.user.services.warmd.{section} = {{ ExecStart = lib.mkForce "/opt/warmd/bin/warmd run"; Nice = lib.mkForce 5; }};'
    got = nix_eval(f"{unit_of(module)} {evaluate(module, enabled(module), force)}")
    service = module_unit(module, got)["Service"]
    assert service["ExecStart"] == ["/opt/warmd/bin/warmd run"]
    assert service["Nice"] == ["5"]
    assert service["Restart"] == ["on-failure"]  # the rest is the module's


def test_mirror_option_sets_up_nixos_nginx_with_the_shipped_config() -> None:
    """services.warmd.mirror.enable (without warmd itself) gives NixOS's nginx contrib/nginx's config, filled in."""
    got = nix_eval(f"""let
        c = {evaluate("nixos", "services.warmd.mirror = { enable = true; openFirewall = true; };")};
        other = {evaluate("nixos", 'services.warmd.mirror = { enable = true; address = "10.0.0.5"; }; '
                                   'networking.nameservers = [ "10.0.0.1" ];')};
      in {{
        units = builtins.attrNames c.systemd.user.units;
        nginx = c.services.nginx.enable;
        nginxArgs = c.services.nginx.package.overrideArgs;
        http = c.services.nginx.appendHttpConfig;
        firewall = c.networking.firewall.allowedTCPPorts;
        otherHttp = other.services.nginx.appendHttpConfig;
        otherFirewall = other.networking.firewall.allowedTCPPorts;
      }}""")
    assert got["units"] == [] and got["nginx"] is True
    assert got["nginxArgs"] == {"withSlice": True}  # nixpkgs' nginx leaves the slice module out by default
    shipped = (ROOT / "contrib" / "nginx" / "warmd-mirror.conf").read_text()
    http = got["http"]
    code = [line.split("#", 1)[0] for line in http.splitlines()]
    assert not any("@" in line for line in code), "a placeholder left unfilled"
    assert "listen 3142;" in http and "proxy_cache_path /var/cache/nginx/warmd " in http
    assert "max_size=500g" in http and "resolver 127.0.0.53 " in http
    assert "proxy_ssl_trusted_certificate /etc/ssl/certs/ca-certificates.crt;" in http
    # The rest is the shipped file, line for line.
    assert len(http.splitlines()) == len(shipped.splitlines())
    assert "include /nix/store/warmd-mirror-origins.map;" in http
    assert got["firewall"] == [3142]
    # The system's own name server, an address of its own, and the firewall left shut.
    assert "listen 10.0.0.5:3142;" in got["otherHttp"] and "resolver 10.0.0.1 " in got["otherHttp"]
    assert got["otherFirewall"] == []


# ---------------------------------------------------------------------------------------------
# The flake's outputs


def test_package_matches_pyproject() -> None:
    """The package's metadata (its `src`, a lib.fileset, is left alone: Nix 2.8 cannot evaluate it)."""
    got = nix_eval("""let p = t.flake.packages.x86_64-linux.default; in {
      inherit (p) name pname version pyproject doCheck pythonImportsCheck hasSrc;
      same = p == t.flake.packages.x86_64-linux.warmd;
      dependencies = map (d: d.pname) p.dependencies;
      build-system = map (d: d.pname) p.build-system;
      meta = { inherit (p.meta) description mainProgram platforms; license = p.meta.license.spdxId; };
    }""")
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = [re.split(r"[<>=!~\[; ]", d, maxsplit=1)[0].lower() for d in project["dependencies"]]
    assert got["dependencies"] == wanted
    assert (got["pname"], got["version"]) == (project["name"], project["version"])
    assert got["name"] == f"{project['name']}-{project['version']}" and got["same"] is True
    assert got["build-system"] == ["hatchling"] and got["pyproject"] is True and got["hasSrc"] is True
    assert got["doCheck"] is False and got["pythonImportsCheck"] == ["warmd"]
    assert got["meta"]["mainProgram"] == "warmd" and got["meta"]["license"] == project["license"]
    assert {"x86_64-linux", "aarch64-linux"} <= set(got["meta"]["platforms"])
    assert got["meta"]["description"]


def test_flake_outputs_for_both_systems() -> None:
    """Packages and overlay for both systems; each module in the flake runs the flake's own warmd."""
    got = nix_eval("""let
        f = t.flake;
        nixos = m: (t.nixos { module = m; modules = [ { services.warmd = { enable = true; users = [ "alice" ]; }; } ]; })
          .systemd.user.services.warmd.serviceConfig.ExecStart;
        home = m: (t.home { module = m; modules = [ { services.warmd.enable = true; } ]; })
          .systemd.user.services.warmd.Service.ExecStart;
      in {
        systems = builtins.attrNames f.packages;
        arm = f.packages.aarch64-linux.default.system;
        overlay = (f.overlays.default t.pkgs t.pkgs).warmd.name;
        nixos = map nixos [ f.nixosModules.default f.nixosModules.warmd ];
        home = map home [ f.homeManagerModules.default f.homeManagerModules.warmd ];
      }""")
    assert got["systems"] == ["aarch64-linux", "x86_64-linux"]
    assert got["arm"] == "aarch64-linux" and got["overlay"] == "warmd-0.1.0"
    assert got["nixos"] == ["/nix/store/warmd-0.1.0/bin/warmd --config /nix/store/warmd.toml run"] * 2
    assert got["home"] == [["/nix/store/warmd-0.1.0/bin/warmd --config /home/alice/.config/warmd/config.toml run"]] * 2


@pytest.mark.parametrize("path", NIX_FILES, ids=lambda p: str(p.relative_to(REPO)))
def test_nix_file_parses(path: Path) -> None:
    done = subprocess.run([str(need("nix-instantiate")), "--parse", str(path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


# ---------------------------------------------------------------------------------------------
# Both modules render the [Service] `warmd install-service` writes

HOME = Path("/home/alice")
# systemd's specifiers in a user unit, as they expand for alice (no XDG_* variables set; %S as a
# recent systemd has it: Debian 12's systemd 252 still puts it at ~/.config): a module that says
# %C/uv and a unit that names /home/alice/.cache/uv mean the same folder.
SPECIFIERS = {"C": f"{HOME}/.cache", "S": f"{HOME}/.local/state", "E": f"{HOME}/.config", "h": str(HOME), "%": "%"}
BOOLEANS = {"yes": "yes", "true": "yes", "on": "yes", "no": "no", "false": "no", "off": "no"}
# Keys whose repeated lines systemd takes as one list (systemd.exec(5)); other keys' lines differ.
LISTS = {"RestrictAddressFamilies", "ReadWritePaths"}


def _expanded(word: str) -> str:
    return re.sub("%(.)", lambda m: SPECIFIERS.get(m.group(1), m.group()), word)


def normal(key: str, lines: list[str]) -> Any:
    """A key's lines as systemd reads them: words unquoted, specifiers expanded for alice,
    booleans one way, an Exec line's program by its name (store paths aside)."""
    if key == "Environment":
        return {name: _expanded(value) for name, _, value in
                (item.partition("=") for line in lines for item in shlex.split(line))}
    out = []
    for line in lines:
        words = [_expanded(w) for w in shlex.split(line)]
        if key.startswith("Exec") and words:
            prefix = re.match(r"[-+@!:]*", words[0])
            words[0] = prefix.group() + Path(words[0][prefix.end():]).name if prefix else words[0]
        out.append([BOOLEANS.get(words[0], words[0])] if len(words) == 1 else words)
    return [w for ws in out for w in ws] if key in LISTS else out


def install_service_unit(monkeypatch: pytest.MonkeyPatch, *, warmd_exe: str, uv_exe: str, config: str,
                         sandbox: bool) -> dict[str, dict[str, list[str]]]:
    """The unit `warmd install-service` writes for alice with her config at `config`, as the CLI
    calls it: uv's cache where `uv cache dir` says, warmd's own store and state folders writable."""
    monkeypatch.setenv("HOME", str(HOME))
    for var in ("XDG_CACHE_HOME", "XDG_STATE_HOME", "XDG_CONFIG_HOME"):
        monkeypatch.delenv(var, raising=False)
    defaults = Config()
    done = install_service(print_only=True, warmd_exe=Path(warmd_exe), uv_exe=Path(uv_exe),
                           uv_cache_dir=HOME / ".cache" / "uv", config_path=Path(config),
                           write_paths=[defaults.store_dir, defaults.state_dir], sandbox=sandbox)
    return parse_unit(done.text)


@pytest.mark.parametrize("sandbox", [True, False], ids=["sandbox", "no-sandbox"])
@pytest.mark.parametrize("module", MODULES)
def test_same_service_as_install_service(module: str, sandbox: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    got = nix_eval(f"""let c = {evaluate(module, enabled(module, f"sandbox = {str(sandbox).lower()}; "))};
      in {unit_of(module)} c // {{ warmd = lib.getExe c.services.warmd.package; uv = lib.getExe c.services.warmd.uvPackage; }}""")
    ours = module_unit(module, got)
    [exec_start] = ours["Service"]["ExecStart"]
    argv = shlex.split(exec_start)
    theirs = install_service_unit(monkeypatch, warmd_exe=got["warmd"], uv_exe=got["uv"],
                                  config=argv[argv.index("--config") + 1], sandbox=sandbox)
    assert len(theirs["Service"]) > (35 if sandbox else 25)  # the comparison below is not of nothing
    mine = {name: {k: normal(k, v) for k, v in keys.items()} for name, keys in ours.items()}
    cli = {name: {k: normal(k, v) for k, v in keys.items()} for name, keys in theirs.items()}

    # Different by design, and nothing else:
    # - [Unit] ConditionUser=, NixOS only: one unit in every user's manager, started for the
    #   listed users. X-Restart-Triggers=, home-manager only: its way to restart on a new config.
    only = {"nixos": "ConditionUser", "home-manager": "X-Restart-Triggers"}[module]
    assert only in mine["Unit"] and only not in cli["Unit"]
    del mine["Unit"][only]
    # - PATH: store paths; uv's folder first in both.
    path_mine = mine["Service"]["Environment"].pop("PATH").split(":")
    path_cli = cli["Service"]["Environment"].pop("PATH").split(":")
    assert path_mine[0] == path_cli[0] == str(Path(got["uv"]).parent)

    assert set(mine) == set(cli) == {"Unit", "Service", "Install"}
    for name in cli:
        differ = {key: {"install-service": cli[name].get(key), module: mine[name].get(key)}
                  for key in sorted(set(mine[name]) | set(cli[name])) if mine[name].get(key) != cli[name].get(key)}
        assert differ == {}, f"[{name}] differs"


# ---------------------------------------------------------------------------------------------
# The test of these tests: a broken module fails them

BREAKAGES = [
    # (file, text, replaced by): the hardening both modules share loses a line; their settings
    # take anything, a null too; the NixOS unit starts for every user.
    ("nix/service.nix", "        NoNewPrivileges = true;\n", ""),
    ("nix/service.nix", "      type = settingsFormat.type;\n", "      type = lib.types.attrs;\n"),
    ("nix/module.nix", "        ConditionUser = userConditions;\n", ""),
]


def test_a_broken_module_fails_these_tests(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    if ROOT != REPO:
        pytest.skip("the inner run")
    broken = pytester.path / "warmd"
    for part in ("flake.nix", "nix", "contrib/nginx"):
        (broken / part).parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if (REPO / part).is_dir() else shutil.copy)(REPO / part, broken / part)
    for name, old, new in BREAKAGES:
        text = (broken / name).read_text()
        assert text.count(old) == 1, (name, old)
        (broken / name).write_text(text.replace(old, new))
    monkeypatch.setenv("WARMD_TEST_NIX_ROOT", str(broken))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    ini = pytester.makeini("[pytest]\n")  # not the project's addopts (coverage): a run of its own
    result = pytester.runpytest_subprocess(str(REPO / "tests" / "test_nix.py"), "-c", str(ini), "--rootdir",
                                           str(pytester.path), "-p", "no:cacheprovider", "-p", "no:cov", "-rf",
                                           "-k", "not broken")
    out = result.stdout.str()
    failed = sorted(re.findall(r"^FAILED \S*::(\S+)", out, re.M))
    assert failed == sorted([
        "test_nixos_module_renders_the_user_service",
        "test_a_mistake_is_refused_naming_the_option[nixos-null-in-settings]",
        "test_a_mistake_is_refused_naming_the_option[home-manager-null-in-settings]",
        "test_same_service_as_install_service[nixos-sandbox]",
        "test_same_service_as_install_service[nixos-no-sandbox]",
        "test_same_service_as_install_service[home-manager-sandbox]",
        "test_same_service_as_install_service[home-manager-no-sandbox]",
    ]), out
    # The comparison names the key, and what each side has.
    assert re.search(r"'NoNewPrivileges': \{'home-manager': None, 'install-service': \[\['yes'\]\]\}", out), out
    assert result.parseoutcomes()["passed"] >= 15
