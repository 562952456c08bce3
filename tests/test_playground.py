"""The playground's files as palaver serves them (CONTRACT §12); the page itself is driven in a
real browser by tests/browser."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from palaver.playground.files import ASSET_PREFIX, CSP
from tests.conftest import run_palaver

STATIC = Path(__file__).parents[1] / "src" / "palaver" / "playground" / "static"
WEB = Path(__file__).parents[1] / "web"

# What makes a browser load something: attributes, module imports, CSS urls.
LOADS = re.compile(
    r"""(?:src|href)="([^"]+)"|(?:import|from)\s*["']([^"']+)["']|import\(\s*["']([^"']+)["']"""
    r"""|url\(\s*["']?([^"')]+)"""
)


@pytest.fixture
def url() -> Iterator[str]:
    with run_palaver(server={"api_keys": ["sk-one"]}) as running:
        yield running


def loaded_by(name: str) -> list[str]:
    text = (STATIC / name).read_text()
    if name.startswith("vendor/"):
        return []  # the libraries load nothing (checked: no import in them)
    return [next(g for g in match.groups() if g) for match in LOADS.finditer(text)]


def test_the_page_is_served_without_a_key_with_a_strict_policy(url: str) -> None:
    page = httpx.get(url + "/")
    assert page.status_code == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    assert page.headers["content-security-policy"] == CSP.decode()
    assert page.headers["x-content-type-options"] == "nosniff"
    assert "<title>palaver playground</title>" in page.text
    assert httpx.get(url + "/v1/models").status_code == 401  # the API still needs the key
    head = httpx.head(url + "/")
    assert head.status_code == 200
    assert head.content == b""
    assert head.headers["etag"] == page.headers["etag"]


def test_a_reload_revalidates_with_the_etag(url: str) -> None:
    first = httpx.get(url + ASSET_PREFIX + "app.js")
    assert first.status_code == 200
    assert first.headers["content-type"] == "text/javascript; charset=utf-8"
    assert first.headers["cache-control"] == "no-cache"
    again = httpx.get(
        url + ASSET_PREFIX + "app.js", headers={"If-None-Match": first.headers["etag"]}
    )
    assert again.status_code == 304
    assert again.content == b""
    changed = httpx.get(url + ASSET_PREFIX + "app.js", headers={"If-None-Match": '"other"'})
    assert changed.status_code == 200
    assert changed.content == first.content


def test_every_file_the_page_loads_is_served_and_none_from_elsewhere(url: str) -> None:
    seen, pending = set(), ["index.html"]
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        for target in loaded_by(name):
            assert not re.match(r"^[a-z]+:|^//", target), f"{name} loads {target} from elsewhere"
            if target.startswith(ASSET_PREFIX):
                pending.append(target.removeprefix(ASSET_PREFIX))
            else:
                base = str(Path(name).parent)
                pending.append(str(Path(base, target)).removeprefix("./"))
    assert {"app.js", "api.js", "sidebar.js", "render.js", "style.css"} <= seen
    assert {"vendor/marked.esm.js", "vendor/purify.es.mjs"} <= seen
    for name in seen:
        path = "/" if name == "index.html" else ASSET_PREFIX + name
        response = httpx.get(url + path)
        assert response.status_code == 200, path
        assert response.content == (STATIC / name).read_bytes()
    for vendored in ("marked.esm.js", "purify.es.mjs"):
        text = (STATIC / "vendor" / vendored).read_text()
        assert not re.search(r"^\s*import\s", text, re.MULTILINE), vendored


def test_an_unknown_playground_file_is_a_json_404(url: str) -> None:
    response = httpx.get(url + ASSET_PREFIX + "nope.js")
    assert response.status_code == 404
    assert response.json()["error"]["message"]


def test_the_vendored_libraries_are_the_locked_ones() -> None:
    """web/vendor.mjs copied them from web/node_modules (npm ci from web/package-lock.json)."""
    node = shutil.which("node")
    assert node is not None, "node is needed (the Makefile's test runs npm ci in web/)"
    if not (WEB / "node_modules").is_dir():
        pytest.fail("web/node_modules is missing: make test runs npm ci in web/")
    check = subprocess.run(
        [node, "vendor.mjs", "--check"], cwd=WEB, capture_output=True, text=True, check=False
    )
    assert check.returncode == 0, check.stderr
