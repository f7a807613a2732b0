# home-manager module: warmd as a systemd user service of this user, its settings in
# $XDG_CONFIG_HOME/warmd/config.toml, where a shell's `warmd status` and `warmd doctor` read
# them too. Linux only.
{
  config,
  lib,
  pkgs,
  ...
}:

let
  cfg = config.services.warmd;
  shared = import ./service.nix { inherit lib pkgs; };
  configFile = shared.settingsFormat.generate "warmd-config.toml" cfg.settings;
  service = shared.service {
    inherit (cfg) package sandbox settings;
    configFile = "${config.xdg.configHome}/warmd/config.toml";
    # This user's own XDG folders, as home-manager knows them.
    xdg = {
      config = config.xdg.configHome;
      cache = config.xdg.cacheHome;
      state = config.xdg.stateHome;
    };
  };
in
{
  options.services.warmd = {
    enable = lib.mkEnableOption "warmd, which keeps the pinned GPU wheels of uv projects warm in the uv cache";
  }
  // shared.options "written to {file}`$XDG_CONFIG_HOME/warmd/config.toml`";

  config = lib.mkIf cfg.enable {
    assertions = [ (lib.hm.assertions.assertPlatform "services.warmd" pkgs lib.platforms.linux) ];

    # For `warmd status`, `warmd doctor` and `warmd prefetch` in a shell.
    home.packages = [ cfg.package ];

    xdg.configFile."warmd/config.toml".source = configFile;

    systemd.user.services.warmd = {
      Unit = service.unitConfig // {
        Description = service.description;
        # A new config restarts the service on switch.
        X-Restart-Triggers = [ configFile ];
      };
      Service = service.serviceConfig // {
        # uv's folder first, so that `uv` in the service is the uv given here (a user whose
        # shell runs another uv should set settings.uv); then where Nix puts this user's and the
        # system's programs, in a login shell's order (home-manager's packages are in
        # ~/.nix-profile or, with home-manager as a NixOS module, /etc/profiles/per-user/$USER;
        # NixOS's in /run/current-system/sw), then the other systems' own folders, as in the
        # unit `warmd install-service` writes: for GPU tools such as rocm_agent_enumerator.
        Environment = [
          ("PATH=${lib.makeBinPath [ cfg.uvPackage ]}:%h/.nix-profile/bin:/etc/profiles/per-user/%u/bin"
            + ":/nix/var/nix/profiles/default/bin:/run/current-system/sw/bin:/usr/local/bin:/usr/bin:/bin")
        ]
        ++ lib.mapAttrsToList (name: value: "${name}=${value}") service.environment;
      };
      Install.WantedBy = service.wantedBy;
    };
  };
}
