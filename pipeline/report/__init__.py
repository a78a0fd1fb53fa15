"""`vidfeat report`: one self-contained HTML page about an output (`page`), its charts (`svg`) and the
video thumbnails it shows (`thumbnails`, through the decode package's `open_video`).

May import: `read`, `store`, `decode` (thumbnails), config, errors, text. Nothing imports the report.
"""
