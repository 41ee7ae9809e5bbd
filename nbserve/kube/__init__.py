"""The KubeRay backend: the Kubernetes API client, RayClusters resolved into targets, provisioning.

``client`` is the one way to the Kubernetes API (credentials, deadlines, one map of refusals to
``KubernetesError``); ``raycluster`` reads a RayCluster object; ``resolve`` turns
``raycluster/NAME`` into a ``Target``; ``provision`` applies, scales and deletes RayClusters
and holds the provider a session uses; ``portforward`` relays local ports to a pod. Like every
backend it hands the session data and never builds a ``Cluster``.
"""
