"""Use cases: the one door through which the CLI, the REST API and the web UI act.

Each function takes the :class:`~kvmops.services.caller.Caller` (who asks, and how
far their paths are trusted) and validated arguments, applies the path policy,
and calls the domain packages. The faces only parse and render.
"""
