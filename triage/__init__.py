"""cxr-triage composition root: settings, CLI and demo wire the other packages together."""
