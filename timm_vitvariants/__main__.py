"""``python -m timm_vitvariants``: with no arguments, a table of every registered variant.

Commands: ``list`` (the table), ``export`` (checkpoint -> Hub-ready folder), ``convert`` (vit-pytorch
checkpoint, or IBM's official RegionViT checkpoint with ``--from ibm``, -> Hub-ready folder) and ``push``
(folder -> Hugging Face Hub repo). User mistakes end in one ``error:`` line and exit status 2, never a
traceback.
"""
import argparse
import json
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional


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


def parse_value(text: str) -> Any:
    """JSON where it parses (numbers, lists, true/false/null), the plain string otherwise."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def collect_args(json_file: Optional[str], pairs: List[str]) -> Dict[str, Any]:
    """Constructor arguments: a JSON object file, then ``key=value`` pairs on top."""
    args: Dict[str, Any] = {}
    if json_file:
        try:
            args = json.loads(Path(json_file).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f'cannot read the arguments file {json_file}: {e}') from e
        if not isinstance(args, dict):
            raise ValueError(f'{json_file} must hold a JSON object of arguments, got {type(args).__name__}')
    for pair in pairs:
        key, sep, value = pair.partition('=')
        if not sep or not key.isidentifier():
            raise ValueError(f'--arg expects key=value (e.g. --arg depth=[1,1]), got {pair!r}')
        args[key] = parse_value(value)
    return args


def read_labels(path: Optional[str]) -> Optional[List[str]]:
    """Class names: a JSON list, or a text file with one name per line."""
    if not path:
        return None
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise ValueError(f'cannot read the labels file: {e}') from e
    if path.endswith('.json'):
        labels = json.loads(text)
        if not isinstance(labels, list):
            raise ValueError(f'{path} must hold a JSON list of class names')
        return [str(label) for label in labels]
    return [line.strip() for line in text.splitlines() if line.strip()]


def add_export_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--output', '-o', required=True, help='folder to write (must be empty or new)')
    parser.add_argument('--overwrite', action='store_true',
                        help='replace model.safetensors, config.json and README.md in a non-empty folder')
    parser.add_argument('--labels', help='class names: a JSON list, or a text file with one name per line')
    parser.add_argument('--training-data', help='what the weights were trained on, for the model card')
    parser.add_argument('--license', help="licence for the card and config (default: the variant's)")
    parser.add_argument('--repo', help='org/name the folder will be pushed to, for the usage example in the card')
    parser.add_argument('--input-size', type=int, nargs=2, metavar=('H', 'W'),
                        help="input size to record and verify with (default: the variant's)")


def export_model(model: Any, args: argparse.Namespace) -> None:
    from .hub import export_folder
    data_config = {'input_size': (model.in_chans, *args.input_size)} if args.input_size else None
    folder = export_folder(model, args.output, label_names=read_labels(args.labels), training_data=args.training_data,
                           license=args.license, repo_id=args.repo, data_config=data_config, overwrite=args.overwrite)
    print(f'exported {model.pretrained_cfg["architecture"]} to {folder} (loads back with identical outputs)')
    print(f'next: python -m timm_vitvariants push {folder} --repo ORG/NAME')


def run_export(args: argparse.Namespace) -> None:
    from .hub import model_from_checkpoint
    model = model_from_checkpoint(args.model, args.checkpoint, collect_args(args.model_args, args.arg), args.ema)
    export_model(model, args)


def run_convert_ibm(args: argparse.Namespace) -> None:
    from .hub import add_card_section, convert_ibm_checkpoint
    if not args.model:
        raise ValueError('--from ibm needs --model, a regionvit_ibm_* variant (e.g. regionvit_ibm_small)')
    model = convert_ibm_checkpoint(args.model, args.checkpoint, collect_args(args.config, args.arg))
    cfg = model.pretrained_cfg
    args.training_data = args.training_data or 'ImageNet-1k (trained by IBM, IBM/RegionViT)'
    export_model(model, args)
    add_card_section(args.output, 'Source', [
        f'- weights: IBM\'s official RegionViT checkpoint `{Path(args.checkpoint).name}` '
        f'({cfg.get("origin_url")}, release weights-v0.1), licence {cfg.get("license")}; converted to '
        f'safetensors by timm_vitvariants (key mapping only, outputs checked against the source checkpoint '
        f'loaded the same way)',
        *[f'- {note}' for note in cfg.get('notes') or ()],
        '- paper: Chen et al., RegionViT: Regional-to-Local Attention for Vision Transformers, '
        '[arXiv:2106.02689](https://arxiv.org/abs/2106.02689)',
    ])


def run_convert(args: argparse.Namespace) -> None:
    if args.source == 'ibm':
        return run_convert_ibm(args)
    if not args.vit_pytorch_class:
        raise ValueError('convert needs --vit-pytorch-class (or --from ibm with --model)')
    from .hub import convert_checkpoint
    model = convert_checkpoint(args.vit_pytorch_class, args.checkpoint, collect_args(args.config, args.arg),
                               input_size=args.input_size)
    export_model(model, args)


def run_push(args: argparse.Namespace) -> None:
    from .hub import check_folder, check_repo_id, push_folder, upload_plan
    check_repo_id(args.repo)  # before the folder is loaded
    files, left_out = upload_plan(args.folder, args.include)
    print(f'{"would upload" if args.dry_run else "uploading"} to {args.repo}:')
    for path in files:
        print(f'  {path.relative_to(args.folder).as_posix()}  ({path.stat().st_size / 1e6:.2f} MB)')
    if left_out:
        print('not uploaded (not a Hub file; --include PATTERN adds it):')
        for path in left_out:
            print(f'  {path.relative_to(args.folder).as_posix()}')
    print(f'check: {check_folder(args.folder)}')
    sys.stdout.flush()  # before huggingface_hub's progress bars
    names = push_folder(args.folder, args.repo, private=args.private, revision=args.revision,
                        commit_message=args.message, dry_run=args.dry_run, include=args.include, check=False)
    if args.dry_run:
        return
    print(f'uploaded {", ".join(names)} to {args.repo}')
    print(f"load with: timm.create_model('hf-hub:{args.repo}', pretrained=True)")


def build_parser() -> argparse.ArgumentParser:
    from .convert import supported_classes
    parser = argparse.ArgumentParser(
        prog='python -m timm_vitvariants',
        description='vit-pytorch families as timm models. Without a command: list every variant.')
    sub = parser.add_subparsers(dest='command')
    table = sub.add_parser('list', help='table of the registered variants (the default)')
    table.add_argument('models', nargs='*', help='only these variants')

    export = sub.add_parser(
        'export', help='a checkpoint -> a Hub-ready folder (model.safetensors, config.json, README.md)',
        description='Writes a Hub-ready folder from a timm train.py checkpoint (.pth.tar), a torch.save\'d '
                    'state dict or a safetensors file, and checks that it loads back with identical outputs.')
    export.add_argument('--model', '-m', required=True, help='variant name, e.g. maxvit_reg_tiny')
    export.add_argument('--checkpoint', '-c', required=True, help='.pth.tar / .pth / .safetensors weights')
    export.add_argument('--ema', action='store_true', help="export the checkpoint's EMA weights (state_dict_ema)")
    export.add_argument('--model-args', help='JSON file of create_model arguments (e.g. num_classes)')
    export.add_argument('--arg', action='append', default=[], metavar='KEY=VALUE',
                        help='one create_model argument, value as JSON where it parses (repeatable)')
    add_export_options(export)

    convert = sub.add_parser(
        'convert',
        help='a vit-pytorch (or, --from ibm, IBM RegionViT) checkpoint -> the timm model -> a Hub-ready folder',
        description='Builds the vit-pytorch model from its constructor arguments, loads the state dict '
                    '(torch.load with weights_only=True), converts it, checks both give the same outputs, '
                    'then exports as `export` does. With --from ibm: loads IBM\'s official RegionViT checkpoint '
                    'into --model (a regionvit_ibm_* variant) as its .in1k tag does, then exports.')
    convert.add_argument('--from', dest='source', choices=('vit-pytorch', 'ibm'), default='vit-pytorch',
                         help="the checkpoint's origin: a vit-pytorch state dict (default), or IBM's official "
                              "RegionViT (a release .pth or IBM/RegionViT main.py checkpoint; needs --model)")
    convert.add_argument('--vit-pytorch-class', choices=supported_classes(),
                         help='the vit-pytorch class the checkpoint was saved from')
    convert.add_argument('--model', '-m', help='--from ibm: the regionvit_ibm_* variant, e.g. regionvit_ibm_small')
    convert.add_argument('--checkpoint', '-c', required=True, help="the vit-pytorch model's state dict (torch.save)")
    convert.add_argument('--config', help='JSON file of the vit-pytorch constructor arguments')
    convert.add_argument('--arg', action='append', default=[], metavar='KEY=VALUE',
                         help='one constructor argument, value as JSON where it parses (repeatable)')
    add_export_options(convert)

    push = sub.add_parser(
        'push', help='upload an exported folder to a Hugging Face Hub repo',
        description='Checks that the folder loads as users will load it (config.json, architecture, weights '
                    'sha256, finite outputs), creates the repo if needed and uploads the Hub files in one commit. '
                    'Honours HF_ENDPOINT and HF_TOKEN (or a `hf auth login` token).')
    push.add_argument('folder', help='a folder written by export or convert')
    push.add_argument('--repo', required=True, help='org/name')
    push.add_argument('--private', action='store_true', help='create the repo private')
    push.add_argument('--revision', help='branch to commit to (default: main)')
    push.add_argument('--message', default='Upload timm_vitvariants model', help='commit message')
    push.add_argument('--include', action='append', default=[], metavar='PATTERN',
                      help='also upload the files matching this pattern (e.g. "*.md"); other files are listed '
                           'and left out (repeatable)')
    push.add_argument('--dry-run', action='store_true',
                      help='check the folder and print what would be uploaded, upload nothing')
    return parser


COMMANDS = {'export': run_export, 'convert': run_convert, 'push': run_push}


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command not in COMMANDS:
        print_table(getattr(args, 'models', None))
        return 0
    from huggingface_hub.errors import HfHubHTTPError
    try:
        COMMANDS[args.command](args)
    except (ValueError, TypeError, OSError, RuntimeError, HfHubHTTPError) as e:
        parser.exit(2, f'{parser.prog} {args.command}: error: {e}\n')
    return 0


if __name__ == '__main__':
    sys.exit(main())
