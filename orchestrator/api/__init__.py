"""The HTTP API of the orchestrator process (``treadle orchestrator --port N``).

``app.create_app(orchestrator, settings)`` builds the ASGI app: ``workflows`` and
``dead_letters`` routes behind the bearer token of ``auth``, ``health`` without it,
``docs`` (OpenAPI), the ``dashboard`` page (a static shell that reads the API with the
token), the request ``body`` limit and the one ``errors`` mapping. ``models``
is the wire format, light enough for the remote client; ``server`` runs the app beside
the orchestrator's Celery consumer.

Deliberately empty of imports: the remote client reads ``models`` without FastAPI.
"""
