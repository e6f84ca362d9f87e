"""Sharing on the Hugging Face Hub: access checks, the model card, pushes, checkpoint uploads during training."""

from cxrseg.hub.access import check_hub_access, is_hub_id
from cxrseg.hub.card import model_card, write_model_card
from cxrseg.hub.push import push_folder

__all__ = ["check_hub_access", "is_hub_id", "model_card", "push_folder", "write_model_card"]
