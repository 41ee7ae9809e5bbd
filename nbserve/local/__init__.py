"""The embedded default: a real Ray head on this machine that nbserve starts, finds and stops.

``head`` owns the head's life (``up``, ``down``, ``status``), ``procs`` its process groups, and
``haproxy`` keeps Serve's HAProxy on loopback.
"""
