"""Code that Serve and vLLM load by dotted path inside their own processes.

A vLLM general plugin (``vllm_plugin``, named in ``pyproject.toml``), Serve LLM callbacks and a
Ray worker setup hook for the local head's replicas (``local_replica``, with ``serve_loopback``;
named in the Serve config nbserve renders for its local head). Each imports nothing of nbserve
but ``errors`` and ``base``, so loading one costs the process little else.
"""
