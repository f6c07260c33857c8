"""Generate lazyaccept's man page and shell completions from its argparse parser (cli.build_parser).

    python tools/gen_cli_docs.py           # write them under src/lazyaccept/share/
    python tools/gen_cli_docs.py --check   # exit 1 when a committed file differs from what the parser gives now

The man page comes from argparse-manpage, the bash and zsh completions from shtab (both dev dependencies). The
wheel installs them as share/man/man1/lazyaccept.1, share/bash-completion/completions/lazyaccept and
share/zsh/site-functions/_lazyaccept (pyproject.toml [tool.setuptools.data-files]). tests/test_cli_docs.py runs
the check, so a parser change without a regeneration fails.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARE = ROOT / "src" / "lazyaccept" / "share"
# Laid out as they are installed under the prefix (pyproject.toml's data-files copy them there).
OUTPUTS = {
    "man": SHARE / "man" / "man1" / "lazyaccept.1",
    "bash": SHARE / "bash-completion" / "completions" / "lazyaccept",
    "zsh": SHARE / "zsh" / "site-functions" / "_lazyaccept",
}
# The man page's date: fixed, so that regenerating gives the same bytes (argparse-manpage defaults to today).
MAN_DATE = "December 2026"
# Help text is wrapped to the terminal's width (shutil.get_terminal_size reads $COLUMNS): one width for everyone.
COLUMNS = "100"
FILE_METAVARS = {"IMAGE", "FILE", "VMLINUZ", "APP.efi", "FILE.toml", "NAME|FILE", "LIST"}
DIR_METAVARS = {"DIR"}


def _parser() -> argparse.ArgumentParser:
    sys.path.insert(0, str(ROOT / "src"))
    from lazyaccept.cli import build_parser

    return build_parser()[0]


def _subparsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    out = [parser]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):
                out += _subparsers(sub)
    return out


def _mark_paths(parser: argparse.ArgumentParser) -> None:
    """Complete file and folder names where a flag takes one (shtab's `complete` attribute)."""
    import shtab

    for p in _subparsers(parser):
        for action in p._actions:
            if action.metavar in DIR_METAVARS:
                action.complete = shtab.DIRECTORY  # type: ignore[attr-defined]
            elif action.metavar in FILE_METAVARS and action.metavar != "LIST" or action.dest in ("image", "file"):
                action.complete = shtab.FILE  # type: ignore[attr-defined]


def _keep_lines(page: str, blocks: list[str]) -> str:
    """roff fills text into paragraphs; argparse's usage lines and the blocks laid out by hand (boot's modelled/real
    list) read better as written, so they go between .nf and .fi (no filling)."""
    for block in blocks:
        page = page.replace(f"\n{block}\n", f"\n.nf\n{block}\n.fi\n")
    out: list[str] = []
    in_usage = False
    for line in page.split("\n"):
        if line.startswith("usage: "):
            out.append(".nf")
            in_usage = True
        elif in_usage and not line.startswith(" "):
            out.append(".fi")
            in_usage = False
        out.append(line)
    return "\n".join(out)


def render() -> dict[str, str]:
    import shtab
    from argparse_manpage.manpage import Manpage, _markup

    from lazyaccept.commands.boot import MODELLED_AND_REAL

    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = COLUMNS
    try:
        from lazyaccept import __version__

        parser = _parser()
        man = Manpage(parser)
        man.date = MAN_DATE
        man.source = f"lazyaccept {__version__}"
        man.manual = "lazyaccept manual"
        man.description = "TDVF lazy memory acceptance for Intel TDX guests"
        _mark_paths(parser)
        page = _keep_lines(str(man), [_markup(MODELLED_AND_REAL)])
        return {"man": page, "bash": shtab.complete(parser, "bash"), "zsh": shtab.complete(parser, "zsh")}
    finally:
        if old is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = old


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="gen_cli_docs", description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="compare with the committed files instead of writing them")
    args = ap.parse_args(argv)
    stale = []
    for kind, text in render().items():
        path = OUTPUTS[kind]
        if args.check:
            if not path.is_file() or path.read_text() != text:
                stale.append(path.relative_to(ROOT))
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            print(f"wrote {path.relative_to(ROOT)}")
    if stale:
        print(f"stale: {', '.join(map(str, stale))}: run python tools/gen_cli_docs.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
