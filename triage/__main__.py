from triage.main import app

app(prog_name="cxr-triage")
