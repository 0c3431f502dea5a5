"""The benchmark suite: op and model timings against baselines, memory probes, the demo."""
