"""End to end against a real local Ray head and the real vLLM CPU engine, over Ray Client."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest

import nbserve
from nbserve import remote
from nbserve.local import head as local
from nbserve.local import procs
from nbserve.specs.serveconfig import ROUTER_DEPLOYMENT, ROUTER_DRAIN_S, llm_deployment_name

pytestmark = pytest.mark.integration


def llm_replicas(app: nbserve.App) -> set[str]:
    return {
        r.replica_id for r in app.replicas() if r.alive and r.deployment.startswith("LLMServer")
    }


def test_deploy_and_query(tiny_app: nbserve.App) -> None:
    status = tiny_app.status()
    assert status.ok, status
    # The local head streams tokens directly from the model server (Serve's direct streaming),
    # so the router takes the place of the OpenAiIngress deployment.
    assert set(status.deployments) == {"LLMServer:tiny", "LLMRouter"}
    assert tiny_app.endpoint.endswith("/tiny/v1")
    assert tiny_app.chat("Hello", max_tokens=8).strip()
    assert tiny_app.complete("def f(", max_tokens=8)
    models = [m.id for m in tiny_app.openai().models.list().data]
    assert models == ["tiny"]
    reply = tiny_app.openai().completions.create(model="tiny", prompt="x", max_tokens=5)
    assert reply.usage is not None and reply.usage.completion_tokens == 5


def test_bench_the_app_and_from_the_command_line(
    tiny_app: nbserve.App, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from nbserve.cli import API_KEY_VAR, main

    result = tiny_app.bench(
        concurrency=2, num_prompts=4, input_len=16, output_len=8, progress=False
    )
    (run,) = result.runs
    assert result.model == "tiny" and result.endpoint == tiny_app.endpoint
    assert (run.completed, run.failed, run.errors) == (4, 0, [])
    assert run.output_tokens == 32  # ignore_eos makes the output length exact
    assert run.input_tokens > 0 and run.output_tokens_per_s > 0
    assert all(v is not None for v in (*run.ttft_ms.values(), *run.e2e_ms.values()))
    assert result.cost_per_million_tokens(1.0) > 0
    # app.cost: from this result ($3.60 an hour is $0.001 a second), or measuring anew.
    assert tiny_app.cost(3.6, result=result) == pytest.approx(1000 / run.output_tokens_per_s)
    assert tiny_app.cost(1.0, concurrency=2, num_prompts=2, output_len=4, progress=False) > 0
    for bad in (-1, "0.7", float("nan")):
        with pytest.raises(nbserve.SpecError, match="price_per_hour"):
            tiny_app.cost(bad)  # type: ignore[arg-type]

    # The app requires keys: an endpoint's key comes from the environment, never an argument.
    monkeypatch.setenv(API_KEY_VAR, tiny_app.api_key())
    assert (
        main(
            ["bench", tiny_app.endpoint, "-n", "2", "-c", "2", "--output-len", "4", "--no-progress"]
        )
        == 0
    )
    assert "tiny at" in capsys.readouterr().out
    # By app name on the connected local cluster; the shared session stays open.
    assert main(["bench", "tiny", "-n", "2", "-c", "1", "--output-len", "4", "--no-progress"]) == 0
    assert tiny_app.cluster.connected
    assert main(["bench", "no-such-app", "--no-progress"]) == 1
    assert "no application 'no-such-app'" in capsys.readouterr().err


def test_local_head_runs_with_serve_throughput_flags(local_head: local.LocalHead) -> None:
    raw = Path(f"/proc/{local_head.pid}/environ").read_bytes().split(b"\0")
    env = dict(item.decode().split("=", 1) for item in raw if b"=" in item)
    assert {k: env.get(k) for k in local.DEFAULT_HEAD_ENV} == local.DEFAULT_HEAD_ENV
    # HAProxy's stats and metrics ports are free ones, not the fixed defaults 8404 / 9101.
    assert env["RAY_SERVE_HAPROXY_STATS_PORT"] != "8404"
    assert env["RAY_SERVE_HAPROXY_METRICS_PORT"] != "9101"
    # Metrics are exported every 2 s (dashboards show rates within seconds), unless the
    # user's environment says otherwise.
    assert env["RAY_metrics_report_interval_ms"] == os.environ.get(
        "RAY_metrics_report_interval_ms", str(local.METRICS_EXPORT_MS)
    )


def test_everything_the_local_head_runs_listens_on_loopback_only(
    local_head: local.LocalHead, tiny_app: nbserve.App
) -> None:
    """GCS, raylet, agents, Ray Client, workers, the engine, Serve's HAProxy and its replicas'
    inter-deployment gRPC servers (``[::]:0`` in Serve's code, moved by nbserve's worker setup
    hook): no listener outside loopback, and HAProxy's admin socket in a 0700 folder of the
    head's own.
    """
    from nbserve.local import procs

    assert tiny_app.status().ok  # Serve and its HAProxy run
    tree = [local_head.pid, *(pid for pid, _ in procs.descendants(local_head.pid))]
    listening = procs.listeners(tree)
    names = {
        x.pid: Path(f"/proc/{x.pid}/cmdline").read_bytes().split(b"\0")[0].decode()
        for x in listening
    }
    assert "haproxy" in " ".join(names.values()) and len(listening) > 5, listening
    assert [(x, names[x.pid]) for x in listening if not x.loopback] == []
    replicas = {pid for pid, name in names.items() if name.startswith("ray::ServeReplica:")}
    assert replicas, names  # the replicas' gRPC servers are among them, on loopback
    sockets = list(Path(local_head.temp_dir).glob("h/*/admin.sock"))
    assert len(sockets) == 1, sockets
    assert (Path(local_head.temp_dir) / "h").stat().st_mode & 0o077 == 0  # only its owner
    # vLLM's engine sockets live in the head's folder too, not in /tmp, where they outlived it.
    engine_sockets = [p for p in (Path(local_head.temp_dir) / "v").iterdir() if p.is_socket()]
    assert engine_sockets, "vLLM's IPC sockets are not under the head's folder"


def test_no_process_has_a_secret_its_app_does_not_name(tiny_app: nbserve.App) -> None:
    """The kernel's secrets stay out of the local head: a stray token the tests put in the
    kernel's environment before the head started is in no process's environment (the replica
    and the engine it started included), and the replica still has the rest. Before, the head
    and every replica inherited the kernel's whole environment."""
    from conftest import STRAY_SECRET

    name, value = STRAY_SECRET
    found = []
    for pid in procs.processes():
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:
            continue
        if value.encode() in env or f"{name}=".encode() in env:
            found.append(pid)
    assert not found, found
    replica = next(r.pid for r in tiny_app.replicas() if r.alive and r.pid)
    env = Path(f"/proc/{replica}/environ").read_bytes().split(b"\0")
    assert any(e.startswith(b"PATH=") for e in env)


