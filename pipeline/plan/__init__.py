"""What to decode, before any decoding: the clip plan of a video (`clips`) and the sample videos the demo
and the tests make (`samples`).

May import: config only (and numpy; `samples` uses PyAV to encode).
"""
