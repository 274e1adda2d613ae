"""Measure every zoo model and write the README's model-zoo table.

    python tools/zoo_table.py            # print the table
    python tools/zoo_table.py --write    # replace the table between the markers in README.md
    python tools/zoo_table.py --check    # exit 1 when README.md's table is out of date
"""
import argparse
import os
import sys
from pathlib import Path

import visionattn
from visionattn.zoo import render_markdown, zoo_rows

README = Path(__file__).resolve().parents[1] / 'README.md'
BEGIN, END = '<!-- zoo-table:begin -->', '<!-- zoo-table:end -->'


def readme_table(text: str) -> str:
    """The generated block of the README (between the markers)."""
    if BEGIN not in text or END not in text:
        raise ValueError(f'README has no {BEGIN} ... {END} block')
    # one block, its markers in order: else --write failed (IndexError) only after every model had been measured
    if text.count(BEGIN) != 1 or text.count(END) != 1 or text.index(END) < text.index(BEGIN):
        raise ValueError(f'README must hold {BEGIN} and then {END} once each; it has {text.count(BEGIN)} and '
                         f'{text.count(END)}{", the end first" if text.index(END) < text.index(BEGIN) else ""}')
    return text.split(BEGIN, 1)[1].split(END, 1)[0].strip('\n') + '\n'


def current_table(progress: bool = False) -> str:
    return render_markdown(zoo_rows(visionattn.list_models(), progress=progress))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--readme', type=Path, default=README)
    action = parser.add_mutually_exclusive_group()
    action.add_argument('--write', action='store_true', help='rewrite the table in the README')
    action.add_argument('--check', action='store_true', help='fail when the README table is out of date')
    args = parser.parse_args(argv)
    text = None
    if args.write or args.check:  # the README's problems before the models are measured (minutes), in one line
        try:
            text = args.readme.read_text()
            readme_table(text)
            if args.write and not os.access(args.readme, os.W_OK):
                raise OSError('not writable')
        except (OSError, ValueError) as error:
            print(f'{args.readme}: error: {error}', file=sys.stderr)
            return 1
    table = current_table(progress=True)
    if text is None:
        print(table, end='')
        return 0
    if args.check:
        if readme_table(text) != table:
            print(f'{args.readme} zoo table is out of date: run python tools/zoo_table.py --write', file=sys.stderr)
            return 1
        return 0
    head, rest = text.split(BEGIN, 1)
    args.readme.write_text(f'{head}{BEGIN}\n{table}{END}{rest.split(END, 1)[1]}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
