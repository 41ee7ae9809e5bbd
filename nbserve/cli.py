"""The ``nbserve`` command: the local cluster, the demo, the demo model, manifests, benchmarks.

The command line is for what happens outside a notebook: starting and stopping the embedded
local Ray head, running the quickstart notebook end to end (``nbserve demo``), building the
offline demo model, printing KubeRay manifests for runbooks and GitOps (``nbserve render``) and
measuring an endpoint's throughput and latency (``nbserve bench``).
It writes its results to stdout; the library underneath only logs.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from pydantic import ValidationError

import nbserve
from nbserve import cluster as cluster_mod
from nbserve.errors import LocalClusterError, NbserveError, SpecError
from nbserve.load import bench
from nbserve.local import head as local
from nbserve.specs.clusterspec import ClusterSpec, WorkerGroup
from nbserve.specs.llm import LLM, check_app_name
from nbserve.specs.manifests import render_rayservice, to_yaml
from nbserve.specs.serveconfig import exported_app

API_KEY_VAR = "NBSERVE_API_KEY"  # the key `nbserve bench URL` sends (never an argument)
NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


def main(argv: list[str] | None = None) -> int:
    """Run the ``nbserve`` command line; returns the exit code."""
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except Exception as err:  # the command line reports, it does not trace
        if not isinstance(err, NbserveError | ValidationError) or args.verbose:
            raise
        print(f"nbserve: error: {_describe(err)}", file=sys.stderr)
        return 1


def _describe(err: Exception) -> str:
    """An error in nbserve's words: a spec's validation errors without pydantic's links."""
    if not isinstance(err, ValidationError):
        return str(err)
    problems = [
        (f"{'.'.join(map(str, e['loc']))}: " if e["loc"] else "")
        + e["msg"].removeprefix("Value error, ")
        for e in err.errors(include_url=False)
    ]
    return f"invalid {err.title}: " + "; ".join(problems)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nbserve", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log what happens")
    sub = parser.add_subparsers(dest="command")

    up = sub.add_parser("up", help="start the local Ray head (or show the running one)")
    up.add_argument(
        "--num-cpus",
        type=int,
        default=local.DEFAULT_NUM_CPUS,
        help="logical CPUs the head advertises (default %(default)s)",
    )
    up.set_defaults(func=_up)

    down = sub.add_parser("down", help="stop the local Ray head nbserve started")
    down.set_defaults(func=_down)

    status = sub.add_parser("status", help="show the local Ray head and its apps")
    status.set_defaults(func=_status)

    model = sub.add_parser("model", help="build the offline demo model and print its path")
    model.add_argument(
        "--instruct",
        action="store_true",
        help="SmolLM2-135M-Instruct (answers sensibly) instead of the tiny random model",
    )
    model.set_defaults(func=_model)

    demo = sub.add_parser(
        "demo", help="run the quickstart notebook on the local cluster, then stop it"
    )
    demo.add_argument(
        "--output",
        default="artifacts/01_quickstart.ipynb",
        help="where to write the executed notebook (default %(default)s)",
    )
    demo.add_argument(
        "--keep", action="store_true", help="leave the local Ray head running afterwards"
    )
    demo.set_defaults(func=_demo)

    _add_bench(sub)

    _add_render(sub)
    return parser


