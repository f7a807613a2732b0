"""The Nix files parse, and their logic evaluates with stand-ins for nixpkgs (not available offline)."""

from __future__ import annotations

import json
import re
import subprocess
import tomllib
from pathlib import Path

import pytest

from tests.support.prereqs import need

REPO = Path(__file__).resolve().parents[1]
NIX_FILES = [REPO / "flake.nix", *sorted((REPO / "nix").glob("*.nix"))]
pytestmark = pytest.mark.usefixtures("nix")  # missing, each test says what to install (fails under CI)


@pytest.fixture
def nix() -> Path:
    return need("nix-instantiate")

# Just enough of nixpkgs' lib and pkgs to evaluate the module's config: options become their
# attrsets, mkIf keeps its condition, packages are store-path strings.
STUBS = r"""
let
  lib = {
    mkEnableOption = d: { description = d; };
    mkOption = a: a;
    mkPackageOption = pkgs: name: _: { default = pkgs.${name}; };
    mkIf = condition: content: { _type = "if"; inherit condition content; };
    mkMerge = contents: { _type = "merge"; inherit contents; };
    mkDefault = v: v;
    types = { package = "package"; str = "str"; port = "port"; bool = "bool"; listOf = t: "listOf ${t}";
              attrsOf = t: "attrsOf ${t}"; };
    literalExpression = text: { _type = "literalExpression"; inherit text; };
    getExe = p: "${p}/bin/${p.meta.mainProgram}";
    genAttrs = names: f: builtins.listToAttrs (map (n: { name = n; value = f n; }) names);
    fileset = { toSource = a: "src"; unions = l: l; };
    licenses.mit = "mit";
    platforms.linux = [ "x86_64-linux" "aarch64-linux" ];
  };
  drv = name: main: { outPath = "/nix/store/${name}"; meta.mainProgram = main; };
  pkgs = {
    formats.toml = _: { type = "toml"; generate = name: value: "/nix/store/${name}"; };
    writeText = name: text: { outPath = "/nix/store/${name}"; inherit text; };
    uv = drv "uv" "uv";
    coreutils = drv "coreutils" "ls";
    warmd = drv "warmd" "warmd";
    nginx = drv "nginx" "nginx" // { override = args: drv "nginx-custom" "nginx" // { inherit args; }; };
  };
  moduleWith = cfg: import REPO/nix/module.nix { config.services.warmd = { mirror = mirrorOff; } // cfg; inherit lib pkgs; };
  # the mirror options' defaults, as the module system would fill them in
  mirrorDefaults = m: builtins.mapAttrs (_: o: o.default) m.options.services.warmd.mirror;
  mirrorOff = { enable = false; };
  # the service's half of the module's config, and the mirror's
  warmdPart = m: builtins.elemAt m.config.contents 0;
  mirrorPart = m: builtins.elemAt m.config.contents 1;
in
"""


