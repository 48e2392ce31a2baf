"""The playground's pages and static files, the offline /docs and /redoc, and `GET /requests` (history)."""

from __future__ import annotations

import re

import pytest

from motionserve.api.history import MAX_INPUT_STRING

from .conftest import Api

# src/href attributes and CSS url()s: what a browser would load from a page or stylesheet.
_LOADED = re.compile(r"""(?:src|href)\s*=\s*["']([^"']+)["']|url\(\s*["']?([^"')]+)""", re.IGNORECASE)


def loaded_urls(text: str) -> list[str]:
    return [a or b for a, b in _LOADED.findall(text)]


@pytest.mark.parametrize("path", ["/", "/playground/test-owner/echo", "/playground/no/such-endpoint", "/playground"])
def test_playground_pages_are_html_that_loads_only_from_this_server(api: Api, path: str) -> None:
    r = api.client.get(path)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in r.headers["content-security-policy"]
    assert "{{" not in r.text  # every placeholder filled
    urls = loaded_urls(r.text)
    assert urls and all(u.startswith("/") and not u.startswith("//") for u in urls), urls
    for url in urls:
        if url.startswith("/static/"):
            assert api.client.get(url).status_code == 200, url


def test_static_files_are_served_with_their_types_and_nothing_else(api: Api) -> None:
    js = api.client.get("/static/playground/app.js")
    assert js.status_code == 200 and "javascript" in js.headers["content-type"]
    assert api.client.get("/static/playground/style.css").headers["content-type"].startswith("text/css")
    for path in ["/static/nope.js", "/static/../playground.py", "/static/%2e%2e/playground.py", "/static/playground/"]:
        assert api.client.get(path).status_code == 404, path


def test_our_own_scripts_and_styles_name_no_other_host(api: Api) -> None:
    for name in ["app.js", "api.js", "form.js", "code.js", "style.css"]:
        text = api.client.get(f"/static/playground/{name}").text
        assert not re.search(r"https?://", text), name
        imports = re.findall(r"""(?m)^\s*(?:import|export)\b[^;\n]*?\bfrom\s*["']([^"']+)|\bimport\(\s*["']([^"']+)""", text)
        assert all((a or b).startswith("./") for a, b in imports), f"{name}: {imports}"


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_pages_load_their_viewers_from_the_package(api: Api, page: str) -> None:
    r = api.client.get(page)
    assert r.status_code == 200
    urls = loaded_urls(r.text)
    assert urls and all(u.startswith("/static/docs/") or u == "/static/favicon.svg" for u in urls), urls
    assert "https://" not in r.text and "http://" not in r.text
    for url in urls:
        asset = api.client.get(url)
        assert asset.status_code == 200 and len(asset.content) > 200, url
    assert "/openapi.json" in r.text
    assert api.client.get("/openapi.json").status_code == 200


def test_swagger_ui_never_calls_the_public_validator(api: Api) -> None:
    assert '"validatorUrl": null' in api.client.get("/docs").text


# ---------------------------------------------------------------- GET /requests


def test_history_lists_only_the_callers_own_requests_newest_first(api: Api) -> None:
    first = api.submit({"prompt": "one"})["request_id"]
    second = api.submit({"prompt": "two"}, endpoint="test-owner/echo/slow")["request_id"]
    bob = api.key_for("bob")
    bobs = api.client.post("/queue/test-owner/echo", json={"prompt": "bob's"}, headers=bob).json()["request_id"]

    mine = api.client.get("/requests", headers=api.auth).json()["requests"]
    assert [e["request_id"] for e in mine] == [second, first]
    assert mine[1]["input"] == {"prompt": "one"} and mine[1]["endpoint_id"] == "test-owner/echo"
    assert mine[1]["status"] == "IN_QUEUE" and mine[1]["state"] == "queued"
    assert mine[1]["status_url"].endswith(f"/queue/test-owner/echo/requests/{first}/status")
    assert mine[0]["status_url"].endswith(f"/queue/test-owner/echo/requests/{second}/status")  # subpath dropped
    assert [e["request_id"] for e in api.client.get("/requests", headers=bob).json()["requests"]] == [bobs]

    only = api.client.get("/requests", params={"endpoint_id": "test-owner/echo"}, headers=api.auth).json()["requests"]
    assert [e["request_id"] for e in only] == [first]
    assert [e["request_id"] for e in api.client.get("/requests?limit=1", headers=api.auth).json()["requests"]] == [second]


def test_history_carries_results_and_errors(api: Api) -> None:
    ok, failed, cancelled = (api.submit({"prompt": p})["request_id"] for p in ("ok", "bad", "gone"))
    api.worker.succeed(api.worker.claim())  # type: ignore[arg-type]
    api.worker.fail(api.worker.claim(), 422, [{"loc": ["body", "video_url"], "msg": "cannot fetch", "type": "x"}], "file_download_error")  # type: ignore[arg-type]
    api.client.put(f"/queue/test-owner/echo/requests/{cancelled}/cancel", headers=api.auth)
    entries = {e["request_id"]: e for e in api.client.get("/requests", headers=api.auth).json()["requests"]}
    assert entries[ok]["state"] == "succeeded" and entries[ok]["result"] == {"echo": "ok"} and entries[ok]["error"] is None
    assert entries[ok]["finished_at"] and entries[ok]["status"] == "COMPLETED"
    assert entries[failed]["state"] == "failed" and entries[failed]["result"] is None
    assert entries[failed]["error"] == "video_url: cannot fetch" and entries[failed]["error_type"] == "file_download_error"
    assert entries[cancelled]["state"] == "cancelled" and entries[cancelled]["error"] == "Request was cancelled"


def test_history_leaves_out_huge_strings_and_says_which(api: Api) -> None:
    uri = "data:image/png;base64," + "A" * MAX_INPUT_STRING
    api.submit({"prompt": "small", "video_url": uri})
    entry = api.client.get("/requests", headers=api.auth).json()["requests"][0]
    assert entry["input"] == {"prompt": "small", "video_url": None} and entry["omitted"] == ["video_url"]


def test_history_needs_a_key_and_bounds_its_limit(api: Api) -> None:
    assert api.client.get("/requests").status_code == 401
    for limit in (0, 101):
        r = api.client.get(f"/requests?limit={limit}", headers=api.auth)
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["query", "limit"]
