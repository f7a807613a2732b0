"""Row 12: a lab of two workstations warming the same project through a mirror (the real nginx with
contrib/nginx's config) in front of an origin behind a capped uplink. The first workstation's
bytes cross the uplink once; the second's come from the mirror's cache. Side by side with uv's
own cold `uv sync` from the origin (what each machine pays without warmd or a mirror)."""

from __future__ import annotations

import json
from pathlib import Path

from bench.core import Log, Mode, Row, alternate, fresh, measure, med, mib, remove, secs
from bench.lab import LATENCY, Server, gpu_bytes, locked_project, prefetch, torch_set, warmd_config
from tests.support.mirror import NginxMirror
from tests.support.prereqs import PREREQS

UPLINK = 50 * 2**20  # the lab's uplink, shared by every connection to the origin
WHAT = "two workstations warming one project through a lab mirror (nginx), uplink 50 MiB/s shared"


def rows(mode: Mode, tmp: Path, uv: Path, log: Log) -> list[Row]:
    """Row 12: machine 1 and machine 2 through the mirror, and uv's cold sync from the origin."""
    nginx = PREREQS["nginx"].find()
    if nginx is None:
        raise RuntimeError(f"{PREREQS['nginx'].what} is missing: {PREREQS['nginx'].install}")
    wheels = tmp / "mi-wheels"
    gpu = gpu_bytes(torch_set(wheels, mode.torch_size))
    first, second, baseline = [], [], []
    first_bytes, second_bytes, uv_bytes = [], [], []
    with Server(wheels, 0, LATENCY, link=UPLINK) as server:
        project = locked_project(tmp, "mi", server, uv)
        host = server.url.split("//", 1)[1]

        def uv_side(i: int) -> None:
            cache = fresh(tmp / "mi-cache")
            remove(project / ".venv")
            server.reset()
            baseline.append(measure([str(uv), "sync"], cwd=project, env=server.env(cache)))
            uv_bytes.append(server.stats()["total"])
            log(f"  [mirror] uv sync cold #{i + 1}: {baseline[-1].wall:.2f} s, {mib(uv_bytes[-1])} from the origin")

        def lab_side(i: int) -> None:
            with NginxMirror(nginx, fresh(tmp / "mi-mirror"), {host: server.url}) as mirror:
                for n, (times, pulled) in enumerate(((first, first_bytes), (second, second_bytes)), 1):
                    cache = fresh(tmp / f"mi-ws{n}-cache")
                    folder = fresh(tmp / f"mi-ws{n}")
                    cfg = warmd_config(folder, uv, cache)
                    with cfg.open("a") as f:
                        f.write(f"[[mirrors]]\norigin = {json.dumps(server.url + '/')}\n"
                                f"url = {json.dumps(mirror.prefix_for(host))}\n")
                    server.reset()
                    times.append(prefetch(cfg, project, server.env(cache)))
                    pulled.append(server.stats()["total"])
                    log(f"  [mirror] machine {n} #{i + 1}: {times[-1].wall:.2f} s, {mib(pulled[-1])} from the origin")
            remove(tmp / "mi-mirror", tmp / "mi-ws1", tmp / "mi-ws2", tmp / "mi-ws1-cache", tmp / "mi-ws2-cache")

        alternate(mode.reps, {"uv": uv_side, "lab": lab_side})
    remove(tmp / "mi", tmp / "mi-cache", wheels)
    t1, t2, tu = (med([m.wall for m in ms]) for ms in (first, second, baseline))
    return [Row(
        key="12",
        what=WHAT,
        warmd=f"machine 2 `warmd prefetch` {secs([m.wall for m in second])}, {mib(med(second_bytes))} from the origin",
        baseline=(f"machine 1 `warmd prefetch` {secs([m.wall for m in first])}, {mib(med(first_bytes))} from the origin; "
                  f"cold `uv sync` {secs([m.wall for m in baseline])}, {mib(med(uv_bytes))} from the origin"),
        result=f"machine 2 takes **{t2 / t1:.2f}×** machine 1's time and {t2 / tu:.2f}× uv's; origin bytes "
               f"{mib(med(second_bytes))} vs {mib(med(first_bytes))}",
        aim="machine 2: 0 B from the origin",
        note=(f"GPU wheels {mib(gpu)}; origin tests/support/index_server.py (bench/serve.py) with one "
              f"{UPLINK // 2**20} MiB/s token bucket for all connections and 20 ms per response, HTTP; mirror nginx on "
              "127.0.0.1 with contrib/nginx/warmd-mirror.conf (8 MiB slices), its cache emptied before each round; "
              "each machine its own uv cache and warmd store. machine 1 pays the uplink plus the mirror's hop; "
              f"machine 2 reads the mirror's cache. CPU: machine 1 {med([m.cpu for m in first]):.2f} s, "
              f"machine 2 {med([m.cpu for m in second]):.2f} s, uv {med([m.cpu for m in baseline]):.2f} s"),
        figures={"first": [m.wall for m in first], "second": [m.wall for m in second],
                 "uv": [m.wall for m in baseline], "first_bytes": first_bytes, "second_bytes": second_bytes},
    )]