def test_autoscaler_settings_update_in_place(tiny_app: nbserve.App) -> None:
    # Scaling 1 -> 2 -> 1 in place (the running replica kept) is notebook 01's to assert
    # (test_quickstart_notebook_runs_under_papermill): here Serve's autoscaler settings, which
    # apply in place too, and Serve runs with them.
    kept = llm_replicas(tiny_app)
    assert len(kept) == 1
    tiny_app.update(upscale_delay_s=5, downscale_delay_s=60, look_back_period_s=20, progress=False)
    try:
        assert tiny_app.last_update == "in place" and llm_replicas(tiny_app) == kept
        autoscaling = deployment_configs(tiny_app.name)[llm_deployment_name(tiny_app.spec)][
            "autoscaling_config"
        ]
        assert (
            autoscaling["upscale_delay_s"],
            autoscaling["downscale_delay_s"],
            autoscaling["look_back_period_s"],
        ) == (5, 60, 20), autoscaling
    finally:
        tiny_app.update(
            upscale_delay_s=None, downscale_delay_s=None, look_back_period_s=None, progress=False
        )


def deployment_configs(app_name: str) -> dict[str, dict]:
    """Each deployment's config as Serve runs it, read on the cluster."""

    def read(name: str) -> dict[str, dict]:
        from nbserve.remote.ray_private import serve_client

        details = serve_client().get_serve_details()["applications"][name]["deployments"]
        return {dep: info["deployment_config"] for dep, info in details.items()}

    return remote.call(read, app_name)


