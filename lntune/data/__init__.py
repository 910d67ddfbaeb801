"""Training data: LLaVA-format records, image loading, chat templates and label masks, batching."""