def _add_bench(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``nbserve bench``: the load generator's settings, as ``vllm bench serve`` names them."""
    bench = sub.add_parser(
        "bench",
        help="measure throughput and latency of an OpenAI-compatible endpoint or app",
        description="Send streaming completions at a fixed concurrency (or a sweep) and report "
        "output tokens/s, requests/s, TTFT, inter-token and end-to-end latency percentiles. "
        f"An endpoint that requires an API key gets the one in ${API_KEY_VAR}; an app by name "
        "gets a key of its own.",
    )
    bench.add_argument(
        "target",
        metavar="ENDPOINT_OR_APP",
        help="an OpenAI base URL (http://HOST:PORT/PREFIX/v1) or the name of an "
        "app on the connected cluster (the local one, or --address)",
    )
    bench.add_argument(
        "--address",
        default=None,
        help="Ray cluster of the app (default: the local head nbserve started)",
    )
    bench.add_argument("--model", default=None, help="model name (default: the endpoint's first)")
    bench.add_argument(
        "-c",
        "--concurrency",
        type=int,
        nargs="+",
        default=[8],
        help="requests in flight; several values run a sweep (default 8)",
    )
    bench.add_argument(
        "-n",
        "--num-prompts",
        type=int,
        default=64,
        help="requests per concurrency level (default %(default)s)",
    )
    bench.add_argument(
        "--input-len", type=int, default=64, help="tokens per random prompt (default %(default)s)"
    )
    bench.add_argument(
        "--output-len",
        type=int,
        default=128,
        help="tokens generated per request, exact (default %(default)s)",
    )
    bench.add_argument(
        "--request-rate",
        type=float,
        default=None,
        help="requests/s with Poisson arrivals (default: as fast as possible)",
    )
    bench.add_argument(
        "--prompt",
        action="append",
        default=None,
        help="a prompt to send instead of random ones (repeatable)",
    )
    bench.add_argument(
        "--tokenizer",
        default=None,
        help="folder with tokenizer.json, for exact random prompt lengths",
    )
    bench.add_argument("--seed", type=int, default=0)
    bench.add_argument("--json", default=None, metavar="PATH", help="also write the results")
    bench.add_argument(
        "--price-per-hour",
        type=float,
        default=None,
        help="machine price in $/hour: also print $ per 1M output tokens",
    )
    bench.add_argument("--no-progress", action="store_true", help="no progress bar")
    bench.set_defaults(func=_bench)


def _add_render(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``nbserve render raycluster|rayservice``: a ClusterSpec (and an LLM) from flags."""
    render = sub.add_parser("render", help="print a KubeRay manifest (YAML) for GKE")
    kinds = render.add_subparsers(dest="kind", required=True)
    for kind in ("raycluster", "rayservice"):
        cmd = kinds.add_parser(kind, help=f"print a {kind} manifest")
        cmd.add_argument("--name", required=True, help="object name")
        cmd.add_argument("--namespace", default="default")
        cmd.add_argument("--accelerator", default="L4", help="GPU type, e.g. L4, A100-80G, H100")
        cmd.add_argument("--gpus-per-worker", type=int, default=1)
        cmd.add_argument("--min-workers", type=int, default=0)
        cmd.add_argument("--max-workers", type=int, default=4)
        cmd.add_argument("--image", default=None, help="Ray image (default: Ray LLM image)")
        if kind == "rayservice":
            cmd.add_argument("--model", required=True, help="Hugging Face id or path")
            cmd.add_argument("--app", default=None, help="Serve app name (default: --name)")
            cmd.add_argument("--min-replicas", type=int, default=1)
            cmd.add_argument("--max-replicas", type=int, default=1)
            cmd.add_argument("--max-model-len", type=int, default=None)
            keys = cmd.add_mutually_exclusive_group(required=True)
            keys.add_argument(
                "--keys-secret",
                default=None,
                help="the Secret the replicas read the app's API keys from (app.keys.to_secret)",
            )
            keys.add_argument(
                "--public", action="store_true", help="serve without API keys: anyone it reaches"
            )
        cmd.set_defaults(func=_render)


def _up(args: argparse.Namespace) -> int:
    head = local.up(num_cpus=args.num_cpus)
    _show(head)
    return 0


def _down(args: argparse.Namespace) -> int:
    print("stopped the local Ray head" if local.down() else "no local Ray head was running")
    return 0


def _status(args: argparse.Namespace) -> int:
    head = local.find()
    if head is None:
        print("no local Ray head is running (start one with `nbserve up`)")
        return 1
    _show(head)
    cluster = nbserve.connect()
    try:
        for app in cluster.apps():
            print(f"app {app.name}: {app.status()}  {app.endpoint}")
    finally:
        cluster.disconnect()
    return 0


def _model(args: argparse.Namespace) -> int:
    print(nbserve.instruct_model() if args.instruct else nbserve.demo_model())
    return 0


def _demo(args: argparse.Namespace) -> int:
    try:
        import papermill
    except ImportError as err:  # an extra: a notebook kernel does not need it
        raise NbserveError(
            "nbserve demo runs the quickstart notebook with papermill, which is not installed: "
            "pip install 'nbserve[demo]'"
        ) from err

    started = local.find() is None
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        summary_path = Path(tmp) / "summary.json"
        try:
            head = local.up()
            print(f"local Ray head: {head.address} (dashboard {head.dashboard_url})")
            print(f"running notebooks/01_quickstart.ipynb -> {output}")
            papermill.execute_notebook(
                str(NOTEBOOKS / "01_quickstart.ipynb"),
                str(output),
                parameters={"summary_path": str(summary_path)},
                cwd=str(NOTEBOOKS),
                progress_bar=False,
                log_output=False,
            )
            summary: dict[str, Any] = json.loads(summary_path.read_text())
        finally:
            if started and not args.keep:
                local.down()
    print(f"endpoint: {summary['endpoint']}")
    print(f"model answer: {summary['answer']!r}")
    print(f"executed notebook: {output}")
    return 0


def _bench(args: argparse.Namespace) -> int:
    options: dict[str, Any] = dict(
        model=args.model,
        concurrency=args.concurrency,
        num_prompts=args.num_prompts,
        input_len=args.input_len,
        output_len=args.output_len,
        request_rate=args.request_rate,
        prompts=args.prompt,
        seed=args.seed,
        progress=not args.no_progress,
    )
    if args.tokenizer:
        options["tokenizer"] = args.tokenizer
    if args.target.startswith(("http://", "https://")):
        result = bench.run(args.target, api_key=os.environ.get(API_KEY_VAR, "nbserve"), **options)
    elif "://" in args.target or "/" in args.target:
        raise SpecError(
            f"{args.target!r} is neither an http(s) endpoint URL nor an app name; "
            "pass e.g. http://127.0.0.1:8000/tiny/v1 or tiny"
        )
    else:
        if args.address is None and local.find() is None:
            raise LocalClusterError(
                f"no local Ray head is running to find app {args.target!r} on; start one with "
                "`nbserve up`, pass --address ray://HOST:PORT, or pass the endpoint URL"
            )
        before = cluster_mod.current()
        cluster = nbserve.connect(args.address)
        try:
            app = cluster.app(args.target)
            options["model"] = args.model or app.model
            result = app.bench(**options)
        finally:
            if cluster is not before:  # keep a session this process had already opened
                cluster.disconnect()
    print(result)
    if args.price_per_hour is not None:
        best = result.best
        print(
            f"cost: ${result.cost_per_million_tokens(args.price_per_hour):.4f} per 1M output "
            f"tokens at ${args.price_per_hour}/h and {best.output_tokens_per_s:.0f} tok/s "
            f"(concurrency {best.concurrency})"
        )
    if args.json:
        print(f"results: {result.to_json(args.json)}")
    return 1 if result.failed else 0


def _render(args: argparse.Namespace) -> int:
    cluster = ClusterSpec(
        name=args.name,
        namespace=args.namespace,
        image=args.image,
        keys_secret=getattr(args, "keys_secret", None),
        worker_groups=[
            WorkerGroup(
                accelerator=args.accelerator,
                gpus_per_worker=args.gpus_per_worker,
                min_workers=args.min_workers,
                max_workers=max(args.max_workers, args.min_workers),
            )
        ],
    )
    if args.kind == "raycluster":
        manifest = cluster.to_raycluster()
    else:
        spec = LLM(
            args.model,
            accelerator=args.accelerator,
            min_replicas=args.min_replicas,
            max_replicas=args.max_replicas,
            max_model_len=args.max_model_len,
            tensor_parallel_size=args.gpus_per_worker,
            keys=not args.public,
        )
        app = check_app_name(args.app or args.name)
        manifest = render_rayservice(
            cluster, [exported_app(spec, app)], name=args.name, keys=not args.public
        )
    sys.stdout.write(to_yaml(manifest))
    return 0


def _show(head: local.LocalHead) -> None:
    print(f"local Ray head running (pid {head.pid})")
    print(f"  Ray Client: {head.address}")
    print(f"  dashboard:  {head.dashboard_url}")
    print(f"  Serve:      {head.serve_url}")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