def test_the_router_is_replaced_before_it_stops(tiny_app: nbserve.App) -> None:
    # An engine update rebuilds the app, router included; HAProxy asks the old router until
    # its reload drops it, so the old one has to outlive its replacement's start.
    router = deployment_configs(tiny_app.name)[ROUTER_DEPLOYMENT]
    assert router["max_surge_percent"] == 100, router
    assert router["graceful_shutdown_wait_loop_s"] == ROUTER_DRAIN_S, router


def test_the_engine_dtype_suits_this_cpu(tiny_app: nbserve.App) -> None:
    """On the local head a CPU engine at dtype "auto" runs float32 where the CPU has no native
    bfloat16 (vLLM would emulate it), and vLLM's own choice where it has."""
    from nbserve.remote.thisnode import native_bf16

    def engine_kwargs(name: str) -> dict:
        from nbserve.remote.ray_private import serve_client

        app = serve_client().get_serve_details()["applications"][name]["deployed_app_config"]
        return app["args"]["llm_configs"][0]["engine_kwargs"]

    native = native_bf16(Path("/proc/cpuinfo").read_text())
    assert native is not None
    assert remote.call(engine_kwargs, tiny_app.name).get("dtype") == (None if native else "float32")
    assert tiny_app.spec is not None and tiny_app.spec.engine.dtype == "auto"  # as asked


