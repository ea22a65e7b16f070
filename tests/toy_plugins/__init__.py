"""A backbone and a fine-tuning method declared outside the library (tests/test_registry.py registers them)."""
