"""What a broker does for us: the facts of an app's broker (``broker``), the publish
time every message carries (``sent_at``), the atomic fetch on Redis
(``atomic_fetch``), keepalive and orphan rescue (``redelivery``), queue depths
(``queue_depth``), messages that cannot become an execution (``bad_messages``) and
the one wrapper of an app's ``send_task_message`` (``send_hook``).

Worker-only machinery that drives these (threads, bootsteps) lives in
``celery_reliable.worker``; the gates that judge delivery in ``celery_reliable.audit``.
"""
