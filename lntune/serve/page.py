"""The chat page served at `/`: one static HTML file with its script and style inline (no CDN, works offline)."""

from __future__ import annotations

from importlib import resources


def chat_page() -> str:
    return resources.files("lntune.serve").joinpath("static", "chat.html").read_text(encoding="utf-8")
