"""How this kernel reaches a cluster: the ``Target`` a backend finds, and the session on it.

``target`` is what a backend (``local``, ``kube``) hands over: where the head answers and who
manages it. ``ray_client`` opens a Ray Client session on it (probe, token, retries). A second
way in (the head's HTTP APIs) belongs beside it.
"""
