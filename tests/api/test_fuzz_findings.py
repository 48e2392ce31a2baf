"""Inputs the schema fuzzer (tests/e2e/test_fuzz.py) found to break the server, each sent once here.

Every case is a request a client could send; the server must answer it with a documented 4xx in
fal's `{"detail": ...}` shape, never a 500.
"""

from __future__ import annotations

from typing import Iterator
from urllib.parse import quote

import pytest

from .conftest import Api, make_api

APP = "/queue/test-owner/echo"


@pytest.mark.parametrize("request_id", ["ü\U0010fd08", "a\x01b", "tab\there", "x" * 300])
@pytest.mark.parametrize("suffix", ["", "/status", "/status/stream", "/cancel"])
def test_a_request_id_that_cannot_be_a_header_value_is_a_plain_404(api: Api, request_id: str, suffix: str) -> None:
    # The id of an unknown request is echoed in x-fal-request-id; one that is not printable ASCII
    # (non-Latin-1 characters, control characters) used to make the response itself fail with a 500.
    method = "PUT" if suffix == "/cancel" else "GET"
    r = api.client.request(method, f"{APP}/requests/{quote(request_id, safe='')}{suffix}", headers=api.auth)

    assert r.status_code == 404, r.text
    assert r.headers["content-type"] == "application/json"
    assert "x-fal-request-id" not in r.headers


def test_a_printable_unknown_request_id_is_still_echoed(api: Api) -> None:
    r = api.client.get(f"{APP}/requests/no-such-id/status", headers=api.auth)

    assert r.status_code == 404
    assert r.headers["x-fal-request-id"] == "no-such-id"


@pytest.mark.parametrize("route", ["/rest/storage/upload/initiate", "/rest/storage/upload/initiate-multipart"])
@pytest.mark.parametrize(("field", "value"), [("file_name", {}), ("file_name", 7), ("content_type", ["video/mp4"]), ("content_type", True)])
def test_initiate_refuses_a_name_or_type_that_is_not_a_string(api: Api, route: str, field: str, value: object) -> None:
    # str() used to turn these into a file called "7" or a content type "['video/mp4']".
    r = api.client.post(route, json={field: value}, headers=api.auth)

    assert r.status_code == 422, r.text
    assert r.json() == {"detail": [{"loc": ["body", field], "msg": "Input should be a valid string", "type": "string_type", "input": value}]}


def test_initiate_still_takes_strings_and_defaults(api: Api) -> None:
    named = api.client.post("/rest/storage/upload/initiate", json={"content_type": "video/mp4", "file_name": "clip.mp4"}, headers=api.auth)
    empty = api.client.post("/rest/storage/upload/initiate", json={"content_type": None, "file_name": ""}, headers=api.auth)

    assert named.status_code == 200 and named.json()["file_url"].endswith("/clip.mp4")
    assert empty.status_code == 200 and empty.json()["file_url"].endswith("/upload.bin")


@pytest.mark.parametrize("part", ["0", "10001", "144115188075855873"])
def test_a_part_number_out_of_range_is_a_422_before_the_body_is_read(api: Api, part: str) -> None:
    upload_id = api.client.post("/rest/storage/upload/initiate", json={}, headers=api.auth).json()["upload_url"].rsplit("/", 1)[1]

    r = api.client.put(f"/cdn/uploads/{upload_id}/{part}", content=b"x")

    # It was a 400 from the store, undocumented; the document says 1..10000.
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["loc"] == ["path", "part_number"]


def test_put_on_a_complete_url_is_405_not_a_bad_part_number(api: Api) -> None:
    r = api.client.put("/cdn/uploads/some-upload/complete")

    assert r.status_code == 405
    assert r.headers["allow"] == "POST"


@pytest.fixture(params=["sqlite", "postgresql"])
def any_db_api(request: pytest.FixtureRequest, tmp_path) -> Iterator[Api]:
    overrides = {"database_url": request.getfixturevalue("postgres_url")} if request.param == "postgresql" else {}
    yield from make_api(tmp_path, **overrides)


@pytest.mark.parametrize(("method", "path"), [
    ("GET", f"{APP}/requests/a%00b/status"),
    ("GET", f"{APP}/requests/a%00b"),
    ("PUT", f"{APP}/requests/a%00b/cancel"),
])
def test_a_nul_in_a_request_id_is_a_404_on_every_database(any_db_api: Api, method: str, path: str) -> None:
    # PostgreSQL refuses NUL in text: the lookup itself used to fail with a 500.
    r = any_db_api.client.request(method, path, headers=any_db_api.auth)

    assert r.status_code == 404, r.text


def test_a_nul_in_the_history_filter_is_a_422_on_every_database(any_db_api: Api) -> None:
    r = any_db_api.client.get("/requests", params={"endpoint_id": "a\x00b"}, headers=any_db_api.auth)

    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["loc"] == ["query", "endpoint_id"]


def test_a_cancel_path_no_route_matches_is_a_404_the_document_declares(api: Api) -> None:
    # A newline in the app part matches no route: the router's 404 carries `detail`, not the
    # cancel route's `{"status": "NOT_FOUND"}`; the document used to allow only the latter.
    r = api.client.put("/queue/test-owner/ec%0Aho/requests/some-id/cancel", headers=api.auth)
    declared = api.client.get("/openapi.json").json()["paths"]["/queue/{app}/requests/{request_id}/cancel"]["put"]["responses"]["404"]

    assert r.status_code == 404 and "detail" in r.json()
    assert {"$ref": "#/components/schemas/FalError"} in declared["content"]["application/json"]["schema"]["anyOf"]
