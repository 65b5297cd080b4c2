"""Long tasks: heartbeats that catch a stuck execution and renew its lease
(``heartbeat``), the beat board a worker watches (``board``), ending a silent body
(``interrupt``) and the worker's watcher (``monitor``).

A newcomer adding progress, cancel or resumable steps starts here.
"""
