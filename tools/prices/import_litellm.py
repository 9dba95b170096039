"""Regenerate Switchyard's model table (gateway/spend/prices.json) from LiteLLM's model cost map.

    .venv/bin/python tools/prices/import_litellm.py PATH [--out FILE] [--version V] [--date YYYY-MM-DD]

PATH is LiteLLM's ``model_prices_and_context_window.json`` (or the ``_backup`` copy its wheel ships
in ``site-packages/litellm/``); the data is MIT licensed (Copyright (c) 2023 Berri AI), and the
output's ``_meta`` names the source, license, version and date. The version is read from the
``litellm-*.dist-info`` next to a wheel's copy unless ``--version`` gives it.

Only the fields Switchyard uses are kept (``gateway.spend.prices.FIELDS``). Keys become
``"<provider>/<model>"`` with the provider taken from each entry's ``litellm_provider`` (its
API-surface variants folded: ``bedrock_converse`` -> ``bedrock``, ``vertex_ai-language-models`` ->
``vertex_ai``, ``text-completion-openai`` -> ``openai``, ...), so a deployment's own model string
finds its entry. When two LiteLLM keys land on one of ours, the entry with more known fields wins.
"""

from __future__ import annotations

import argparse
import datetime
import json
import re
import sys
from pathlib import Path
from typing import Any

from gateway.spend.prices import FIELDS

REPO = Path(__file__).resolve().parents[2]
DEFAULT_OUT = REPO / "gateway" / "spend" / "prices.json"
LICENSE = "MIT (Copyright (c) 2023 Berri AI)"
SOURCE = "LiteLLM model_prices_and_context_window.json, https://github.com/BerriAI/litellm"

# LiteLLM provider names that are another API surface of one of our providers.
_FOLDED = {
    "azure_text": "azure",
    "bedrock_converse": "bedrock",
    "cohere_chat": "cohere",
}
# Our field -> LiteLLM's name for it.
_SOURCE_FIELDS = {
    "mode": "mode",
    "max_input_tokens": "max_input_tokens",
    "max_output_tokens": "max_output_tokens",
    "input_cost_per_token": "input_cost_per_token",
    "output_cost_per_token": "output_cost_per_token",
    "cache_read_cost_per_token": "cache_read_input_token_cost",
    "cache_write_cost_per_token": "cache_creation_input_token_cost",
    "input_cost_per_image": "input_cost_per_image",
    "output_cost_per_image": "output_cost_per_image",
    "input_cost_per_second": "input_cost_per_second",
    "output_cost_per_second": "output_cost_per_second",
}
_INT_FIELDS = {"max_input_tokens", "max_output_tokens"}


def provider_prefix(litellm_provider: str) -> str:
    """Our key prefix for a ``litellm_provider`` value."""
    name = litellm_provider.removeprefix("text-completion-")
    name = _FOLDED.get(name, name)
    # "vertex_ai-anthropic_models", "fireworks_ai-embedding-models": model families of the provider.
    family = re.fullmatch(r"([a-z0-9_]+)-[a-z0-9_-]*models", name)
    return family.group(1) if family else name


def our_key(litellm_key: str, prefix: str, litellm_provider: str) -> str:
    """``"<prefix>/<model>"``: LiteLLM's key with its own provider prefix, if any, replaced."""
    head, sep, rest = litellm_key.partition("/")
    if sep and head.replace("-", "_") in {prefix, litellm_provider.replace("-", "_")}:
        return f"{prefix}/{rest}"
    return f"{prefix}/{litellm_key}"


def _value(field: str, raw: Any) -> Any:
    if field == "mode":
        return raw if isinstance(raw, str) and raw else None
    if isinstance(raw, bool) or not isinstance(raw, (int, float)) or raw < 0:
        return None  # LiteLLM's sample entry documents fields with strings
    if field in _INT_FIELDS:
        return int(raw) if raw > 0 else None
    return float(raw)


def convert(source: dict[str, Any]) -> dict[str, list[Any]]:
    """Our rows (``FIELDS`` in order, trailing unknowns dropped) by our key."""
    rows: dict[str, list[Any]] = {}
    for key, entry in source.items():
        if key == "sample_spec" or not isinstance(entry, dict):
            continue
        provider = entry.get("litellm_provider")
        if not isinstance(provider, str) or not re.fullmatch(r"[a-z0-9_.-]+", provider):
            continue
        row = [_value(f, entry.get(_SOURCE_FIELDS[f])) for f in FIELDS]
        while row and row[-1] is None:
            row.pop()
        if len(row) <= 1:  # a mode alone: nothing to price or check
            continue
        prefix = provider_prefix(provider)
        ours = our_key(key, prefix, provider)
        kept = rows.get(ours)
        if kept is None or _known(row) > _known(kept):
            rows[ours] = row
    return dict(sorted(rows.items()))


def _known(row: list[Any]) -> int:
    return sum(v is not None for v in row)


def detect_version(path: Path) -> str:
    """The LiteLLM version of a wheel's copy (``site-packages/litellm/<file>``), else "unknown"."""
    for info in sorted(path.resolve().parent.parent.glob("litellm-*.dist-info")):
        metadata = info / "METADATA"
        if metadata.exists():
            for line in metadata.read_text(errors="replace").splitlines():
                if line.startswith("Version:"):
                    return line.split(":", 1)[1].strip()
    return "unknown"


def build(source_path: Path, version: str | None, date: str | None) -> dict[str, Any]:
    source = json.loads(source_path.read_text())
    if not isinstance(source, dict):
        raise ValueError(f"{source_path}: not a JSON object of models")
    models = convert(source)
    meta = {
        "source": SOURCE,
        "file": source_path.name,
        "license": LICENSE,
        "litellm_version": version or detect_version(source_path),
        "date": date or datetime.datetime.now(datetime.UTC).date().isoformat(),
        "generator": "tools/prices/import_litellm.py",
        "units": "USD per token, per image, per second",
        "fields": list(FIELDS),
        "entries": len(models),
    }
    return {"_meta": meta, "models": models}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("path", type=Path, help="LiteLLM's model_prices_and_context_window(.backup).json")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="default: gateway/spend/prices.json")
    parser.add_argument("--version", help="the LiteLLM version the file comes from (default: detected)")
    parser.add_argument("--date", help="the import date written in _meta (default: today, UTC)")
    args = parser.parse_args(argv)
    try:
        table = build(args.path, args.version, args.date)
    except (OSError, ValueError) as exc:
        print(f"import_litellm: {exc}", file=sys.stderr)
        return 1
    # Minified, one entry a line: small, and a refresh's diff stays readable.
    lines = [
        json.dumps(key) + ":" + json.dumps(row, separators=(",", ":")) for key, row in table["models"].items()
    ]
    meta = json.dumps(table["_meta"], separators=(",", ":"))
    args.out.write_text('{"_meta":' + meta + ',\n"models":{\n' + ",\n".join(lines) + "\n}}\n")
    print(f"wrote {len(lines)} models to {args.out} (LiteLLM {table['_meta']['litellm_version']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
