"""``ben export``: BEN Base as a file other runtimes load (:mod:`ben_cli.export.onnx_graph`: ONNX)."""
