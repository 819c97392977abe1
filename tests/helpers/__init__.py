"""Test helpers shared by unit and integration tests (tiny data sets in the real on-disk layouts)."""
