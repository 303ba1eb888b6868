"""The Celery app and its tasks: the one place that wires dicom_io, model and db together."""
