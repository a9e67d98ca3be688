"""User data API against the real stack (Ray Serve memory deployment, SQLite file, FAISS, MiniLM, vLLM)."""

from __future__ import annotations

import sqlite3

import pytest

from tests.stack.harness import Stack

ROMANCE = [
    {"input": "Tag the movie: two strangers fall in love on a night train", "output": "romance"},
    {"input": "Tag the movie: a widow finds love again by the sea", "output": "romance"},
    {"input": "Tag the movie: a secret affair at a royal wedding", "output": "romance"},
]
VIOLENCE = [
    {"input": "Tag the movie: a hitman takes bloody revenge on his old gang", "output": "violence"},
    {"input": "Tag the movie: soldiers fight a brutal battle for a bridge", "output": "violence"},
    {"input": "Tag the movie: a bank robbery ends in a shootout", "output": "violence"},
]
SECRET = "My bank PIN is 7302, never tell anyone"


def _error(resp: object, status: int) -> dict:
    assert resp.status_code == status, resp.text  # type: ignore[attr-defined]
    err = resp.json()["error"]  # type: ignore[attr-defined]
    assert set(err) == {"message", "type", "param", "code"} and err["code"] == status
    return err


def test_import_search_isolation_profile_export_delete(stack: Stack) -> None:
    with stack.http() as http:
        ids_a = http.post("/v1/users/api-alice/interactions", json=[*ROMANCE, {"input": SECRET}]).json()[
            "ids"
        ]
        ids_b = http.post("/v1/users/api-bob/interactions", json=VIOLENCE).json()["ids"]
        assert len(ids_a) == 4 and len(ids_b) == 3 and set(ids_a).isdisjoint(ids_b)

        query = {"query": "Tag the movie: a love story", "k": 2}
        hits_a = http.get("/v1/users/api-alice/memories", params=query).json()["hits"]
        hits_b = http.get("/v1/users/api-bob/memories", params=query).json()["hits"]
        assert {h["interaction"]["id"] for h in hits_a} <= set(ids_a)
        assert {h["interaction"]["id"] for h in hits_b} <= set(ids_b)
        assert all(h["interaction"]["output"] == "romance" for h in hits_a)
        assert hits_a[0]["score"] >= hits_a[1]["score"]

        for probe in (SECRET, "bank PIN", "what is alice's PIN number?", "7302"):
            hits = http.get("/v1/users/api-bob/memories", params={"query": probe, "k": 50}).json()["hits"]
            assert hits and all("7302" not in h["interaction"]["input"] for h in hits)
            assert {h["interaction"]["user_id"] for h in hits} == {"api-bob"}

        profile = http.post("/v1/users/api-bob/profile/refresh")
        assert profile.status_code == 200, profile.text
        body = profile.json()
        assert (
            body["text"].strip() and body["version"] >= 1 and body["prompt"].startswith("profile_summary@v")
        )
        assert http.get("/v1/users/api-bob/profile").json()["version"] == body["version"]

        export = http.get("/v1/users/api-alice/export").json()
        assert sorted(i["id"] for i in export["interactions"]) == sorted(ids_a)
        assert export["user"]["user_id"] == "api-alice"

        assert http.delete("/v1/users/api-alice").json() == {"user_id": "api-alice", "deleted": True}
        for path in ("/v1/users/api-alice/export", "/v1/users/api-alice/profile"):
            _error(http.get(path), 404)
        _error(http.get("/v1/users/api-alice/memories", params={"query": "PIN"}), 404)
        _error(http.delete("/v1/users/api-alice"), 404)
        # (That the index holds none of her vectors is checked on the service: test_memory_service.py.)
        # The id used again on purpose starts empty: no old memory comes back.
        http.post("/v1/users/api-alice/interactions", json=ROMANCE[:1]).raise_for_status()
        hits = http.get("/v1/users/api-alice/memories", params={"query": SECRET, "k": 50}).json()["hits"]
        assert [h["interaction"]["input"] for h in hits] == [ROMANCE[0]["input"]]
        http.delete("/v1/users/api-alice").raise_for_status()
        # Bob is untouched.
        assert len(http.get("/v1/users/api-bob/export").json()["interactions"]) == 3

    db = sqlite3.connect(stack.data_dir / "personaagent.db")
    assert db.execute("SELECT COUNT(*) FROM interactions WHERE user_id='api-alice'").fetchone()[0] == 0
    assert db.execute("SELECT COUNT(*) FROM interactions WHERE input LIKE '%7302%'").fetchone()[0] == 0
    db.close()


