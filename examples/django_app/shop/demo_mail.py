"""The demo's mail server: Django's file-based backend (one file per connection under
``EMAIL_FILE_PATH``) with the bad days an SMTP server has. An address at
``blackhole.example`` never answers; an address with ``flaky`` in it is refused once."""

from pathlib import Path
from smtplib import SMTPServerDisconnected

from django.core.mail.backends.filebased import EmailBackend


class DemoSMTPBackend(EmailBackend):
    def send_messages(self, email_messages):
        for message in email_messages:
            for recipient in message.to:
                if recipient.endswith("@blackhole.example"):
                    raise TimeoutError(f"the SMTP server for {recipient} did not answer")
                refused = Path(self.file_path) / f".refused-once-{recipient}"
                if "flaky" in recipient and not refused.exists():
                    refused.touch()
                    raise SMTPServerDisconnected("Connection unexpectedly closed")
        return super().send_messages(email_messages)
