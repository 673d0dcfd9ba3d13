"""`driftrec train` / `model`: published through the real job, served by real gunicorn workers."""

from __future__ import annotations

import json
import signal
import time
import urllib.request
from pathlib import Path

from cli_helpers import fields, invoke, ok, prepare_movielens, spawn
from test_cli_serve import free_port, get, wait_ready

from interest.experiments import CONTROL, TREATMENT, arm_for
from interest.model import load_model
from store.db import Database
from store.versions import active_model_version, list_model_versions

MOVIES = 300


def _post(url: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.status, json.loads(response.read())


def test_running_server_picks_up_a_trained_model_and_follows_new_events(
    tmp_path, cli_env, movielens_dir
):
    env = {**cli_env, "DRIFTREC_RELOAD_INTERVAL_S": "0.5", "DRIFTREC_AUTH": "disabled"}
    prepare_movielens(env, movielens_dir, tmp_path, MOVIES)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "serve.log"
    server = spawn(env, "serve", "--workers", "2", "--port", str(port), log=log)
    try:
        wait_ready(base, server, log)
        status, before = get(f"{base}/v1/users/1/recommendations?k=10")
        assert status == 200 and before["model_version"] is None

        trained = fields(ok(invoke(env, "train")).stdout, "train")
        version = int(trained["model_version"])
        _wait_for(base, log, lambda body: body["model_version"] == version)
        status, body = get(f"{base}/v1/users/1/recommendations?k=10")
        assert body["strategy"] == "personalized" and len(body["items"]) == 10

        # A new event moves the next recommendation at once, with no retraining.
        first = body["items"][0]["id"]
        status, result = _post(
            f"{base}/v1/events",
            {
                "events": [
                    {
                        "id": "fresh-1",
                        "user_id": "1",
                        "item_id": first,
                        "type": "purchase",
                        "timestamp": time.time(),
                    }
                ]
            },
        )
        assert status == 200 and result["accepted"] == 1
        status, after = get(f"{base}/v1/users/1/recommendations?k=10")
        assert after["model_version"] == version
        assert first not in [item["id"] for item in after["items"]]  # now seen
        assert [i["id"] for i in after["items"]] != [i["id"] for i in body["items"]]

        _experiment_serves_both_models(env, base, version, log)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)


#: Consecutive answers that must agree before "every worker has switched" (2 workers).
AGREEING_ANSWERS = 10


def _wait_for(base: str, log: Path, done) -> dict:  # type: ignore[no-untyped-def]
    """Poll user 1's recommendations until every worker answers ``done(body)``: each checks
    every 0.5 s and loads a new index version in the background, answering from the previous
    one meanwhile, so one worker can switch before the other."""
    deadline = time.monotonic() + 30
    in_a_row = 0
    while in_a_row < AGREEING_ANSWERS:
        status, body = get(f"{base}/v1/users/1/recommendations?k=5")
        assert status == 200, body
        in_a_row = in_a_row + 1 if done(body) else 0
        assert time.monotonic() < deadline, f"change never picked up:\n{log.read_text()}"
        time.sleep(0.05)
    return body


def _experiment_serves_both_models(env: dict[str, str], base: str, version: int, log: Path):
    """The plain blend as control, the trained model as treatment for half the users."""
    ok(invoke(env, "model", "activate", "none"))
    _wait_for(base, log, lambda body: body["model_version"] is None)
    started = fields(
        ok(invoke(env, "experiment", "start", "ab", "--model", str(version))).stdout,
        "experiment",
    )
    assert started["treatment_model"] == str(version) and started["percent"] == "50"
    _wait_for(base, log, lambda body: body["experiment"] == "ab")

    seen_arms: dict[str, str] = {}
    for user in [str(n) for n in range(1, 41)] * 2:  # twice: both workers, same arm
        status, body = get(f"{base}/v1/users/{user}/recommendations?k=5")
        assert status == 200 and body["experiment"] == "ab", body
        assert body["arm"] == arm_for("ab", user, 50.0)
        assert seen_arms.setdefault(user, body["arm"]) == body["arm"]
        if body["arm"] == TREATMENT:
            assert body["model_version"] == version
            assert body["index_version"] == int(started["index_version"])
            treated = body
        else:
            assert body["model_version"] is None
    assert set(seen_arms.values()) == {CONTROL, TREATMENT}

    # A click on a treatment answer is attributed to the treatment arm.
    status, result = _post(
        f"{base}/v1/events",
        {
            "events": [
                {
                    "id": "experiment-click",
                    "user_id": treated["user_id"],
                    "item_id": treated["items"][0]["id"],
                    "type": "click",
                    "timestamp": time.time(),
                    "recomm_id": treated["recomm_id"],
                }
            ]
        },
    )
    assert status == 200 and result["accepted"] == 1, result
    # The answer may come from the other worker, whose writer commits its row milliseconds
    # later: the stats wait for the rows of answers that recent events name.
    status, stats = get(f"{base}/v1/stats")
    rows = {(r["experiment"], r["arm"]): r for r in stats["by_model_version"]}
    assert rows[("ab", TREATMENT)]["model_version"] == version
    assert rows[("ab", TREATMENT)]["events"] == {"click": 1}
    assert rows[("ab", CONTROL)]["model_version"] is None
    assert rows[("ab", CONTROL)]["events"] == {}

    listed = fields(ok(invoke(env, "experiment", "list")).stdout, "*")
    assert listed["treatment_model"] == str(version)
    ok(invoke(env, "experiment", "stop"))
    after = _wait_for(base, log, lambda body: body["experiment"] is None)
    assert after["arm"] is None and after["model_version"] is None


def test_killed_training_keeps_the_previous_model_and_a_rerun_completes(
    tmp_path, cli_env, movielens_dir
):
    prepare_movielens(cli_env, movielens_dir, tmp_path, MOVIES)
    first = int(fields(ok(invoke(cli_env, "train")).stdout, "train")["model_version"])
    db = Database(cli_env["DRIFTREC_DATABASE_URL"])
    try:
        for delay in (1.0, 3.0):
            job = spawn(cli_env, "train", log=tmp_path / f"train-{delay}.log")
            time.sleep(delay)
            job.send_signal(signal.SIGKILL)
            job.wait(timeout=30)
            with db.read() as session:
                active = active_model_version(session)
                versions = list_model_versions(session)
            # The previous model stays active unless the job got as far as publishing its own
            # (one transaction registers and activates it), and whatever was committed is
            # whole: every registered file matches its checksum.
            assert active is not None and active.id == max(version.id for version in versions)
            for version in versions:
                load_model(Path(version.path), version.checksum)
        rerun = int(fields(ok(invoke(cli_env, "train")).stdout, "train")["model_version"])
        assert rerun > first
        with db.read() as session:
            assert active_model_version(session).id == rerun

        listing = ok(invoke(cli_env, "model", "list")).stdout
        assert f"* {rerun} " in listing
        ok(invoke(cli_env, "model", "activate", str(first)))
        with db.read() as session:
            assert active_model_version(session).id == first
        ok(invoke(cli_env, "model", "activate", "none"))
        with db.read() as session:
            assert active_model_version(session) is None
    finally:
        db.dispose()
