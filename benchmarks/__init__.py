"""The benchmark harness behind the reports in docs/results/ (each names the command it ran).

    .venv/bin/python -m benchmarks            # five serving paths, docs/results/BENCHMARKS.md
    .venv/bin/python -m benchmarks --quick    # a few prompts, writes artifacts/

``paths`` starts and stops each serving path, ``runs`` loads one with both load generators
and takes medians, ``report`` writes the Markdown and JSON, ``__main__`` is the command line;
``process`` runs each server in a process group of its own (through ``nbserve.local.procs``). The
programs it starts are files beside them: ``vllm_cli.py``, ``hf_server.py`` and ``drivers/``.
Not part of the ``nbserve`` package: nothing in ``nbserve`` imports from here.
"""
