"""The kvmops REST API (FastAPI): ``create_app(settings)``.

Layout:

* :mod:`kvmops.api.app`        app factory, lifespan, routers, web UI hook
* :mod:`kvmops.api.settings`   :class:`ApiSettings`
* :mod:`kvmops.api.deps`       authentication / role dependencies, CSRF check
* :mod:`kvmops.api.validators` request field types (VM names, sizes, MACs, allowed paths)
* :mod:`kvmops.api.runner`     job runner (thread pool, rows in the DB, progress events)
* :mod:`kvmops.api.events`     event hub (job progress + libvirt life cycle) for SSE
* :mod:`kvmops.api.routes`     one router per resource
"""

from kvmops.api.app import create_app
from kvmops.api.settings import ApiSettings

__all__ = ["ApiSettings", "create_app"]
