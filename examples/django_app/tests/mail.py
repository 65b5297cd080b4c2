"""An email backend whose SMTP server never answers (settings.EMAIL_BACKEND in a test)."""

from django.core.mail.backends.base import BaseEmailBackend


class TimeoutBackend(BaseEmailBackend):
    def send_messages(self, email_messages):
        raise TimeoutError("the SMTP server did not answer in 10 s")
