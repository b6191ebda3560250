"""The docs are the public spec and cannot drift from the code: docs/reference.md names every
setting (with its default), environment variable, command and option, public URL, metric and
exported name the code has, and nothing the code lacks; the README and docs/ link only to files
in the repository. And what they tell operators to run works: the Prometheus rules use only
metrics /metrics exports (and pass promtool's own unit tests), the CI pipeline's curl bumps."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from django.test import Client

from respcache import stats, store
from respcache.models import AuditEntry, Workload

BASE_DIR = Path(__file__).resolve().parent.parent
PROMETHEUS = BASE_DIR / "docs" / "prometheus"
README = (BASE_DIR / "README.md").read_text()


def rule_expressions() -> list[str]:
    groups = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())["groups"]
    return [rule["expr"] for group in groups for rule in group["rules"]]


@pytest.mark.django_db
def test_alert_rules_use_only_exported_metrics(make_workload: Any, redis_db: Any) -> None:
    make_workload("intents")
    # A minute ago: entries that expired then (the current minute's expiries are not final yet).
    # In its minute bucket and its hour bucket, as every count is: in the first minute of an
    # hour the 1h window reads that minute from the previous hour's bucket.
    keys, _ = stats.bucket_keys("intents", time.time() - 60)
    for key in keys:
        redis_db.hset(key, mapping={"hit": 3, "miss": 1, "wait": 1, "exp_written": 2, "exp_read": 1})
    redis_db.hset(store.totals_key("intents"), mapping={"hit": 3, "miss": 1})
    text = Client().get("/metrics").content.decode()
    exported = set(re.findall(r"^(respcache_[a-z_]+?)(?:_count|_sum)?[{ ]", text, re.M))
    used = {name for expr in rule_expressions() for name in re.findall(r"\b(respcache_[a-z_]+)", expr)}
    assert used, "the rules should use respcache's metrics"
    assert used <= exported, used - exported
    alerts = {
        r["alert"]
        for g in yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())["groups"]
        for r in g["rules"]
        if "alert" in r
    }
    assert {"RespcacheHitRateFalling", "RespcacheStampedeRateRising", "RespcacheDeadWritesHigh"} <= alerts
    assert "docs/prometheus/alerts.yml" in README and "docs/prometheus/scrape.yml" in README


@pytest.mark.skipif(not shutil.which("promtool"), reason="promtool (Debian package prometheus) is not installed")
def test_alert_rules_pass_promtool() -> None:
    for args in (["check", "rules", "alerts.yml"], ["test", "rules", "alerts_test.yml"]):
        done = subprocess.run(["promtool", *args], cwd=PROMETHEUS, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.skipif(not shutil.which("curl"), reason="curl is not installed")
@pytest.mark.django_db(transaction=True)
def test_the_readme_ci_bump_works(live_server: Any, make_workload: Any) -> None:
    """The README's one-line curl, run as a CI pipeline would, against a live server."""
    from respcache.services import api_key_create

    workload = make_workload("intents")
    _, key = api_key_create(name="ci-pipeline", workloads=(), managed_workloads=(workload,))
    (line,) = [line for line in README.splitlines() if line.startswith("curl ") and "/bump/" in line]
    host = re.search(r"https://[^/]+", line)
    assert host is not None
    command = line.replace(host.group(0), live_server.url)
    env = {**os.environ, "RESPCACHE_MANAGE_KEY": key}
    done = subprocess.run(["bash", "-c", command], env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert '"key_version":2' in done.stdout
    assert Workload.objects.get(slug="intents").key_version == 2
    assert AuditEntry.objects.get(action="bump").actor == "apikey:ci-pipeline"


# --- docs/reference.md against the code ----------------------------------------------------------

REFERENCE_PATH = BASE_DIR / "docs" / "reference.md"
REFERENCE = REFERENCE_PATH.read_text()
DOCS = [BASE_DIR / "README.md", *sorted((BASE_DIR / "docs").glob("*.md"))]


def section(text: str, heading: str) -> str:
    """The text under the first heading that reads ``heading`` (any level), up to the next
    heading of the same or a higher level."""
    match = re.search(rf"^(#+) {re.escape(heading)}[ \t]*$", text, re.M)
    assert match is not None, f"no heading {heading!r}"
    level = len(match.group(1))
    end = re.compile(rf"^#{{1,{level}}} ", re.M).search(text, match.end())
    return text[match.end() : end.start() if end else len(text)]


def table_rows(text: str) -> list[list[str]]:
    """The cells of every Markdown table row in ``text`` (header and separator rows left out)."""
    rows = []
    for line in text.splitlines():
        if not line.startswith("|") or set(line) <= {"|", "-", " "}:
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if cells[:2] in (["name", "default"], ["variable", "default"], ["variable", "meaning"]):
            continue
        rows.append(cells)
    return rows


def code_spans(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


def test_every_setting_is_documented_with_its_default() -> None:
    import ast

    from respcache.conf import DEFAULTS

    documented = {}
    for cells in table_rows(section(REFERENCE, "The `RESPCACHE` dict")):
        (name,) = code_spans(cells[0])
        documented[name] = ast.literal_eval(code_spans(cells[1])[0])
    assert set(documented) == set(DEFAULTS), (
        f"undocumented: {sorted(set(DEFAULTS) - set(documented))}, "
        f"no such setting: {sorted(set(documented) - set(DEFAULTS))}"
    )
    for name, default in DEFAULTS.items():
        assert (type(documented[name]), documented[name]) == (type(default), default), name


class _RecordingEnviron(dict[str, str]):
    """An os.environ stand-in that notes every name read from it."""

    def __init__(self, values: dict[str, str], seen: set[str]) -> None:
        super().__init__(values)
        self.seen = seen

    def get(self, key: str, default: Any = None) -> Any:  # type: ignore[override]
        self.seen.add(key)
        return super().get(key, default)

    def __getitem__(self, key: str) -> str:
        self.seen.add(key)
        return super().__getitem__(key)

    def __contains__(self, key: object) -> bool:
        self.seen.add(str(key))
        return super().__contains__(key)


#: Environments that between them take every branch of project/settings.py.
SETTINGS_ENVIRONMENTS = [
    {},
    {
        "DJANGO_DEBUG": "0",
        "DJANGO_SECRET_KEY": "a-real-looking-secret-key-" + "x" * 40,
        "DJANGO_SECURE_PROXY_SSL_HEADER": "1",
        "DATABASE_URL": "postgres://respcache:pw@db.example.com:5432/respcache",
        "REDIS_URL": "rediss://redis.example.com:6380/0",
        "REDIS_PASSWORD": "pw",
        "REDIS_TLS_CA_CERTS": "/ca.pem",
        "REDIS_TLS_CERTFILE": "/client.pem",
        "REDIS_TLS_KEYFILE": "/client.key",
    },
    {"REDIS_SENTINELS": "sentinel-1:26379,sentinel-2:26379", "REDIS_SENTINEL_PASSWORD": "pw"},
    {"REDIS_CLUSTER_NODES": "redis-1:6379,redis-2:6379", "REDIS_CLUSTER_TLS": "1", "REDIS_PASSWORD": "pw"},
]


def environment_reads(path: Path, environments: list[dict[str, str]], monkeypatch: pytest.MonkeyPatch) -> set[str]:
    """The environment variables ``path`` reads when run under each of ``environments``."""
    import runpy

    seen: set[str] = set()
    for environment in environments:
        with monkeypatch.context() as patch:
            patch.setattr(os, "environ", _RecordingEnviron(environment, seen))
            runpy.run_path(str(path))
    return seen


def environment_names_in_source(*roots: Path) -> set[str]:
    """Literal names passed to os.environ.get / os.environ[...] / os.getenv / _env_bool."""
    import ast

    names = set()
    files = [f for root in roots for f in ([root] if root.is_file() else sorted(root.rglob("*.py")))]
    for file in files:
        for node in ast.walk(ast.parse(file.read_text())):
            argument: ast.AST | None = None
            if isinstance(node, ast.Call) and node.args:
                func = node.func
                if (
                    isinstance(func, ast.Attribute)
                    and func.attr in ("get", "getenv")
                    and (func.attr == "getenv" or getattr(func.value, "attr", None) == "environ")
                ) or (isinstance(func, ast.Name) and func.id == "_env_bool"):
                    argument = node.args[0]
            elif isinstance(node, ast.Subscript) and getattr(node.value, "attr", None) == "environ":
                argument = node.slice
            if isinstance(argument, ast.Constant) and isinstance(argument.value, str):
                names.add(argument.value)
    return names


def documented_environment() -> set[str]:
    names = set()
    for cells in table_rows(section(REFERENCE, "Environment variables")):
        names.update(name for name in code_spans(cells[0]) if re.fullmatch(r"[A-Z][A-Z0-9_]+", name))
    return names


def test_every_environment_variable_is_documented(monkeypatch: pytest.MonkeyPatch) -> None:
    read = (
        environment_reads(BASE_DIR / "project" / "settings.py", SETTINGS_ENVIRONMENTS, monkeypatch)
        | environment_reads(BASE_DIR / "gunicorn.conf.py", [{}], monkeypatch)
        | environment_names_in_source(BASE_DIR / "respcache", BASE_DIR / "project", BASE_DIR / "gunicorn.conf.py")
    )
    # Django's own: how manage.py and wsgi.py find the settings, not a setting of the service.
    read.discard("DJANGO_SETTINGS_MODULE")
    documented = documented_environment()
    assert read <= documented, f"undocumented: {sorted(read - documented)}"
    assert documented <= read, f"documented but never read: {sorted(documented - read)}"


def standard_options() -> set[str]:
    from django.core.management.base import BaseCommand

    parser = BaseCommand().create_parser("manage.py", "command")
    return {option for action in parser._actions for option in action.option_strings}


def test_every_management_command_and_option_is_documented() -> None:
    from django.core.management import find_commands, load_command_class

    commands_dir = BASE_DIR / "respcache" / "management"
    commands = find_commands(str(commands_dir))
    assert commands, "respcache should have management commands"
    standard = standard_options()
    for name in commands:
        text = section(REFERENCE, name)
        parser = load_command_class("respcache", name).create_parser("manage.py", name)
        options = {o for action in parser._actions for o in action.option_strings if o.startswith("--")}
        for option in options - standard:
            assert re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", text), f"{name} {option}"
        for action in parser._actions:
            if not action.option_strings:  # a positional argument: SLUG, NAME
                assert (action.metavar or action.dest.upper()) in text, f"{name} {action.dest}"
        mentioned = set(re.findall(r"(?<![\w-])--[a-z][a-z-]*", text))
        assert mentioned <= options | standard, f"{name}: no such option {sorted(mentioned - options - standard)}"


def test_every_command_the_docs_run_exists() -> None:
    from django.core.management import get_commands

    known = set(get_commands())
    for doc in DOCS:
        named = set(re.findall(r"manage\.py (\w+)", doc.read_text()))
        named |= {m for m in re.findall(r"\[`?(respcache_[a-z]+)`?\]\(#", doc.read_text())}
        assert named <= known, f"{doc.name}: no such command {sorted(named - known)}"


def public_urls() -> list[tuple[str, str]]:
    """(path as the docs write it, qualified URL name) of every named route outside the admin."""
    from django.urls import URLPattern, URLResolver, get_resolver

    found = []

    def walk(patterns: list[Any], prefix: str, namespace: str) -> None:
        for pattern in patterns:
            route = prefix + str(pattern.pattern)
            if isinstance(pattern, URLResolver):
                if pattern.namespace == "admin":
                    continue
                inner = f"{namespace}{pattern.namespace}:" if pattern.namespace else namespace
                walk(pattern.url_patterns, route, inner)
            elif isinstance(pattern, URLPattern) and pattern.name:
                found.append(("/" + re.sub(r"<(?:\w+:)?(\w+)>", r"<\1>", route), namespace + pattern.name))

    walk(get_resolver("project.urls").url_patterns, "", "")
    return found


def test_every_public_url_is_documented() -> None:
    urls = public_urls()
    assert len(urls) >= 10, urls
    for path, name in urls:
        assert f"{path}`" in REFERENCE or f"{path}?" in REFERENCE, f"{path} is not documented"
        assert f"`{name}`" in REFERENCE, f"the URL name {name} is not documented"


def test_every_documented_path_exists() -> None:
    from django.urls import Resolver404, resolve

    for doc in DOCS:
        paths = set(re.findall(r"`(?:GET |POST )?(/(?:w|api)/[^`?\s]+|/healthz|/metrics)", doc.read_text()))
        assert paths, doc.name
        for path in paths:
            concrete = re.sub(r"<\w+>", "intents", path)
            try:
                resolve(concrete, "project.urls")
            except Resolver404:
                pytest.fail(f"{doc.name} names {path}, which no route serves")


@pytest.mark.django_db
def test_every_exported_metric_is_documented(make_workload: Any) -> None:
    make_workload("intents")
    text = Client().get("/metrics").content.decode()
    exported = set(re.findall(r"^# TYPE (\w+) ", text, re.M))
    assert "respcache_requests_total" in exported and "respcache_redis_up" in exported, exported
    metrics = section(REFERENCE, "Metrics")
    for name in exported:
        assert re.search(rf"`{name}[`{{]", metrics), f"{name} is not in the Metrics section"
    commands = {p.stem for p in (BASE_DIR / "respcache" / "management" / "commands").glob("respcache_*.py")}
    for doc in DOCS:
        mentioned = set(re.findall(r"\brespcache_[a-z_]+", doc.read_text())) - commands
        mentioned = {re.sub(r"_(count|sum)$", "", m) for m in mentioned}
        assert mentioned <= exported, f"{doc.name}: no such metric {sorted(mentioned - exported)}"


def test_every_exported_name_is_documented() -> None:
    import respcache

    for name in set(respcache.__all__) - {"__version__"}:
        assert re.search(rf"`{name}`", REFERENCE), f"respcache.{name} is not documented"


# --- links -------------------------------------------------------------------------------------

LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def anchors(markdown: str) -> set[str]:
    """GitHub's anchors of a Markdown file's headings."""
    found: set[str] = set()
    in_code = False
    for line in markdown.splitlines():
        if line.startswith("```"):
            in_code = not in_code
        if in_code or not line.startswith("#"):
            continue
        slug = re.sub(r"[^\w\- ]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
        candidate, n = slug, 0
        while candidate in found:
            n += 1
            candidate = f"{slug}-{n}"
        found.add(candidate)
    return found


def test_docs_point_nowhere_outside_the_repository() -> None:
    for doc in DOCS:
        text = doc.read_text()
        for pattern in (r"CONTRACT", r"\.\./shared", r"team's contract", r"(?<![\w.:/])/(?:work|home|Users)/"):
            assert not re.search(pattern, text, re.I), f"{doc.name} mentions {pattern}"
        for target in LINK.findall(text):
            if re.match(r"[a-z][a-z+.-]*:", target) or target.startswith("#"):
                continue
            path = (doc.parent / target.split("#", 1)[0]).resolve()
            assert path.is_relative_to(BASE_DIR), f"{doc.name} links outside the repository: {target}"


def test_every_relative_link_points_at_a_file_that_exists() -> None:
    assert "](docs/reference.md)" in README, "the README should link to the reference"
    checked = 0
    for doc in DOCS:
        text = doc.read_text()
        for target in LINK.findall(text):
            if re.match(r"[a-z][a-z+.-]*:", target):
                continue
            file, _, anchor = target.partition("#")
            path = (doc.parent / file).resolve() if file else doc
            assert path.exists(), f"{doc.name} links to {target}, which does not exist"
            if anchor and path.suffix == ".md":
                assert anchor in anchors(path.read_text()), f"{doc.name} links to {target}: no such heading"
            checked += 1
    assert checked > 20, checked


def test_what_the_docs_tell_embedders_to_import_exists() -> None:
    """The Python paths the Embedding section names (URLconf, views, functions) import."""
    from importlib import import_module

    from django.utils.module_loading import import_string

    named = set(re.findall(r"\b(respcache(?:\.\w+)+)", section(REFERENCE, "Embedding respcache in a Django project")))
    assert "respcache.api.urls" in named, named
    for dotted in named:
        try:
            import_module(dotted)
        except ImportError:
            import_string(dotted)  # raises ImportError when neither a module nor a name in one
