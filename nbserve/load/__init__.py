"""Load on an OpenAI-compatible endpoint: the generator, its prompts and what it measured.

``bench`` sends the requests (a benchmark, or background load), ``prompts`` makes them, and
``results`` holds what came back. ``App.load()``, ``App.bench()`` and ``App.cost()`` run them
on an app's endpoint and model.
"""
