"""The console's static files: how ``/ui`` answers (in memory, behind the
real gate in ``required`` mode), and rules on the files themselves that
keep the Content-Security-Policy and the "payloads are text" promise true.

The console's behaviour in a browser is tested in ``tests/browser/``.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from eventbus.http import console
from tests.unit.test_access import Api
from tests.unit.test_tokens import done

STATIC = Path(console.__file__).parent / console.STATIC_DIRECTORY
SCRIPTS = sorted(STATIC.glob("*.js"))
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def api() -> Api:
    return Api()  # --auth required: every API route needs a token


def test_the_console_page_needs_no_token_and_carries_the_security_headers(api):
    code, headers, body = api.call("GET", "/ui/")
    assert code == 200, body
    assert headers.getRawHeaders("Content-Type") == ["text/html; charset=utf-8"]
    csp = headers.getRawHeaders("Content-Security-Policy")[0]
    assert "script-src 'self'" in csp and "connect-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert headers.getRawHeaders("X-Frame-Options") == ["DENY"]
    assert headers.getRawHeaders("X-Content-Type-Options") == ["nosniff"]
    assert headers.getRawHeaders("Cache-Control") == ["no-cache"]
    assert b'<script type="module" src="console.js">' in body
    # the API itself still needs a token
    assert api.call("GET", "/subscriptions")[0] == 401


def test_a_refused_token_does_not_keep_the_console_from_loading(api):
    code, _, _ = api.call("GET", "/ui/console.js", headers={"Authorization": "Bearer ebt_nonsense"})
    assert code == 200


@pytest.mark.parametrize(
    ("name", "content_type"),
    [
        ("console.js", "text/javascript; charset=utf-8"),
        ("console.css", "text/css; charset=utf-8"),
        ("icon.svg", "image/svg+xml"),
        ("index.html", "text/html; charset=utf-8"),
    ],
)
def test_each_file_has_the_content_type_of_its_kind(api, name, content_type):
    code, headers, body = api.call("GET", f"/ui/{name}")
    assert code == 200
    assert headers.getRawHeaders("Content-Type") == [content_type]
    assert headers.getRawHeaders("Content-Security-Policy")
    assert body == (STATIC / name).read_bytes() or name.endswith(".svg")


def test_the_folder_without_its_slash_is_redirected_with_the_query(api):
    d = api.treq.request("GET", "http://bus.test/ui?x=1", allow_redirects=False)
    api.treq.flush()
    response = done(d)
    assert response.code == 308
    assert response.headers.getRawHeaders("Location") == ["ui/?x=1"]


def test_a_known_version_is_answered_not_modified(api):
    _, headers, _ = api.call("GET", "/ui/")
    etag = headers.getRawHeaders("ETag")[0]
    code, headers, body = api.call("GET", "/ui/", headers={"If-None-Match": f'W/"other", {etag}'})
    assert code == 304 and not body
    assert headers.getRawHeaders("ETag") == [etag]
    assert api.call("GET", "/ui/", headers={"If-None-Match": '"other"'})[0] == 200


@pytest.mark.parametrize("path", ["/ui/nothing.js", "/ui/static/console.js", "/ui/../setup.py", "/ui/.hidden"])
def test_anything_else_under_ui_is_a_json_404(api, path):
    code, headers, body = api.call("GET", path)
    assert code == 404, body
    assert "error" in body


def test_other_methods_are_a_405_with_allow(api):
    code, headers, body = api.call("POST", "/ui/", body={"x": 1})
    assert code == 405
    assert headers.getRawHeaders("Allow") == ["GET, HEAD"]
    assert "error" in body


def test_head_answers_the_headers_alone(api):
    code, headers, body = api.call("HEAD", "/ui/console.css")
    assert code == 200 and not body
    assert headers.getRawHeaders("Content-Length") == [str(len((STATIC / "console.css").read_bytes()))]


# -- the files themselves -------------------------------------------------------------------
#: Ways to turn a string into markup or code; the console uses none of them.
MARKUP_SINKS = re.compile(
    r"\.innerHTML\b|\.outerHTML\b|insertAdjacentHTML|document\.write|\beval\(|new Function\(|"
    r"createContextualFragment|DOMParser|setAttribute\(\s*[\"']on|srcdoc"
)


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_no_script_turns_text_into_markup_or_code(script):
    found = [
        f"line {n}: {line.strip()}"
        for n, line in enumerate(script.read_text().splitlines(), 1)
        if MARKUP_SINKS.search(line)
    ]
    assert not found, f"{script.name} turns a string into markup or code: {found}"


def test_the_page_has_no_inline_script_or_style():
    html = (STATIC / "index.html").read_text()
    scripts = re.findall(r"<script\b([^>]*)>(.*?)</script>", html, re.S)
    assert scripts and all("src=" in attrs and not body.strip() for attrs, body in scripts)
    assert "<style" not in html and " style=" not in html
    assert not re.search(r"\son[a-z]+=", html), "an inline event handler"


def test_every_file_the_console_loads_is_shipped():
    html = (STATIC / "index.html").read_text()
    wanted = set(re.findall(r'(?:src|href)="([^"#]+)"', html))
    for script in SCRIPTS:
        wanted |= {m.removeprefix("./") for m in re.findall(r'from "([^"]+)"', script.read_text())}
    missing = sorted(name for name in wanted if not (STATIC / name).is_file())
    assert not missing, f"loaded but not in {STATIC}: {missing}"
    served = {name.decode() for name in console.load_files()}
    assert wanted <= served


def test_setup_ships_the_static_folder_as_package_data():
    tree = ast.parse((REPO / "setup.py").read_text())
    package_data = next(
        kw.value for node in ast.walk(tree) if isinstance(node, ast.Call)
        for kw in node.keywords if kw.arg == "package_data"
    )
    data = ast.literal_eval(package_data)
    patterns = data.get("eventbus.http", [])
    assert f"{console.STATIC_DIRECTORY}/*" in patterns
    assert all(p.is_file() for p in STATIC.iterdir()), "a subfolder of static/ would not be shipped"
