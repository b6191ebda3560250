"""respcache's management commands, run the way an operator runs them, without 3 s per command.

A fresh ``manage.py`` costs about 3 s of imports (the anthropic SDK alone is 1.7 s), and a run
needs a dozen commands, one of them at a precise moment (a policy edit while the workers hold
the old policy). So one ``manage.py shell`` process is started with the run's environment and
runs each command with Django's ``call_command``: the same command code, arguments and output
as ``manage.py respcache_workload …``, writing to the same database from another process.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

# Read one JSON argv per line, run it, answer one JSON line. Database connections are closed
# after each command, so the shell holds no SQLite file open between commands.
SERVER = """
import io, json, sys
from django.core.management import call_command
from django.db import connections
for line in sys.stdin:
    argv = json.loads(line)
    out = io.StringIO()
    try:
        call_command(*argv, stdout=out, stderr=out)
        answer = {"ok": True, "out": out.getvalue()}
    except BaseException as exc:
        answer = {"ok": False, "out": out.getvalue() + repr(exc)}
    finally:
        connections.close_all()
    print("faults-command " + json.dumps(answer), flush=True)
"""


class CommandFailed(RuntimeError):
    """A management command raised; the message is its output."""


class Commands:
    """A running ``manage.py shell`` that runs management commands on demand."""

    def __init__(self, popen: subprocess.Popen[Any]) -> None:
        self.popen = popen

    @staticmethod
    def argv() -> list[str]:
        return [sys.executable, "manage.py", "shell", "--no-startup", "-c", SERVER]

    def run(self, *argv: str) -> str:
        """Run ``manage.py <argv>``; its output. Raises CommandFailed if it failed."""
        assert self.popen.stdin is not None and self.popen.stdout is not None
        self.popen.stdin.write((json.dumps(list(argv)) + "\n").encode())
        self.popen.stdin.flush()
        while True:
            line = self.popen.stdout.readline().decode()
            if not line:
                raise CommandFailed(f"manage.py shell exited (status {self.popen.poll()}) during {argv}")
            if line.startswith("faults-command "):
                answer = json.loads(line.removeprefix("faults-command "))
                break
        if not answer["ok"]:
            raise CommandFailed(f"manage.py {' '.join(argv)}: {answer['out']}")
        return str(answer["out"])
