"""Long tasks: heartbeats that catch a stuck execution and renew its lease
(``heartbeat``), the beat board a worker watches (``board``), ending a silent body
(``interrupt``), the worker's watcher (``monitor``), reading progress (``progress``)
and resumable steps (``steps``).

A newcomer adding to long tasks (a persistent cancel) starts here.
"""
