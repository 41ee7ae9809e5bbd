"""Code that Serve and vLLM load by dotted path inside their own processes.

A vLLM general plugin (``vllm_plugin``, named in ``pyproject.toml``), Serve LLM callbacks and a
Ray worker setup hook (named in the Serve config nbserve renders for its local head). Each
imports nothing of nbserve but ``errors``, so loading one costs the process nothing else.
"""
