"""The MLLM itself: assembly from an LLM and a vision encoder, loading, the connector, its parts."""
