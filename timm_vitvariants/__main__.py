"""``python -m timm_vitvariants``: with no arguments, a table of every registered variant."""
import argparse
import sys
from typing import List, Optional


def print_table(names: Optional[List[str]] = None) -> None:
    from .info import list_variants, variant_info

    header = ('model', 'params (M)', 'GMACs', 'input size', 'feature strides', 'published weights')
    rows = []
    for name in names or list_variants():
        info = variant_info(name)
        size = 'x'.join(str(s) for s in info.input_size)
        strides = ', '.join(str(s) for s in info.feature_strides)
        weights = ', '.join(info.weights) or 'none yet'
        rows.append((name, f'{info.params_m:.2f}', f'{info.gmacs:.2f}', size, strides, weights))
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for i, row in enumerate([header, *rows]):
        print('  '.join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip())
        if i == 0:
            print('  '.join('-' * w for w in widths))


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog='python -m timm_vitvariants',
        description='vit-pytorch families as timm models. Without a command: list every variant.')
    sub = parser.add_subparsers(dest='command')
    table = sub.add_parser('list', help='table of the registered variants (the default)')
    table.add_argument('models', nargs='*', help='only these variants')
    args = parser.parse_args(argv)
    print_table(getattr(args, 'models', None))
    return 0


if __name__ == '__main__':
    sys.exit(main())
