"""Qwen3-VL frontend: FastAPI + Gradio, talking to Triton over gRPC only.

Never import torch, transformers or backend_python here: this package ships in a small image.
"""
