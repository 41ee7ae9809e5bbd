"""Watching apps: where their metrics come from and what they say.

``families`` is the table of metrics nbserve reads; ``sources`` and ``prometheus`` read them
(from the cluster's collector or a Prometheus server); ``metrics`` turns reads into
``Snapshot``s (``snapshot``); ``dashboard`` draws them live. ``status`` types what Serve says of
an app, ``starts`` dates replica starts, ``traces`` joins a request's spans with the client's view.
"""
