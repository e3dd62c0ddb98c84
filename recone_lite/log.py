"""One rich console on stderr for logs and progress; stdout is kept for data (JSONL)."""

from __future__ import annotations

from rich.console import Console

console = Console(stderr=True, soft_wrap=True)


def info(message: str) -> None:
    console.print(message, highlight=False)


def warn(message: str) -> None:
    console.print(f"[yellow]warning:[/yellow] {message}", highlight=False)
