"""The daemon and its protocol: one process that owns the GPU, serving front ends over ZeroMQ."""
