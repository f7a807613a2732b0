# What the NixOS module (module.nix) and the home-manager module (hm-module.nix) share: the
# options every warmd service has, and the service itself in systemd's own key names. The
# service is the unit `warmd install-service` writes (daemon/warmd/service/unit.py, the comments
# there say why each line is there), with Nix store paths: change one, change the other;
# tests/test_nix.py compares them key by key.
{ lib, pkgs }:

let
  inherit (lib) mkOption mkPackageOption types literalExpression;

  settingsFormat = pkgs.formats.toml { };

  # A folder of warmd's config ("~/…" as warmd reads it) as a unit names it.
  unitPath = p: if lib.hasPrefix "~/" p then "%h/" + lib.removePrefix "~/" p else p;
in
{
  inherit settingsFormat;

  # services.warmd.{package,uvPackage,sandbox,settings}; `configText` says where the settings go.
  options = configText: {
    package = mkOption {
      type = types.package;
      default = pkgs.warmd or (pkgs.python3Packages.callPackage ./package.nix { });
      defaultText = literalExpression "pkgs.warmd";
      description = "The warmd package to run.";
    };

    uvPackage = mkPackageOption pkgs "uv" { };

    sandbox = mkOption {
      type = types.bool;
      default = true;
      description = ''
        The service's mount sandbox: ProtectSystem=strict, ProtectHome=read-only (only the uv
        cache and warmd's own folders writable), PrivateTmp= and the like. In a user unit it
        needs unprivileged user namespaces; where the kernel forbids them the service fails
        with status 226/NAMESPACE. false leaves it out and keeps the rest of the hardening,
        as `warmd install-service --no-sandbox` does.
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
        warmd's configuration, ${configText}.
        See config.example.toml in the warmd source for every key.
      '';
    };
  };

  # The service running `package` with the config file at `configFile`. Each module puts uv's
  # folder first on PATH its own way (NixOS: `path`; home-manager: Environment=). `xdg`: the XDG
  # base folders warmd resolves its defaults from, pinned in the unit (as install-service does) so
  # that the service and a shell's `warmd status` use the same state database on every systemd:
  # StateDirectory=/%S is ~/.config up to systemd 253 and $XDG_STATE_HOME from 254 on.
  service =
    {
      package,
      configFile,
      sandbox,
      settings,
      xdg ? {
        config = "%E";
        cache = "%C";
        state = "%h/.local/state";
      },
    }:
    let
      uvCacheDir = unitPath (settings.cache-dir or "${xdg.cache}/uv");
      # The folders warmd writes: uv's cache, warmd's store and its state (warmd's defaults
      # under the XDG folders, or the settings' own). Made before the sandbox is set up, because
      # systemd refuses a ReadWritePaths= folder that does not exist (226/NAMESPACE).
      writes = lib.unique [
        uvCacheDir
        (unitPath (settings.store-dir or "${xdg.cache}/warmd/store"))
        (unitPath (settings.state-dir or "${xdg.state}/warmd"))
      ];
    in
    {
      description = "warmd, keeps GPU wheels of uv projects warm in the uv cache";
      wantedBy = [ "default.target" ];
      unitConfig = {
        StartLimitIntervalSec = "10min";
        StartLimitBurst = 5;
      };
      environment = {
        UV_CACHE_DIR = uvCacheDir;
        XDG_CONFIG_HOME = xdg.config;
        XDG_CACHE_HOME = xdg.cache;
        XDG_STATE_HOME = xdg.state;
      };
      serviceConfig = {
        Type = "notify";
        NotifyAccess = "main";
        ExecStartPre = "+${pkgs.coreutils}/bin/mkdir -p ${lib.concatStringsSep " " writes}";
        ExecStart = "${lib.getExe package} --config ${configFile} run";
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
        UMask = "0077";

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
      }
      // lib.optionalAttrs sandbox {
        PrivateUsers = true;
        CapabilityBoundingSet = "";
        AmbientCapabilities = "";
        PrivateMounts = true;
        ProtectSystem = "strict";
        ProtectHome = "read-only";
        ReadWritePaths = writes;
        PrivateTmp = true;
        ProtectKernelTunables = true;
        ProtectKernelModules = true;
        ProtectKernelLogs = true;
        ProtectHostname = true;
        ProtectClock = true;
      };
    };
}
