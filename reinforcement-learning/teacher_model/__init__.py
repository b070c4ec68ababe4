"""Teacher models for this domain."""