def test_engine_update_rolls_replicas(tiny_app: nbserve.App) -> None:
    """An engine update under load: a rolling restart with no failed request.

    The shared app keeps its new, larger context afterwards (rolling it back would cost another
    engine start): every later test's requests fit in either, and the KubeRay tests attach to
    it, and deploy its spec as it is then.
    """
    nbserve.base.wait.poll_until(
        lambda: len(llm_replicas(tiny_app)),
        lambda n: n == 1,
        timeout=120,
        what="scale down to one replica",
    )
    before = llm_replicas(tiny_app)
    assert tiny_app.spec is not None
    longer = 2 * tiny_app.spec.engine.max_model_len
    # Clients keep calling the one replica while its engine is replaced: the replacement
    # starts first (max_surge_percent) and the old one finishes its streams before it stops.
    with tiny_app.load(concurrency=2, duration_s=900, max_tokens=200) as run:
        nbserve.base.wait.poll_until(
            lambda: run.stats().completed, lambda n: n >= 2, timeout=120, what="load on the app"
        )
        # A pre-warm whose time is up during the rolling restart: its timer writes the floor
        # back into the app as it is then, and must keep the new engine.
        tiny_app.prewarm(replicas=1, for_s=5, wait=False, progress=False)
        tiny_app.update(max_model_len=longer, progress=False)
        assert tiny_app.last_update == "rolling restart"
        served = run.stats().completed
        nbserve.base.wait.poll_until(
            lambda: run.stats().completed,
            lambda n: n >= served + 2,
            timeout=120,
            what="requests served by the new replica",
        )
        stats = run.stop()
    assert stats.failed == 0 and stats.completed >= 4, stats
    after = llm_replicas(tiny_app)
    assert after and not (before & after), (before, after)
    assert tiny_app.prewarming() is None  # its timer ran, during the restart
    assert tiny_app._current_spec().engine.max_model_len == longer  # the record, as it is now
    # The new engine runs with the new limit: a prompt longer than the old one is served, and
    # one over the new one is refused ("word " is two tokens of the demo model's tokenizer).
    served_long = tiny_app.openai().completions.create(
        model=tiny_app.model, prompt="word " * (longer // 4 + 50), max_tokens=4
    )
    assert served_long.usage.prompt_tokens > longer // 2, served_long.usage
    with pytest.raises(Exception, match="(?i)max|length|context|token"):
        tiny_app.complete("word " * (longer // 2 + 50), max_tokens=8)
    _requests_are_traced_through_the_cluster(tiny_app)


def _requests_are_traced_through_the_cluster(app: nbserve.App) -> None:
    """Bench requests and one of the user's own, each joined with the engine's span (the
    shared app traces, and the new replica's engine does too)."""
    result = app.bench(concurrency=2, num_prompts=4, input_len=16, output_len=16, progress=False)
    found = result.traces(slowest=2)
    assert len(found) == 2 and not found.missing, found
    for trace in found:
        assert set(trace.phases) == set(nbserve.observe.traces.PHASES), trace.phases
        assert all(d >= 0 for d in trace.durations().values()), trace.durations()
        assert trace.durations()["decode"] > 0 and trace.tokens == 16
        assert trace.replica.startswith("tiny#LLMServer:tiny#") and trace.node
        # one clock: the engine's part lies within what the client saw
        client = trace.phases["client"]
        assert client[0] <= trace.phases["queue"][0] <= trace.phases["decode"][1] <= client[1]
    assert found[0].total_s >= found[1].total_s
    rid = f"own-{uuid.uuid4().hex}"
    app.openai().completions.create(
        model="tiny", prompt="x", max_tokens=4, extra_headers={"x-request-id": rid}
    )
    own = app.trace(rid)
    assert own.request_id == rid and own.tokens == 4
    assert set(own.phases) == {"engine_input", "queue", "prefill", "decode"}


def test_missing_model_path_deploys_nothing(cluster: nbserve.Cluster) -> None:
    with pytest.raises(nbserve.SpecError, match="/no/such/model.*does not exist"):
        cluster.deploy(nbserve.LLM("/no/such/model"), name="missing", progress=False)
    assert "missing" not in [a.name for a in cluster.apps()]


def test_a_secret_the_cluster_lacks_deploys_nothing(
    cluster: nbserve.Cluster, tiny_path: str
) -> None:
    name = "NBSERVE_NO_SUCH_SECRET_3F1"
    assert name not in os.environ
    with pytest.raises(
        nbserve.SpecError, match=f"secret {name} is not set in the environment of cluster node"
    ):
        cluster.deploy(nbserve.LLM(tiny_path, secrets=[name]), name="secretless", progress=False)
    assert "secretless" not in [a.name for a in cluster.apps()]


def test_a_replica_no_node_can_hold_deploys_nothing(
    cluster: nbserve.Cluster, tiny_path: str
) -> None:
    # The local head cannot add nodes, so a replica that fits none of them would wait forever.
    cases = {
        "too-many-cpus": (
            nbserve.LLM(tiny_path, cpus=100),
            r"one replica needs CPU 101 on one node.*has CPU \d+.*lower cpus=",
        ),
        "a-gpu": (
            nbserve.LLM(tiny_path, accelerator="L4"),
            r"needs GPU 1, accelerator_type:L4 0\.001, CPU 1.*accelerator=None",
        ),
    }
    for name, (spec, message) in cases.items():
        with pytest.raises(nbserve.SpecError, match=message):
            cluster.deploy(spec, name=name, progress=False)
    assert not {a.name for a in cluster.apps()} & set(cases)


def test_model_that_fails_to_load_reports_the_engine_reason(
    cluster: nbserve.Cluster, tiny_path: str, tmp_path: Path
) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(tiny_path, broken)
    config = json.loads((broken / "config.json").read_text())
    config["architectures"] = ["NbserveBrokenForCausalLM"]  # no such model class in vLLM
    (broken / "config.json").write_text(json.dumps(config))
    app = nbserve.App(cluster, "broken", None)
    try:
        with pytest.raises(nbserve.DeployFailed) as info:
            cluster.deploy(
                nbserve.LLM(str(broken), name="broken"), name="broken", progress=False, timeout=600
            )
        err = info.value
        assert err.status == "DEPLOY_FAILED"
        assert "NbserveBrokenForCausalLM" in str(err), str(err)
    finally:
        app.delete()
    assert "broken" not in [a.name for a in cluster.apps()]


REPO = Path(__file__).resolve().parent.parent


def run_notebook(name: str, *, kernel: str | None = None, **parameters: object) -> dict:
    """Execute notebooks/NAME with papermill into artifacts/; fail on any error output.

    ``kernel``: the Jupyter kernel to run it in (default: the notebook's own, this Python).
    """
    import nbformat
    import papermill

    out = REPO / "artifacts" / name
    out.parent.mkdir(exist_ok=True)
    papermill.execute_notebook(
        str(REPO / "notebooks" / name),
        str(out),
        cwd=str(REPO / "notebooks"),
        progress_bar=False,
        parameters=parameters,
        kernel_name=kernel,
    )
    nb = nbformat.read(out, as_version=4)
    errors = [
        o
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.get("outputs", [])
        if o.get("output_type") == "error"
    ]
    assert not errors
    return dict(nb)


def test_quickstart_notebook_runs_over_http_in_a_kernel_without_ray(
    cluster: nbserve.Cluster, instruct_path: str, http_kernel_name: str, tmp_path: Path
) -> None:
    """notebooks/01 end to end (deploy, chat, scale in place, delete) in a kernel whose
    ``connect()`` goes over HTTP and that cannot import Ray. Its instruct model was built by
    this environment (``instruct_path``); the kernel's ``nbserve.instruct_model()`` finds it in
    the shared ``NBSERVE_HOME`` without the wheel it was built from. The same calls through Ray
    Client are the shared app's (``tiny_app``) and notebooks 05 and 06's."""
    summary = tmp_path / "summary.json"
    nb = run_notebook(
        "01_quickstart.ipynb",
        kernel=http_kernel_name,
        app_name="nb-quickstart",
        summary_path=str(summary),
    )
    result = json.loads(summary.read_text())
    assert result["endpoint"].endswith("/nb-quickstart/v1")
    # SmolLM2-135M-Instruct, greedy: a sensible English answer, not random weights' gibberish
    assert "paris" in result["answer"].lower(), result["answer"]
    # app.update(min_replicas=2, max_replicas=2) was in place: the first replica kept serving
    before, after = set(result["replicas_before"]), set(result["replicas_after"])
    assert len(before) == 1 and len(after) == 2 and before < after, result
    token = Path(cluster.target.token_path).read_text().strip()  # type: ignore[arg-type]
    assert token not in json.dumps(nb), "the Ray auth token leaked into the notebook"


def test_autoscaling_notebook_scales_up_to_zero_and_wakes(
    cluster: nbserve.Cluster, tiny_path: str, http_kernel_name: str, tmp_path: Path
) -> None:
    """notebooks/04: 1 -> 2 replicas under a load ramp, down to zero, woken by one request.

    It runs in a kernel without Ray, over HTTP (its demo model already built: ``tiny_path``),
    so an app deployed, updated (the pre-warm) and watched that way is checked here through
    Ray Client, and deleted over HTTP again at the end.

    The notebook asserts each step itself; its summary shows what the user saw: the status
    and the metrics saying "scaled to zero", the load with no failed request, the answer to
    the request sent at zero replicas with a client that does not retry (held, not refused),
    and the wake's phases. It ends with a pre-warm and leaves the app: the pre-warm's timer
    must put ``min_replicas`` back after the notebook's kernel has ended.
    """
    summary = tmp_path / "summary.json"
    try:
        run_notebook(
            "04_autoscaling.ipynb",
            kernel=http_kernel_name,
            app_name="nb-autoscaling",
            summary_path=str(summary),
            ramp=[[5, 1], [600, 8]],
            downscale_delay_s=10,
            downscale_to_zero_delay_s=10,
            prewarm_s=20,
            delete_at_end=False,
        )
        kernel_gone = time.time()  # papermill has shut the notebook's kernel down
        result = json.loads(summary.read_text())
        assert result["load"]["completed"] > 0 and result["load"]["failed"] == 0, result
        assert "scaled to zero" in result["status_at_zero"]
        assert result["replicas_at_zero"] == "scaled to zero"
        assert result["answer"].strip()
        assert result["starts"] >= 3  # app.cold_starts(): the deploy, the scale-up, the wake
        phases = result["wake_phases_s"]
        assert set(phases) == {
            "scheduled",
            "engine_started",
            "weights_loaded",
            "engine_ready",
            "running",
        } and all(v is not None and v >= 0 for v in phases.values())
        assert 0 < result["wake_start_s"] <= result["wake_s"] + 1  # within the held request
        assert "max_replicas=2" in result["prewarm_refused"]
        assert result["prewarm"]["min_replicas"] == 0  # the floor it restores
        assert kernel_gone < result["prewarm"]["until"]  # its time was not up yet
        app = cluster.app("nb-autoscaling")
        deadline = time.monotonic() + 120
        while app.prewarming() is not None and time.monotonic() < deadline:
            time.sleep(1)
        assert app.prewarming() is None  # the timer ran and ended, the kernel long gone
        restored = cluster.app("nb-autoscaling").spec
        assert restored is not None and restored.scaling.min_replicas == 0
        assert restored.scaling.max_replicas == 2 and restored.scaling.initial_replicas == 1
        # Pre-warm and restore changed the app in place: no replica started after the wake.
        assert (
            cluster.app("nb-autoscaling").cold_starts().latest.replica_id == result["woken_replica"]
        )
    finally:
        if "nb-autoscaling" in [a.name for a in cluster.apps()]:
            _delete_over_http("nb-autoscaling", http_kernel_name)
    assert "nb-autoscaling" not in [a.name for a in cluster.apps()]


def _delete_over_http(name: str, kernel_name: str) -> None:
    """Delete app ``name`` from a process of the HTTP kernel's environment (no Ray)."""
    from jupyter_client.kernelspec import KernelSpecManager

    python = KernelSpecManager().get_kernel_spec(kernel_name).argv[0]
    script = f"import nbserve; nbserve.connect(via='http').app({name!r}).delete(progress=False)"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    run = subprocess.run([python, "-c", script], env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]


def test_dashboard_notebook_runs_over_http_in_a_kernel_without_ray(
    tiny_app: nbserve.App, http_kernel_name: str
) -> None:
    # Scaling up under load is notebook 04's to assert (1 -> 2 replicas), deploying is
    # notebook 01's: here the dashboard and its static report, on the session's app, from a
    # kernel that has no Ray (its connect() goes over HTTP: NBSERVE_VIA=http; the Ray Client
    # way would fail there).
    from jupyter_client.kernelspec import KernelSpecManager

    kernel = KernelSpecManager().get_kernel_spec(http_kernel_name)
    assert kernel.env == {"NBSERVE_VIA": "http"}
    no_ray = subprocess.run([kernel.argv[0], "-c", "import ray"], capture_output=True)
    assert no_ray.returncode != 0 and b"No module named 'ray'" in no_ray.stderr
    nb = run_notebook(
        "02_dashboard.ipynb",
        kernel=http_kernel_name,
        app_name=tiny_app.name,
        reuse=True,
        load_seconds=30,
        concurrency=8,
        max_tokens=200,
    )
    text = json.dumps(nb)
    assert "js-plotly-plot" in text or "plotly" in text  # the static report stayed in the output
    assert "peak" in text and "tokens/s" in text
    assert "usage of app" in text and "team-b" in text  # the usage table, per tenant
    assert "tenant team-b" in text  # its rates in the report's snapshot
    assert not {k.tenant for k in tiny_app.keys.list()} & {"team-a", "team-b"}  # revoked
    token = Path(tiny_app.cluster.target.token_path).read_text().strip()  # type: ignore[arg-type]
    assert token not in text, "the Ray auth token leaked into the notebook"


def test_observability_notebook_breaks_down_and_traces(
    tiny_app: nbserve.App, tmp_path: Path
) -> None:
    # On the session's app, which traces (deploying is notebook 01's to show).
    summary = tmp_path / "summary.json"
    run_notebook(
        "05_observability.ipynb",
        app_name=tiny_app.name,
        reuse=True,
        load_seconds=25,
        concurrency=8,
        max_tokens=64,
        bench_prompts=16,
        slowest=3,
        summary_path=str(summary),
    )
    assert tiny_app.status().ok  # the notebook left the app it attached to running
    result = json.loads(summary.read_text())
    assert set(result["latency_p50_ms"]) == {"serve", "queue", "prefill", "decode", "e2e"}
    assert result["latency_p50_ms"]["decode"] > 0 and result["nodes"] == 1
    assert 0 <= result["prefix_cache_hit_rate"] <= 1
    assert result["traces"] == 3 and result["completed"] > 0
    assert result["slowest_replica"].startswith("tiny#LLMServer:tiny#")
    assert result["slowest_phases_s"]["decode"] > 0
    assert set(result["own_phases_s"]) == {"engine_input", "queue", "prefill", "decode"}
