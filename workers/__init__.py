"""The Celery side of the harvester: the app, its settings and thin tasks."""
