"""Who may use an app: API keys per tenant, issued and revoked from a notebook cell.

``keys`` is what ``App.keys`` returns: issue a key to a tenant (shown nowhere, kept only in this
kernel's memory; the cluster keeps a salted hash), list and revoke them. The check on each
request runs in the app's replicas (``nbserve.hooks.guard``) against the cluster's key register
(``nbserve.remote.access``).
"""
