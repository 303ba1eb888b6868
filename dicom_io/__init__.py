"""DICOM in and out: listener, spool, pixel decoding to a display image, analysability checks."""
