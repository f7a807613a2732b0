# For tests/test_nix.py: warmd's flake and modules under the real module system. `shared` is the
# folder with the real nixpkgs lib and home-manager modules and their stand-ins for the rest of
# NixOS, home-manager and pkgs (../shared/nix beside the checkout, see its README); `root` is the
# warmd tree whose Nix files are evaluated.
{
  shared,
  root,
}:

let
  lib = import (shared + "/nixpkgs-lib");
  hmLib = import (shared + "/home-manager/modules/lib/stdlib-extended.nix") lib;

  pkgsFor =
    system:
    import (shared + "/pkgs-stub.nix") {
      inherit lib system;
      extra =
        { package, drv }:
        {
          uv = package "uv" "uv";
          warmd = package "warmd" "warmd";
          # What nix/package.nix is called with: its dependencies are packages named after
          # themselves; the application keeps its arguments but `src`, which Nix 2.8 cannot
          # evaluate (lib.fileset needs builtins.readFileType).
          python3Packages =
            let
              self =
                lib.genAttrs [
                  "hatchling"
                  "httpx"
                  "watchdog"
                  "apscheduler"
                  "platformdirs"
                  "loguru"
                  "packaging"
                  "tomlkit"
                ] (name: package name name)
                // {
                  buildPythonApplication =
                    args:
                    drv "${args.pname}-${args.version}" (removeAttrs args [ "src" ] // { hasSrc = args ? src; });
                  callPackage = lib.callPackageWith (pkgsFor system // self);
                };
            in
            self;
        };
    };

  pkgs = pkgsFor "x86_64-linux";

  flake =
    let
      outputs = (import (root + "/flake.nix")).outputs {
        self = outputs;
        nixpkgs = {
          inherit lib;
          legacyPackages = lib.genAttrs [ "x86_64-linux" "aarch64-linux" ] pkgsFor;
        };
      };
    in
    outputs;

  failed = config: map (a: a.message) (lib.filter (a: !a.assertion) config.assertions);
in
{
  inherit lib pkgs flake;

  # A NixOS system's config: the NixOS stand-in, `module` (nix/module.nix by default) and the
  # user's `modules`.
  nixos =
    {
      module ? root + "/nix/module.nix",
      modules,
    }:
    let
      config =
        (lib.evalModules {
          modules = [
            (shared + "/nixos-shim.nix")
            module
            { _module.args.pkgs = pkgs; }
          ]
          ++ modules;
        }).config;
    in
    config // { failedAssertions = failed config; };

  # A home-manager configuration of alice: the real systemd.nix and xdg.nix with their
  # stand-in, `module` (nix/hm-module.nix by default) and the user's `modules`.
  home =
    {
      module ? root + "/nix/hm-module.nix",
      modules,
      system ? "x86_64-linux",
    }:
    let
      config =
        (hmLib.evalModules {
          modules = [
            (shared + "/home-manager-shim.nix")
            (shared + "/home-manager/modules/systemd.nix")
            (shared + "/home-manager/modules/misc/xdg.nix")
            module
            {
              _module.args.pkgs = pkgsFor system;
              home = {
                username = "alice";
                homeDirectory = "/home/alice";
                stateVersion = "26.05";
              };
            }
          ]
          ++ modules;
        }).config;
    in
    config // { failedAssertions = failed config; };
}
