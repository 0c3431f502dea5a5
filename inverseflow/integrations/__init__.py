"""Adapters for other flow libraries. Each lives in its own module and imports its library
only when that module is imported, so ``import inverseflow`` never needs them."""
