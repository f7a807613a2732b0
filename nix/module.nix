# NixOS module: a warmd systemd *user* service for the users listed in services.warmd.users, and
# (services.warmd.mirror, on the machine that serves a lab) the wheel mirror of contrib/nginx on
# NixOS's own nginx service.
{
  config,
  lib,
  pkgs,
  ...
}:

let
  inherit (lib)
    mkEnableOption
    mkIf
    mkOption
    types
    ;

  cfg = config.services.warmd;
  shared = import ./service.nix { inherit lib pkgs; };
  configFile = shared.settingsFormat.generate "warmd.toml" cfg.settings;
  service = shared.service {
    inherit (cfg) package sandbox settings;
    inherit configFile;
  };

  # systemd takes one user per ConditionUser=; several lines are ANDed unless each starts with
  # "|", which makes them "triggering": the unit starts when any one of them holds. So every
  # other user's manager skips the unit (condition failed) instead of running it.
  userConditions = map (user: "|${user}") cfg.users;

  mirror = cfg.mirror;
  originsFile = pkgs.writeText "warmd-mirror-origins.map" (
    builtins.concatStringsSep "" (map (host: "${host} ${mirror.origins.${host}};\n") (builtins.attrNames mirror.origins))
  );
  # The shipped config itself, its placeholders filled in: one file for Debian, NixOS and the tests.
  mirrorConfig =
    builtins.replaceStrings
      [ "@LISTEN@" "@CACHE_DIR@" "@MAX_SIZE@" "@ORIGINS@" "@CA_FILE@" "@RESOLVER@" ]
      [
        (if mirror.address == "" then toString mirror.port else "${mirror.address}:${toString mirror.port}")
        mirror.cacheDir
        mirror.maxSize
        "${originsFile}"
        "/etc/ssl/certs/ca-certificates.crt"
        mirror.resolver
      ]
      (builtins.readFile ../contrib/nginx/warmd-mirror.conf);
in
{
  options.services.warmd = {
    enable = mkEnableOption "warmd, which keeps the pinned GPU wheels of uv projects warm in the uv cache";
  }
  // shared.options "written to a TOML file in the Nix store and passed with `--config`"
  // {
    users = mkOption {
      type = types.listOf types.str;
      default = [ ];
      example = [ "alice" ];
      description = ''
        The users whose systemd user manager runs warmd. warmd warms each user's own uv
        cache, so it runs once per listed user, as that user.
      '';
    };

    mirror = {
      enable = mkEnableOption ''
        the lab's wheel mirror on this machine: NixOS's nginx (services.nginx) as a pull-through
        cache of wheel files (contrib/nginx/warmd-mirror.conf), which every workstation's warmd
        names in its `mirrors` setting
      '';

      port = mkOption {
        type = types.port;
        default = 3142;
        description = "The port the workstations connect to.";
      };

      address = mkOption {
        type = types.str;
        default = "";
        example = "10.0.0.5";
        description = "The address nginx listens on for the mirror; empty: every address.";
      };

      cacheDir = mkOption {
        type = types.str;
        default = "/var/cache/nginx/warmd";
        description = "Where the wheels are kept (inside nginx's CacheDirectory, which its unit may write).";
      };

      maxSize = mkOption {
        type = types.str;
        default = "500g";
        description = "The cache's cap (nginx size syntax); the least recently used files go first.";
      };

      origins = mkOption {
        type = types.attrsOf types.str;
        default = {
          "download.pytorch.org" = "https://download.pytorch.org";
          "files.pythonhosted.org" = "https://files.pythonhosted.org";
          "pypi.nvidia.com" = "https://pypi.nvidia.com";
        };
        description = ''
          The origins served: a workstation asks http://MIRROR:PORT/<name>/<path> for <origin>/<path>.
          Anything else is answered 404 (not an open proxy).
        '';
      };

      resolver = mkOption {
        type = types.str;
        default = builtins.head ((config.networking.nameservers or [ ]) ++ [ "127.0.0.53" ]);
        description = "The DNS server nginx resolves the origins' names with (nginx does not read resolv.conf).";
      };

      openFirewall = mkOption {
        type = types.bool;
        default = false;
        description = "Open the mirror's port in the firewall for the lab.";
      };
    };
  };

  config = lib.mkMerge [ (mkIf cfg.enable {
    assertions = [
      {
        assertion = cfg.users != [ ];
        message = "services.warmd.users must name at least one user to run warmd for.";
      }
    ];

    systemd.user.services.warmd = {
      inherit (service) description wantedBy environment;
      # The uv warmd drives; a user whose shell runs another uv should set settings.uv.
      path = [ cfg.uvPackage ];
      unitConfig = service.unitConfig // {
        ConditionUser = userConditions;
      };
      inherit (service) serviceConfig;
    };
  })

  (mkIf mirror.enable {
    services.nginx = {
      enable = true;
      # nixpkgs builds nginx without the slice module unless asked (withSlice ? false); the
      # mirror's config caches big wheels in slices fetched with Range.
      package = lib.mkDefault (pkgs.nginx.override { withSlice = true; });
      appendHttpConfig = mirrorConfig;
    };
    networking.firewall.allowedTCPPorts = mkIf mirror.openFirewall [ mirror.port ];
  })
  ];
}
