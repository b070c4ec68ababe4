"""Student models for this domain."""
