"""The small pieces every layer uses: shared defaults, the one wait, formats, versions.

Modules here import nothing of nbserve but ``errors``.
"""
