"""The `switchyard` console command (placeholder until the spine lands)."""


def main() -> None:
    raise SystemExit("switchyard: not implemented yet")
