"""kubetune trainer: LoRA fine-tuning that runs the same on a laptop and as the training pod.

Rooms: data (load, validate, tokenize, pack), models (base + LoRA), train (the loop), checkpoint,
evaluate, artifacts, logs (JSON events / progress bar), entrypoint (what `kubetune train` calls).
"""
