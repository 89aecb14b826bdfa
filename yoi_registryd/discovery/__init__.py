"""Discovery: backends (``[[discovery]]``) whose runtimes become remote sources at run time."""
