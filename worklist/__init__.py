"""The radiologists' worklist: FastAPI app (REST and a server-rendered page)."""
