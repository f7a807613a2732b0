# warmd as a Python application. Call with python3Packages.callPackage (the flake and the
# module do), so the dependencies come from the same Python package set.
{
  lib,
  buildPythonApplication,
  hatchling,
  httpx,
  watchdog,
  apscheduler,
  platformdirs,
  loguru,
  packaging,
  tomlkit,
}:

buildPythonApplication {
  pname = "warmd";
  version = "0.1.0";
  pyproject = true;

  # Only what the wheel is built from, so editing tests or docs does not rebuild warmd.
  src = lib.fileset.toSource {
    root = ../.;
    fileset = lib.fileset.unions [
      ../pyproject.toml
      ../README.md
      ../daemon
    ];
  };

  build-system = [ hatchling ];

  # Keep in step with [project] dependencies in pyproject.toml (tests/test_nix.py checks it).
  dependencies = [
    httpx
    watchdog
    apscheduler
    platformdirs
    loguru
    packaging
    tomlkit
  ];

  # The test suite drives a pinned uv from PyPI and local index servers; it runs in CI, not here.
  doCheck = false;
  pythonImportsCheck = [ "warmd" ];

  meta = {
    description = "Keeps the pinned GPU wheels of every uv project warm in the user's uv cache";
    license = lib.licenses.mit;
    mainProgram = "warmd";
    platforms = lib.platforms.linux;
  };
}
