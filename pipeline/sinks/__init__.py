"""Writers of output parts (Parquet, HDF5) and the one way a file becomes visible: `publish`."""
from pipeline.sinks.publish import publish_bytes, publish_file

__all__ = ["publish_bytes", "publish_file"]
