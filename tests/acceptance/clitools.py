"""Running the CLI as a user does (`python -m prelabel ...` in a subprocess) and the simulator beside it."""
from __future__ import annotations

import json
import re
import subprocess
import sys
import urllib.request
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "prelabel"]


class Sim:
    """A `prelabel simulate` process (with per-content tracking, unlike bench.harness.simulator)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.root = url.removesuffix("/v1")

    def stats(self, contents: bool = False) -> dict:
        query = "?contents=1" if contents else ""
        with urllib.request.urlopen(f"{self.root}/_sim/stats{query}", timeout=10) as r:
            return json.loads(r.read())

    def by_content(self) -> dict[str, int]:
        return dict((text, n) for text, n in self.stats(contents=True)["by_content"])

    def reset(self) -> None:
        req = urllib.request.Request(f"{self.root}/_sim/reset", data=b"", method="POST")
        with urllib.request.urlopen(req, timeout=10):
            pass


@contextmanager
def sim_processes(*configs: tuple[str, ...]):
    """`prelabel simulate --port 0` once per config, all starting at once; yields a Sim for each."""
    procs = [subprocess.Popen([*CLI, "simulate", "--port", "0", *args], stdout=subprocess.PIPE, text=True, cwd=REPO)
             for args in configs]
    try:
        sims = []
        for proc in procs:
            line = proc.stdout.readline()
            match = re.search(r"(http://127\.0\.0\.1:\d+/v1)", line)
            assert match, f"the simulator did not start: {line!r}"
            sims.append(Sim(match[1]))
        yield sims
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(10)


def start(*args: str, env: dict, cwd: Path | None = None) -> subprocess.Popen:
    return subprocess.Popen([*CLI, *map(str, args)], env=env, cwd=cwd, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def finish(proc: subprocess.Popen, timeout: float = 60) -> subprocess.CompletedProcess:
    out, err = proc.communicate(timeout=timeout)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def prelabel(*args: str, env: dict, cwd: Path | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return finish(start(*args, env=env, cwd=cwd), timeout)


def prelabel_all(*commands: tuple, env: dict) -> list[subprocess.CompletedProcess]:
    """Several independent commands at once (each costs ~1 s of imports)."""
    procs = [start(*command, env=env) for command in commands]
    return [finish(p) for p in procs]
