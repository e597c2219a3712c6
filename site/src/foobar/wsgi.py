"""Entry point for `gunicorn foobar.wsgi:app`; settings come from the environment."""

from foobar.app import create_app

app = create_app()
