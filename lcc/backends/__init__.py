"""Backends lower lcc programs: ``onnx``, ``tvm``, ``triton``. Each registers its op lowerings itself."""
