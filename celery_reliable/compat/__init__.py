"""Where celery_reliable meets Celery itself: what it reads of Celery's internals
(per supported version), how a ReliableTask keeps the app's own task class, and how
Celery's ``autoretry_for`` options read as our rules.

A newcomer supporting a new Celery release starts here.
"""
