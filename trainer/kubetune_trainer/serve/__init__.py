"""The kubetune model server: one base model, several LoRA adapters, OpenAI-compatible HTTP API.

config.py (ServeConfig) -> adapters.py (AdapterRegistry: base + adapters on one worker thread)
-> inference.py (batched generate / classify) <- batching.py (dynamic batching) <- routes.py, admin.py
(endpoints that just raise errors.py exceptions) <- app.py (factory) <- main.py (uvicorn, SIGTERM drain).
"""
