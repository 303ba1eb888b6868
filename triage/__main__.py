from triage.cli import app

app(prog_name="cxr-triage")
