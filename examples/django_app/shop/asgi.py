"""The shop's ASGI application: Django, with celery_reliable's web view mounted beside it
at ``/reliable/``.

Serve it with ``uvicorn shop.asgi:application``. Without ``CELERY_RELIABLE_WEB_AUTH``
the web view answers loopback clients only, whatever address the server listens on.
"""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "shop.settings")
# Django first: it sets itself up here, before anything imports a model.
django_application = get_asgi_application()

from starlette.applications import Starlette  # noqa: E402
from starlette.routing import Mount  # noqa: E402

from celery_reliable.web import create_app  # noqa: E402
from shop.celery import app as celery_app  # noqa: E402

application = Starlette(
    routes=[
        Mount("/reliable", app=create_app(celery_app)),
        Mount("/", app=django_application),
    ]
)
