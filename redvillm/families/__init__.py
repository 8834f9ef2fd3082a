"""Model-family adapters: one file per image-LLM family, picked from config.model_type."""
