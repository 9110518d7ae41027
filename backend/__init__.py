"""The lab's upstream: a FastAPI app under Uvicorn whose replicas the proxy balances over."""
