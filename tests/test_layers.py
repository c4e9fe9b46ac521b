"""HTTP stays at the edge: domain modules import nothing from FastAPI or Starlette."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
WEB = ("fastapi", "starlette")
# The edge: the app, its routers, the HTTP package, the response class they share and the
# console's HTTP plumbing (templates, cookies, security headers).
EDGE = {"service/app.py", "service/responses.py", "service/console/web.py"}


def _is_edge(rel: str) -> bool:
    return rel in EDGE or rel.startswith("service/http/") or rel.endswith("/router.py")


def _domain_modules() -> list[str]:
    files = sorted([*ROOT.glob("geofences/**/*.py"), *ROOT.glob("service/**/*.py")])
    rels = [f.relative_to(ROOT).as_posix() for f in files]
    return [r for r in rels if not _is_edge(r) and "/migrations/" not in r]


def _imported(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize("rel", _domain_modules())
def test_domain_modules_import_no_web_framework(rel: str) -> None:
    web = sorted(n for n in _imported(ROOT / rel) if n.split(".")[0] in WEB)
    assert not web, f"{rel} imports {web}: map HTTP at the edge (service/http, routers)"


def test_the_scan_sees_the_domain() -> None:
    modules = _domain_modules()
    for rel in ("service/errors.py", "service/locations/service.py", "geofences/index.py"):
        assert rel in modules


@pytest.mark.parametrize("rel", sorted(p.name for p in (ROOT / "loadtest").glob("*.py")))
def test_the_load_test_speaks_http_only(rel: str) -> None:
    """loadtest/ is a client: it imports nothing of the service and reads none of its files."""
    path = ROOT / "loadtest" / rel
    mine = sorted(n for n in _imported(path) if n.split(".")[0] in ("service", "geofences"))
    assert not mine, f"loadtest/{rel} imports {mine}"
    assert '"service"' not in path.read_text(), f"loadtest/{rel} reads a path inside service/"
