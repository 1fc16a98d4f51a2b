"""The model side of the core: everything between pixels and embeddings. Imports no other part of the pipeline
except the settings (``..config``), so the stages above can change without touching it.

==================  ==============================================================================================
``backend``         what the pipeline asks of a vision-language model; ``factory`` builds the configured one
``open_clip_backend``  real CLIP from open_clip; ``toy_backend``: a deterministic colour model for tests and demos
``dense``           dense CLIP features over sliding windows, window layouts and what they cost
``dense_methods``   the training-free methods (SC-CLIP, NACLIP, ...): how each changes the end of the ViT
``runtimes``        how the window encoder runs: eager PyTorch, ``torch.compile`` or an exported ONNX model
``export``          ``clipomaly export``: the window encoder as ONNX, with metadata that ties it to its weights
``adaptation``      fine-tuned weights: low-rank adapters and their sidecar
==================  ==============================================================================================
"""