def nix_eval(expr: str) -> object:
    done = subprocess.run(
        [str(need("nix-instantiate")), "--eval", "--strict", "--json", "--expr", expr.replace("REPO", str(REPO))],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.parametrize("path", NIX_FILES, ids=lambda p: str(p.relative_to(REPO)))
def test_nix_file_parses(path: Path) -> None:
    done = subprocess.run([str(need("nix-instantiate")), "--parse", str(path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_module_limits_the_user_service_to_its_users() -> None:
    got = nix_eval(STUBS + """
      let
        m = moduleWith { enable = true; users = [ "alice" "bob" ]; settings = { variant = "auto"; };
                         package = pkgs.warmd; uvPackage = pkgs.uv; };
        svc = (warmdPart m).content.systemd.user.services.warmd;
      in {
        enabled = (warmdPart m).condition;
        cond = svc.unitConfig.ConditionUser;
        exec = svc.serviceConfig.ExecStart;
        path = map toString svc.path;
        wanted = svc.wantedBy;
        assertion = (builtins.head (warmdPart m).content.assertions).assertion;
        keys = builtins.attrNames svc.serviceConfig;
        optionNames = builtins.attrNames m.options.services.warmd;
        settingsType = m.options.services.warmd.settings.type;
      }
    """)
    assert isinstance(got, dict)
    assert got["enabled"] is True
    # Several triggering conditions ("|"): the unit starts for any one of the listed users.
    assert got["cond"] == ["|alice", "|bob"]
    assert got["exec"] == "/nix/store/warmd/bin/warmd --config /nix/store/warmd.toml run"
    assert got["path"] == ["/nix/store/uv"]
    assert got["wanted"] == ["default.target"]
    assert got["assertion"] is True
    assert got["optionNames"] == ["enable", "mirror", "package", "settings", "users", "uvPackage"]
    assert got["settingsType"] == "toml"
    # The module hardens like the shipped unit: every [Service] key of one is in the other.
    unit = (REPO / "systemd" / "warmd.service").read_text()
    service = unit.split("[Service]", 1)[1].split("[Install]", 1)[0]
    unit_keys = {m.group(1) for m in re.finditer(r"^([A-Za-z]+)=", service, re.M)}
    assert unit_keys - {"Environment"} == set(got["keys"])


def test_module_asserts_users_and_stays_off_when_disabled() -> None:
    got = nix_eval(STUBS + """
      let m = moduleWith { enable = false; users = [ ]; settings = { }; package = pkgs.warmd; uvPackage = pkgs.uv; };
      in { enabled = (warmdPart m).condition; assertion = (builtins.head (warmdPart m).content.assertions).assertion;
           mirror = (mirrorPart m).condition; }
    """)
    assert got == {"enabled": False, "assertion": False, "mirror": False}


def test_mirror_option_sets_up_nixos_nginx_with_the_shipped_config() -> None:
    """services.warmd.mirror.enable (without warmd itself) gives NixOS's nginx contrib/nginx's config, filled in."""
    got = nix_eval(STUBS + """
      let
        m0 = moduleWith { };
        m = moduleWith { enable = false; users = [ ]; mirror = mirrorDefaults m0 // { enable = true; openFirewall = true; }; };
        part = mirrorPart m;
      in {
        enabled = part.condition;
        warmd = (warmdPart m).condition;
        nginx = part.content.services.nginx.enable;
        nginxArgs = part.content.services.nginx.package.args;
        http = part.content.services.nginx.appendHttpConfig;
        firewall = part.content.networking.firewall.allowedTCPPorts.content;
      }
    """)
    assert isinstance(got, dict)
    assert got["enabled"] is True and got["warmd"] is False and got["nginx"] is True
    assert got["nginxArgs"] == {"withSlice": True}  # nixpkgs' nginx leaves the slice module out by default
    shipped = (REPO / "contrib" / "nginx" / "warmd-mirror.conf").read_text()
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


def test_package_matches_pyproject() -> None:
    got = nix_eval(STUBS + """
      let
        p = import REPO/nix/package.nix ({ inherit lib; buildPythonApplication = a: a; } //
          lib.genAttrs [ "hatchling" "httpx" "watchdog" "apscheduler" "platformdirs" "loguru"
                         "packaging" "tomlkit" ] (n: n));
      in { inherit (p) pname version dependencies build-system pyproject; }
    """)
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = [re.split(r"[<>=!~\[; ]", d, maxsplit=1)[0].lower() for d in project["dependencies"]]
    assert isinstance(got, dict)
    assert got["dependencies"] == wanted
    assert (got["pname"], got["version"]) == (project["name"], project["version"])
    assert got["build-system"] == ["hatchling"] and got["pyproject"] is True


def test_flake_outputs_for_both_systems() -> None:
    got = nix_eval(STUBS + """
      let
        nixpkgs = {
          inherit lib;
          legacyPackages = lib.genAttrs [ "x86_64-linux" "aarch64-linux" ] (system: {
            python3Packages.callPackage = path: args: { built = toString path; inherit system; };
          });
        };
        flake = import REPO/flake.nix;
        out = flake.outputs { self = out; inherit nixpkgs; };
      in {
        systems = builtins.attrNames out.packages;
        default = out.packages.aarch64-linux.default;
        overlay = (out.overlays.default { python3Packages = nixpkgs.legacyPackages.x86_64-linux.python3Packages; } { }).warmd.built;
        module = (out.nixosModules.default { inherit lib; pkgs.stdenv.hostPlatform.system = "x86_64-linux"; }).services.warmd.package.system;
        imports = map toString (out.nixosModules.default { inherit lib; pkgs.stdenv.hostPlatform.system = "x86_64-linux"; }).imports;
      }
    """)
    assert isinstance(got, dict)
    assert got["systems"] == ["aarch64-linux", "x86_64-linux"]
    assert got["default"] == {"built": str(REPO / "nix/package.nix"), "system": "aarch64-linux"}
    assert got["overlay"] == str(REPO / "nix/package.nix")
    assert got["module"] == "x86_64-linux"
    assert got["imports"] == [str(REPO / "nix/module.nix")]
