"""Model zoo. `create_model`/`list_models` import PyTorch when called; importing this package does not."""

from edgecnn.models.registry import create_model, list_models, register_model

__all__ = ["create_model", "list_models", "register_model"]
