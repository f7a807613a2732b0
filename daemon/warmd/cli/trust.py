"""`warmd trust` and `untrust`: record which projects may reach the private hosts their uv.lock names."""

from __future__ import annotations

import argparse
import sys
import time

from ..base import Config, InputError, exit_code


def _trust(args: argparse.Namespace, config: Config) -> int:
    from ..uv import Project, read_lock
    from ..transfer import TrustStore, lock_origins

    store = TrustStore(config.state_dir)
    if args.list == bool(args.paths):
        raise InputError("give the project folders to trust, or --list (not both)")
    if args.list:
        for ps in config.projects:
            print(f"{ps.path}: trusted by its [[project]] table in {config.source or 'the config'}: every host "
                  "its uv.lock names")
        rows = store.read()
        for t in rows:
            when = time.strftime("%Y-%m-%d %H:%M", time.localtime(t.trusted_at))
            print(f"{t.path}: trusted {when}: {', '.join(t.origins) or 'no host'}")
        if not config.projects and not rows:
            print("no trusted project (`warmd trust PATH` trusts one)")
        return exit_code()
    found = []
    for path in args.paths:  # every path is read before anything is recorded: one bad path changes nothing
        project = Project.at(path)
        found.append((project.folder, lock_origins(read_lock(project.lock))))
    for folder, origins in found:
        store.add(folder, origins)
        print(f"trusted {folder}: warmd may connect to what its uv.lock names now: {', '.join(origins) or 'no host'}")
    return exit_code()


def _untrust(args: argparse.Namespace, config: Config) -> int:
    from ..transfer import TrustStore
    from ..uv import Project

    store = TrustStore(config.state_dir)
    tables = {ps.path for ps in config.projects}
    recorded = {t.path for t in store.read()}
    folders = []
    for path in args.paths:  # every path is checked before anything is removed: one bad path changes nothing
        project = Project.of(path)
        folder = project.folder
        if folder not in recorded and folder not in tables:
            project.checked()  # a folder that is not there (and was not trusted under that name): `trust`'s own words
        folders.append(folder)
    tabled = False
    for folder in folders:
        if store.remove(folder):
            print(f"untrusted {folder}: warmd reaches only public hosts and your own indexes for it")
        elif folder in tables:
            print(f"warmd: {folder} is trusted by its [[project]] table in {config.source or 'the config'}; "
                  "remove the table", file=sys.stderr)
            tabled = True
        else:
            print(f"{folder} was not trusted")
    return exit_code(bad_input=tabled)
