"""One typed reader and writer per on-disk format: run.json (run.py), the audit folder (audit.py), the score
cache (cache.py). A file of the wrong shape is an error naming the file and the field."""
