"""The benchmark (``python -m mlgcn_lt.bench``): loader throughput, training-step overhead, experts, memory."""
