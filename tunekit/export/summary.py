"""What an export wrote and how its parity check went, on the console."""

from __future__ import annotations

from pathlib import Path

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


def _print_gguf(gguf: dict) -> None:
    for type_name, path in gguf["files"].items():
        console.print(f"[green]GGUF {type_name}[/] → {escape(path)} ({human_size(Path(path).stat().st_size)})", soft_wrap=True)
    parity = gguf["parity"]
    if parity is not None:
        verdict = "[green]passed[/]" if parity["passed"] else "[red]failed[/]"
        first = parity["first_divergence_positions"]
        console.print(
            f"GGUF parity {verdict}: {parity['identical']}/{parity['n']} greedy answers identical to the merged model "
            f"({parity['identical_share']:.0%}), chat template {'identical' if parity['template_identical'] else '[red]different[/]'}, "
            f"stop tokens {'ok' if parity['stop_tokens']['ok'] else '[red]wrong[/]'}"
            + (f", first divergences at tokens {first[:8]}" if first else "")
        )
        cut = parity.get("cut_at_max_new_tokens") or {}
        if cut.get("hf") or cut.get("gguf"):
            console.print(
                f"[yellow]    {cut['hf']} of {parity['n']} merged-model answers (and {cut['gguf']} GGUF answers) were cut at "
                f"max_new_tokens={parity['max_new_tokens']}: those are compared on their first {parity['max_new_tokens']} tokens only[/]"
            )
    quant = gguf.get("quant")
    if quant:
        ref = quant["reference"]
        console.print(f"perplexity on {escape(quant['text_source'])} ({quant['tokens_scored']} tokens): F16 {ref['perplexity']:.3f}", soft_wrap=True)
        for row in quant["quantized"]:
            gate = "" if row["max_increase_pct"] is None else f", gate {row['max_increase_pct']:g}%"
            state = " [red]BLOCKED (file removed)[/]" if row["blocked"] else ""
            console.print(f"    {row['type']}: {row['perplexity']:.3f} ({row['increase_pct']:+.2f}%, {row['verdict']}{gate}){state}")
        console.print(f"quantization report → {escape(gguf['quant_report'])}", soft_wrap=True)


def _print_ollama(ollama: dict) -> None:
    console.print(f"[green]Ollama Modelfile[/] → {escape(ollama['path'])} (FROM {escape(Path(ollama['gguf']).name)})", soft_wrap=True)
    if ollama["family"] is None:
        console.print("[yellow]    no TEMPLATE written: the chat template's family is not one tunekit translates; Ollama will guess it[/]")
    elif not ollama["template_verified"]:
        console.print(f"[yellow]    the {ollama['family']} TEMPLATE does not reproduce the HF template for: {ollama['template_mismatches']}[/]")
    else:
        stops = ", ".join(ollama["stop"])
        console.print(f"    TEMPLATE: {ollama['family']} layout, reproduces the HF template on the probe chats; stop: {escape(stops)}", soft_wrap=True)
    console.print(f"    create it with: {escape(ollama['command'])}", soft_wrap=True)


def print_summary(report: dict, report_path) -> None:
    if report["adapter"]:
        _print_listing("adapter", report["adapter"])
    if report["merged"]:
        merged = report["merged"]
        _print_listing(f"merged model ({merged['dtype']}, {merged['parameters']:,} parameters)", merged)
    if report.get("source") == "full":
        console.print("parity: not applicable (full fine-tune: the merged model is the trained model)")
    else:
        _print_parity(report["parity"], bool(report["merged"]))
    if report.get("gguf"):
        _print_gguf(report["gguf"])
    if report.get("ollama"):
        _print_ollama(report["ollama"])
    console.print(f"report → {escape(str(report_path))}", soft_wrap=True)