def test_reads_never_create_a_user_or_a_persona(stack: Stack) -> None:
    with stack.http() as http:
        for path in ("persona", "persona/history", "profile", "export"):
            _error(http.get(f"/v1/users/safe-nobody/{path}"), 404)
        _error(http.get("/v1/users/safe-nobody/memories", params={"query": "x"}), 404)
        _error(http.post("/v1/users/safe-nobody/persona"), 404)
        _error(http.get("/v1/users/safe-nobody/export"), 404)  # still nobody: no read or 404 created them

        http.post("/v1/users/safe-carol/interactions", json=ROMANCE).raise_for_status()
        err = _error(http.get("/v1/users/safe-carol/persona"), 404)
        assert "no persona yet" in err["message"]
        assert http.get("/v1/users/safe-carol/persona/history").json() == []  # the GET wrote nothing
        created = http.post("/v1/users/safe-carol/persona").json()
        assert created["version"] == 1 and created["reason"] == "init"
        assert http.post("/v1/users/safe-carol/persona").json()["version"] == 1  # idempotent
        assert http.get("/v1/users/safe-carol/persona").json() == created


def test_profile_is_written_on_import(stack: Stack) -> None:
    with stack.http() as http:
        http.post("/v1/users/api-carol/interactions", json=ROMANCE).raise_for_status()
        for _ in range(60):  # the first profile is written in the background after an import
            resp = http.get("/v1/users/api-carol/profile")
            if resp.status_code == 200:
                break
            import time

            time.sleep(1)
        assert resp.status_code == 200 and resp.json()["version"] == 1


@pytest.mark.parametrize(
    "user_id",
    ["bad%20id", "x" * 129, "semi;colon", "%C3%A9l%C3%A8ve"],
    ids=["space", "too-long", "semicolon", "non-ascii"],
)
def test_invalid_user_ids_are_400(stack: Stack, user_id: str) -> None:
    with stack.http() as http:
        _error(http.post(f"/v1/users/{user_id}/interactions", json=ROMANCE), 400)
        _error(http.get(f"/v1/users/{user_id}/export"), 400)


def test_bad_imports_and_queries(stack: Stack) -> None:
    with stack.http() as http:
        _error(http.post("/v1/users/api-dan/interactions", json=[]), 400)
        _error(http.post("/v1/users/api-dan/interactions", json=[{"input": "   "}]), 400)
        _error(http.post("/v1/users/api-dan/interactions", json=[{"output": "no input"}]), 400)
        _error(http.post("/v1/users/api-dan/interactions", json={"input": "not a list"}), 400)
        _error(http.post("/v1/users/api-dan/interactions", json=[{"input": "a", "unknown": 1}]), 400)
        _error(http.post("/v1/users/api-dan/interactions", json=[{"input": "a"}] * 1001), 413)
        _error(http.post("/v1/users/api-dan/interactions", json=[{"input": "a" * 20_001}]), 400)
        _error(http.get("/v1/users/api-dan/export"), 404)  # nothing above was written
        http.post("/v1/users/api-dan/interactions", json=VIOLENCE).raise_for_status()
        _error(http.get("/v1/users/api-dan/memories"), 400)
        _error(http.get("/v1/users/api-dan/memories", params={"query": "x", "k": 0}), 400)
        _error(http.get("/v1/users/api-dan/memories", params={"query": "x", "k": 51}), 400)
        _error(http.get("/v1/users/api-dan/memories", params={"query": "x", "k": "many"}), 400)
        _error(http.get("/v1/users/api-nobody/memories", params={"query": "x"}), 404)
        _error(http.post("/v1/users/api-nobody/profile/refresh"), 404)
        _error(http.get("/v1/users/api-nobody/profile"), 404)


def test_user_api_is_in_openapi(stack: Stack) -> None:
    with stack.http() as http:
        paths = http.get("/openapi.json").json()["paths"]
    for path in (
        "/v1/users/{user_id}/interactions",
        "/v1/users/{user_id}/memories",
        "/v1/users/{user_id}/profile",
        "/v1/users/{user_id}/profile/refresh",
        "/v1/users/{user_id}/export",
        "/v1/users/{user_id}",
    ):
        assert path in paths
