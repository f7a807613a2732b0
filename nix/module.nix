# NixOS module: a warmd systemd *user* service for the users listed in services.warmd.users.
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
    mkPackageOption
    types
    literalExpression
    ;

  cfg = config.services.warmd;
  settingsFormat = pkgs.formats.toml { };
  configFile = settingsFormat.generate "warmd.toml" cfg.settings;

  # systemd takes one user per ConditionUser=; several lines are ANDed unless each starts with
  # "|", which makes them "triggering": the unit starts when any one of them holds. So every
  # other user's manager skips the unit (condition failed) instead of running it.
  userConditions = map (user: "|${user}") cfg.users;
in
{
  options.services.warmd = {
    enable = mkEnableOption "warmd, which keeps the pinned GPU wheels of uv projects warm in the uv cache";

    package = mkOption {
      type = types.package;
      default = pkgs.warmd or (pkgs.python3Packages.callPackage ./package.nix { });
      defaultText = literalExpression "pkgs.warmd";
      description = "The warmd package to run.";
    };

    uvPackage = mkPackageOption pkgs "uv" { };

    users = mkOption {
      type = types.listOf types.str;
      default = [ ];
      example = [ "alice" ];
      description = ''
        The users whose systemd user manager runs warmd. warmd warms each user's own uv
        cache, so it runs once per listed user, as that user.
      '';
    };

    settings = mkOption {
      type = settingsFormat.type;
      default = { };
      example = literalExpression ''
        {
          variant = "auto";
          roots = [ "~/src" ];
          store-max-size = "50GiB";
          download.connections = 8;
        }
      '';
      description = ''
        warmd's configuration, written to a TOML file and passed with `--config`.
        See config.example.toml in the warmd source for every key.
      '';
    };
  };

  config = mkIf cfg.enable {
    assertions = [
      {
        assertion = cfg.users != [ ];
        message = "services.warmd.users must name at least one user to run warmd for.";
      }
    ];

    systemd.user.services.warmd = {
      description = "warmd, keeps GPU wheels of uv projects warm in the uv cache";
      wantedBy = [ "default.target" ];
      # The uv warmd drives; a user whose shell runs another uv should set settings.uv.
      path = [ cfg.uvPackage ];
      unitConfig = {
        ConditionUser = userConditions;
        StartLimitIntervalSec = "10min";
        StartLimitBurst = 5;
      };
      serviceConfig = {
        Type = "notify";
        NotifyAccess = "main";
        ExecStartPre = "+${pkgs.coreutils}/bin/mkdir -p %C/uv";
        ExecStart = "${lib.getExe cfg.package} --config ${configFile} run";
        ExecReload = "${pkgs.coreutils}/bin/kill -HUP $MAINPID";
        WatchdogSec = "5min";
        Restart = "on-failure";
        RestartSec = "30s";
        TimeoutStartSec = "2min";
        KillMode = "mixed";
        TimeoutStopSec = 10;

        Nice = 19;
        IOSchedulingClass = "idle";
        CPUWeight = "idle";
        CPUSchedulingPolicy = "batch";
        CacheDirectory = "warmd";
        StateDirectory = "warmd";
        UMask = "0077";

        # Same hardening as systemd/warmd.service; see the comments there.
        NoNewPrivileges = true;
        RestrictAddressFamilies = [
          "AF_UNIX"
          "AF_INET"
          "AF_INET6"
          "AF_NETLINK"
        ];
        RestrictNamespaces = true;
        RestrictRealtime = true;
        RestrictSUIDSGID = true;
        LockPersonality = true;
        MemoryDenyWriteExecute = true;
        SystemCallArchitectures = "native";
        SystemCallFilter = [
          "@system-service"
          "~@privileged @resources"
        ];
        SystemCallErrorNumber = "EPERM";

        # NixOS enables unprivileged user namespaces, which these need in a user unit.
        PrivateUsers = true;
        CapabilityBoundingSet = "";
        AmbientCapabilities = "";
        PrivateMounts = true;
        ProtectSystem = "strict";
        ProtectHome = "read-only";
        # %C/uv is uv's default cache for a service; set settings.cache-dir and add it here
        # (systemd.user.services.warmd.serviceConfig.ReadWritePaths) when yours is elsewhere.
        ReadWritePaths = [ "%C/uv" ];
        PrivateTmp = true;
        ProtectKernelTunables = true;
        ProtectKernelModules = true;
        ProtectKernelLogs = true;
        ProtectHostname = true;
        ProtectClock = true;
      };
      environment.UV_CACHE_DIR = "%C/uv";
    };
  };
}
