"""What an export wrote and how its parity check went, on the console."""

from __future__ import annotations

from rich.markup import escape

from tunekit.console import console


def human_size(num_bytes: int) -> str:
    size = float(num_bytes)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GB"


def _print_listing(label: str, listing: dict) -> None:
    count, size = len(listing["files"]), human_size(listing["bytes"])
    console.print(f"[green]{label}[/] → {escape(listing['path'])} ({count} files, {size})", soft_wrap=True)
    for item in listing["files"]:
        console.print(f"    {escape(item['name'])}  {human_size(item['bytes'])}")


def _print_parity(parity: dict | None, merged: bool) -> None:
    if parity is None:
        console.print("parity: skipped" + ("" if merged else " (no merged model written)"))
        return
    verdict = "[green]passed[/]" if parity["passed"] else "[red]failed[/]"
    ratio = f", error ratio vs unmerged {parity['error_ratio']:.2f}" if parity["error_ratio"] is not None else ""
    console.print(
        f"parity {verdict}: {parity['identical']}/{parity['n']} greedy generations identical, "
        f"max |logit diff| {parity['max_abs_logit_diff']:.2e}, top-1 agreement {parity['top1_agreement']:.1%}{ratio}\n"
        f"    gate: {escape(parity['gate'])}"
    )


def print_summary(report: dict, report_path) -> None:
    if report["adapter"]:
        _print_listing("adapter", report["adapter"])
    if report["merged"]:
        merged = report["merged"]
        _print_listing(f"merged model ({merged['dtype']}, {merged['parameters']:,} parameters)", merged)
    _print_parity(report["parity"], bool(report["merged"]))
    console.print(f"report → {escape(str(report_path))}", soft_wrap=True)
