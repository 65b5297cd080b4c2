"""``celery -A proj reliable web [--host] [--port]``: the web view on uvicorn."""

from __future__ import annotations

import click

from celery_reliable.errors import MissingDependency


@click.command("web")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", default=5580, show_default=True, type=click.IntRange(0, 65535))
@click.option(
    "--log-level",
    default="info",
    show_default=True,
    type=click.Choice(["critical", "error", "warning", "info", "debug"]),
)
@click.pass_context
def web_command(ctx: click.Context, host: str, port: int, log_level: str) -> None:
    """Serve the web view: outcomes, queues, dead letters, workers, receipts, gates.

    Without reliable_web_auth it binds only to a loopback address."""
    from celery_reliable.cli import app_of
    from celery_reliable.config import settings_for

    app = app_of(ctx)
    try:
        import uvicorn

        from celery_reliable.web import create_app
        from celery_reliable.web.security import Credentials, refuse_to_bind

        settings = settings_for(app)
        credentials = Credentials(act=settings.web_auth, look=settings.web_read_only_auth)
        refusal = refuse_to_bind(host, credentials)
        if refusal:
            raise click.ClickException(refusal)
        asgi = create_app(app, credentials=credentials)
    except (ImportError, MissingDependency) as exc:
        if isinstance(exc, MissingDependency):
            raise click.ClickException(str(exc)) from exc
        raise click.ClickException(
            f"the web view needs {exc.name}, which is not installed: "
            "pip install 'celery-reliable[web]'"
        ) from exc
    click.echo(f"celery_reliable web view on http://{_url_host(host)}:{port}/", err=True)
    uvicorn.run(asgi, host=host, port=port, log_level=log_level, server_header=False)


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
