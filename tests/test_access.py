"""API keys: made and checked (no cluster), refused where they cannot be checked, and enforced
on every route of a real app on the local head (the session's ``tiny_app`` requires keys)."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import pytest

import nbserve
from nbserve import remote
from nbserve.access.keys import IssuedKey
from nbserve.base.apikeys import KeyTable, new_key
from nbserve.remote import access
from nbserve.remote import serve as remote_serve
from nbserve.specs.llm import LLM
from nbserve.specs.serveconfig import llm_config, serve_app

# A well-formed key that no app was ever issued.
UNKNOWN_KEY = "nbs_0123abcd_" + "A" * 43


def test_a_key_checks_against_its_entry_only() -> None:
    key, entry = new_key("team-a", 0.0)
    other, other_entry = new_key("team-b", 0.0)
    table = KeyTable([entry, other_entry])
    assert (table.tenant(key), table.tenant(other)) == ("team-a", "team-b")
    # The entry (what the cluster keeps) does not hold the key's secret.
    assert key.split("_", 2)[2] not in json.dumps(entry.to_json())
    forged = f"nbs_{entry.id}_{other.split('_', 2)[2]}"  # one key's id, another's secret
    for bad in (forged, UNKNOWN_KEY, key.upper(), "", "Bearer " + key):
        assert table.tenant(bad) is None, bad
    with pytest.raises(ValueError, match="not a valid name"):
        new_key("Team A", 0.0)


def test_an_issued_key_shows_only_its_id(tmp_path: Any) -> None:
    key = IssuedKey("team-a", new_key("team-a", 0.0)[0])
    secret = key.value.split("_", 2)[2]
    assert secret not in repr(key) and secret not in key._repr_html_()
    saved = key.save(tmp_path / "team-a.key")
    assert saved.read_text().strip() == key.value and saved.stat().st_mode & 0o077 == 0
    with pytest.raises(FileExistsError):
        key.save(saved)


def test_keys_render_the_guarded_server_and_change_the_engine_version() -> None:
    open_app, keyed = LLM("org/m"), LLM("org/m", keys=True)
    assert "server_cls" not in llm_config(open_app)
    assert llm_config(keyed)["server_cls"] == "nbserve.hooks.guard:GuardedServer"
    assert serve_app(open_app, "m")["args"] != serve_app(keyed, "m")["args"]


def test_a_cluster_without_direct_streaming_refuses_an_app_that_requires_keys() -> None:
    """This process has no RAY_SERVE_LLM_ENABLE_DIRECT_STREAMING: Serve LLM's own ingress
    would take requests, and the key check in the engine replica would never run."""
    keyed = serve_app(LLM("org/m", keys=True), "m")
    assert "RAY_SERVE_LLM_ENABLE_DIRECT_STREAMING=1" in remote_serve._keys_unsupported(keyed)
    assert "keys=False" in remote_serve._keys_unsupported(keyed)
    assert remote_serve._keys_unsupported(serve_app(LLM("org/m"), "m")) == ""


def _ask(app: nbserve.App, route: str, key: str | None, stream: bool = False) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
    url = f"{app.endpoint}/{route}"
    if route == "models":
        return httpx.get(url, headers=headers, timeout=60)
    body: dict[str, Any] = {"model": "tiny", "max_tokens": 4, "stream": stream}
    if route == "chat/completions":
        body["messages"] = [{"role": "user", "content": "Hi"}]
    else:
        body["prompt"] = "Hi"
    return httpx.post(url, json=body, headers=headers, timeout=60)


ROUTES = [("models", False), ("completions", False), ("chat/completions", False)]
ROUTES += [("completions", True), ("chat/completions", True)]


@pytest.mark.integration
def test_every_route_refuses_a_request_without_a_valid_key(tiny_app: nbserve.App) -> None:
    assert tiny_app.spec is not None and tiny_app.spec.keys
    for route, stream in ROUTES:
        for key in (None, "nbserve", UNKNOWN_KEY):
            reply = _ask(tiny_app, route, key, stream)
            assert reply.status_code == 401, (route, stream, key, reply.text)
            error = reply.json()["error"]
            assert error["code"] == "invalid_api_key" and "app.keys.issue" in error["message"]
            assert reply.headers["www-authenticate"] == "Bearer"


@pytest.mark.integration
def test_a_key_is_issued_used_and_revoked_while_the_app_serves(tiny_app: nbserve.App) -> None:
    replicas = {r.replica_id for r in tiny_app.replicas() if r.alive}
    key = tiny_app.keys.issue("team-a")
    try:
        for route, stream in ROUTES:
            reply = _ask(tiny_app, route, key.value, stream)
            assert reply.status_code == 200, (route, reply.text)
            if stream:
                assert reply.text.rstrip().endswith("data: [DONE]"), reply.text[-200:]
        listed = tiny_app.keys.list()
        assert key.id in [k.id for k in listed] and "team-a" in [k.tenant for k in listed]
        # Neither the register, nbserve's record nor Serve's config holds the key's secret.
        secret = key.value.split("_", 2)[2]
        held = json.dumps(remote.call(access.entries, "tiny"))
        held += json.dumps(remote.call(remote_serve.records))
        assert key.id in held and secret not in held
        assert secret not in repr(tiny_app.keys) + tiny_app.keys._repr_html_()
    finally:
        assert [k.id for k in tiny_app.keys.revoke("team-a")] == [key.id]
    # revoke returned once every replica applied it: the key is refused from now on.
    assert _ask(tiny_app, "models", key.value).status_code == 401
    # The app's own calls go on with its own key, and no replica restarted.
    assert tiny_app.chat("Hello", max_tokens=4).strip()
    assert {r.replica_id for r in tiny_app.replicas() if r.alive} == replicas
    with pytest.raises(nbserve.NbserveError, match="no key of tenant or id 'team-a'"):
        tiny_app.keys.revoke("team-a")
    with pytest.raises(nbserve.SpecError, match="not a valid name"):
        tiny_app.keys.issue("Team A")


@pytest.mark.integration
def test_a_tenant_over_its_limit_gets_429_and_usage_counts_to_the_token(
    tiny_app: nbserve.App,
) -> None:
    noisy, steady = tiny_app.keys.issue("lim-a"), tiny_app.keys.issue("lim-b")
    try:
        tiny_app.keys.limit("lim-a", requests_per_s=0.2)  # one request every 5 s
        assert tiny_app.keys.limits()["lim-a"].requests_per_s == 0.2
        applied = time.monotonic()
        while (reply := _ask(tiny_app, "completions", noisy.value)).status_code != 429:
            assert reply.status_code == 200, reply.text
            assert time.monotonic() - applied < 10, "the limit was not applied in 10 s"
        error = reply.json()["error"]
        assert error["code"] == "rate_limit_exceeded" and error["param"] == "requests_per_s"
        assert 1 <= int(reply.headers["retry-after"]) <= 5, reply.headers
        # The other tenant is not slowed. Its three requests each have the same prompt and
        # 4 tokens out; usage counts what the engine told its clients, to the token.
        replies = [_complete(tiny_app, steady.value, stream) for stream in (False, True, None)]
        prompt = replies[0].json()["usage"]["prompt_tokens"]
        for reply in replies[1:]:
            assert reply.text.rstrip().endswith("data: [DONE]"), reply.text[-200:]
        assert '"usage"' not in replies[1].text  # the stream its client asked for
        lines = replies[2].text.splitlines()
        chunks = [json.loads(line[6:]) for line in lines if line.startswith("data: {")]
        assert chunks[-1]["usage"]["prompt_tokens"] == prompt  # asked for: kept
        counted = time.monotonic()
        while (used := tiny_app.usage()["lim-b"]).requests < 3:
            assert time.monotonic() - counted < 10, tiny_app.usage()
            time.sleep(0.5)
        assert used.completion_tokens == 12 and used.prompt_tokens == 3 * prompt, used
        assert used.refused == used.errors == 0, used
        assert used.ttft_p50_s is not None and used.ttft_p50_s > 0  # two streamed
        assert tiny_app.usage()["lim-a"].refused >= 1
        # The same counts, as the replica's Prometheus series (exported every 2 s).
        series = _tenant_series(tiny_app, "lim-b", want_requests=3)
        assert series["requests_total{outcome=served}"] == 3, series
        assert series["tokens_total{kind=completion}"] == 12, series
        assert series["tokens_total{kind=prompt}"] == 3 * prompt, series
        assert series["ttft_seconds_count"] == 2, series
        refused = _tenant_series(tiny_app, "lim-a", want_requests=1)
        assert refused["requests_total{outcome=refused}"] >= 1, refused
        # Live, in the app's snapshot (and so its dashboard): a row per tenant.
        # A handle of its own: the shared one's metrics window stays new for its own tests.
        tenants = tiny_app.cluster.app(tiny_app.name).metrics().tenants
        assert {"lim-a", "lim-b"} <= set(tenants), tenants
        assert tenants["lim-b"].ttft_p50_s is not None, tenants
        tiny_app.keys.limit("lim-a")  # every figure None: lifted
        assert "lim-a" not in tiny_app.keys.limits()
    finally:
        tiny_app.keys.revoke("lim-a")
        tiny_app.keys.revoke("lim-b")


@pytest.mark.integration
def test_a_change_waits_for_every_live_replica_of_the_app(cluster: object) -> None:
    """The register counts the replicas that do not apply a version yet: two that report
    here as replicas of an app of their own, one behind, then both current, then one gone."""
    app = "behind-check"

    def register(steps: list[tuple[str, tuple[Any, ...]]]) -> list[Any]:
        import ray

        registry = access._registry()
        return [ray.get(getattr(registry, name).remote(*args)) for name, args in steps]

    _, entry = new_key("team-a", 0.0)
    try:
        first, second, version = remote.call(
            register,
            [
                ("sync", (app, -1, "r1")),
                ("sync", (app, -1, "r2")),
                ("issue", (app, entry.to_json())),
            ],
        )
        assert first["replicas"] == 1 and second["replicas"] == 2 and version >= 1
        assert second["table"] is not None  # a replica that knows nothing gets the table
        steps = [("behind", (app, version)), ("sync", (app, version, "r1"))]
        steps += [("behind", (app, version)), ("sync", (app, version, "r2"))]
        steps += [("behind", (app, version)), ("behind", (app, version + 1))]
        both, synced, one, _, none, later = remote.call(register, steps)
        assert (both, one, none, later) == (2, 1, 0, 2)
        assert synced == {"replicas": 2, "table": None}  # current: nothing sent
    finally:
        remote.call(access.drop, app)
    assert remote.call(access.behind, app, version) == 0  # a dropped app has no replicas


def _tenant_series(app: nbserve.App, tenant: str, want_requests: int) -> dict[str, float]:
    """``tenant``'s ``ray_nbserve_tenant_*`` samples on the app's replicas, summed by name and
    the one label that tells them apart; waits until they count ``want_requests``."""
    from nbserve.remote import collect

    names = ["ray_nbserve_tenant_requests_total", "ray_nbserve_tenant_tokens_total"]
    names.append("ray_nbserve_tenant_ttft_seconds_count")
    deadline = time.monotonic() + 15
    while True:
        payload = remote.call(collect.collect, app.name, names, [])
        found: dict[str, float] = {}
        for name, labels, value in payload.get("samples", []):
            if labels.get("tenant") != tenant:
                continue
            kind = [f"{k}={labels[k]}" for k in ("outcome", "kind") if k in labels]
            key = name.removeprefix("ray_nbserve_tenant_") + (f"{{{kind[0]}}}" if kind else "")
            found[key] = found.get(key, 0.0) + value
        requests = sum(v for k, v in found.items() if k.startswith("requests_total"))
        if requests >= want_requests or time.monotonic() > deadline:
            return found
        time.sleep(1)


def _complete(app: nbserve.App, key: str, stream: bool | None) -> httpx.Response:
    """A completion of 4 tokens; ``stream=None`` streams and asks for the usage chunk."""
    body: dict[str, Any] = {"model": "tiny", "prompt": "Hi", "max_tokens": 4, "ignore_eos": True}
    body["stream"] = stream is not False
    if stream is None:
        body["stream_options"] = {"include_usage": True}
    headers = {"Authorization": f"Bearer {key}"}
    reply = httpx.post(f"{app.endpoint}/completions", json=body, headers=headers, timeout=60)
    assert reply.status_code == 200, reply.text
    return reply


def test_a_replica_reads_its_keys_and_limits_from_a_keys_file_and_again_when_it_changes(
    tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """What a RayService's replicas do (``$NBSERVE_KEYS_FILE`` from a mounted Secret)."""
    import asyncio
    import os

    from nbserve.base.apikeys import keys_file
    from nbserve.hooks.guard import KeySource

    key_a, entry_a = new_key("team-a", 0.0)
    key_b, entry_b = new_key("team-b", 0.0)
    path = tmp_path / "keys.json"

    def write(entries: list[Any], limits: dict[str, Any], mtime: int) -> None:
        table = {"entries": {e.id: e.to_json() for e in entries}, "limits": limits}
        path.write_text(keys_file({"chat": table}))
        os.utime(path, ns=(mtime, mtime))

    counted: list[int] = []

    def count() -> int:
        counted.append(1)
        return 2

    write([entry_a, entry_b], {"team-b": {"requests_per_s": 3.0}}, 10**18)
    source = KeySource("chat", keys_file=str(path), count_replicas=count)
    asyncio.run(source.refresh())
    assert source.table.tenant(key_a) == "team-a" and source.table.tenant(key_b) == "team-b"
    assert source.meter.share == 0.5 and source.meter.limits["team-b"].requests_per_s == 3.0
    write([entry_b], {}, 2 * 10**18)  # team-a revoked, limits lifted: a new Secret
    for _ in range(4):
        asyncio.run(source.refresh())
    assert source.table.tenant(key_a) is None and source.table.tenant(key_b) == "team-b"
    assert source.meter.limits == {} and len(counted) == 1  # counted every 5th refresh
    write([], {}, 3 * 10**18)  # no key of this app: every request refused, and said so
    asyncio.run(source.refresh())
    assert len(source.table) == 0 and "has no key of app 'chat'" in caplog.text
