"""Objects in a local folder or S3, and the catalog of the pool's state beside them."""
