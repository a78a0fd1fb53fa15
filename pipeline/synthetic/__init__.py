"""Videos the package makes itself: `samples` (videos whose pixels carry the frame index, and deliberately
broken files, for the tests and benchmarks) and `demo_set` (the sample videos of `vidfeat demo`).

May import: nothing of the package; numpy and PyAV (to encode).
"""
