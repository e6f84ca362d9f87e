"""``cxrseg push``: push a training output folder to the Hugging Face Hub, as ``push_to_hub: true`` does at the end
of training (model, image processor, postprocess.json, shareable recipe, model card; no checkpoints)."""

from __future__ import annotations

import argparse

from cxrseg.hub.access import check_hub_access
from cxrseg.hub.push import check_model_folder, push_folder


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("push", help="Push a training output folder to the Hub with a model card.")
    parser.add_argument("--model", required=True, help="Output folder of run_train.py (config.json, *.safetensors).")
    parser.add_argument("--repo-id", required=True, help="Hub repo, namespace/name (created if missing).")
    parser.add_argument(
        "--private", action="store_true", help="Create the repo private (default: the namespace's default)."
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # The token comes from HF_TOKEN or `hf auth login`, never from the command line (shell history, process list).
    check_model_folder(args.model)
    repo_id = check_hub_access(args.repo_id)
    url = push_folder(args.model, repo_id, private=True if args.private else None)
    print(f"Pushed {args.model} to https://huggingface.co/{repo_id} ({url})")
    return 0
