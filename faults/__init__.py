"""Fault injection against respcache as deployed (``python -m faults``, ``make faults``).

faults/rig.py starts a private Redis, a fake Messages API and gunicorn with two gevent workers;
each scenario (faults/scenarios.py) breaks one part for real (SIGKILL, SIGSTOP, maxmemory,
CLIENT KILL, a moved SQLite file, an upstream that is slow or answers 429) and reports what the
callers saw against what the service promises (docs/reference.md, "Faults"). tests/test_faults.py runs the same
scenarios as tests.
"""
