{
  description = "warmd: keeps the pinned GPU wheels of uv projects warm in the user's uv cache";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  outputs =
    { self, nixpkgs }:
    let
      systems = [
        "x86_64-linux"
        "aarch64-linux"
      ];
      forAllSystems = f: nixpkgs.lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});
      withPackage =
        module:
        { lib, pkgs, ... }:
        {
          imports = [ module ];
          services.warmd.package = lib.mkDefault self.packages.${pkgs.stdenv.hostPlatform.system}.default;
        };
    in
    {
      packages = forAllSystems (pkgs: rec {
        warmd = pkgs.python3Packages.callPackage ./nix/package.nix { };
        default = warmd;
      });

      overlays.default = final: prev: {
        warmd = final.python3Packages.callPackage ./nix/package.nix { };
      };

      # Each module alone falls back to pkgs.warmd or a build from this source; take the
      # flake's package by default so `services.warmd.enable = true` needs nothing else.
      nixosModules.default = withPackage ./nix/module.nix;
      nixosModules.warmd = self.nixosModules.default;

      homeManagerModules.default = withPackage ./nix/hm-module.nix;
      homeManagerModules.warmd = self.homeManagerModules.default;
    };
}
