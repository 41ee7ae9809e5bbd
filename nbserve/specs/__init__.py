"""What to run, as pure data: the LLM and cluster specs, names, and their renderers.

Nothing here talks to a cluster. Specs validate before anything runs (``llm``, ``clusterspec``,
``names``, ``accelerators``); renderers turn them into a Serve config (``serveconfig``) and
KubeRay manifests (``manifests``): spec in, dict out, tested with golden files.
"""
