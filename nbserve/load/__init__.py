"""Load on an OpenAI-compatible endpoint: the generator, its prompts and what it measured.

``bench`` sends the requests (a benchmark, or background load), ``prompts`` makes them,
``results`` holds what came back, and ``measuring`` is what an ``App`` offers on top of them
(``app.load()``, ``app.bench()``, ``app.cost()``, ``app.cold_starts()``).
"""
