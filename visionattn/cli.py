"""The ``visionattn`` command: ``visionattn models [PATTERN]`` and ``visionattn info MODEL``."""
import argparse
import json
import sys
from typing import List, Optional

import timm

import visionattn
from visionattn.profile import MeasurementError, measure
from visionattn.zoo import family, is_adopted, paper_facts, render_markdown, weight_source, zoo_rows

HF_HUB = 'hf-hub:'


def _models(args: argparse.Namespace) -> int:
    if args.pattern.startswith(HF_HUB):
        print(f'{args.pattern!r}: the pattern matches model names (e.g. efficientvit_m*), not Hugging Face hub ids; '
              f'`visionattn info {args.pattern}` names the model of a hub id', file=sys.stderr)
        return 1
    tagged = '.' in args.pattern  # 'nat_mini.in1k', '*.in1k': the pretrained weights of that tag
    names = visionattn.list_models(args.pattern, adopted=not args.own, pretrained=tagged)
    if not names:
        what = 'zoo weights (model.tag) match' if tagged else 'zoo model matches'
        print(f'no {what} {args.pattern!r}', file=sys.stderr)
        return 1
    if args.names:
        print('\n'.join(names))
    else:
        print(render_markdown(zoo_rows(names, progress=sys.stderr.isatty())), end='')
    return 0


def _checksum_status(url: str) -> str:
    """What a download of ``url`` is checked against, and whether that makes the weights verified."""
    from visionattn.hub import weight_file_facts
    facts = weight_file_facts(url)
    if facts['sha256']:
        return f'sha256 {facts["sha256"]} (checked on download and before every load)'
    size = f'size {facts["size"]:,} bytes (checked on download); ' if facts['size'] is not None else ''
    return (f'{size}the weights are unverified: the authors publish no sha256 for this file and visionattn records '
            'none, so a download is checked only for completeness (Content-Length) and format (zip CRC-32s where it '
            'is a zip); from then on the sha256 of what was downloaded, kept beside it in the cache, guards it')


def _hub_id_model(hub_id: str) -> Optional[str]:
    """The registered ``arch.tag`` whose weights are ``hub_id`` on the Hugging Face hub, or None."""
    return next((name for name in timm.list_pretrained() if (cfg := timm.models.get_pretrained_cfg(name)) is not None
                 and cfg.hf_hub_id == hub_id), None)


def _info(args: argparse.Namespace) -> int:
    name = args.model.strip()
    if not name.split('.')[0]:
        print(f'visionattn info: {args.model!r} names no model: give a model name, e.g. eca_resnet50 or '
              f'eca_resnet50.in1k (`visionattn models --names` lists them)', file=sys.stderr)
        return 1
    if name.startswith(HF_HUB):  # the registered weights of that hub id, else a message; never a download
        hub_id = name[len(HF_HUB):]
        registered = _hub_id_model(hub_id)
        if registered is None:
            print(f'{name!r} is not the hub id of any registered weights; visionattn info reads timm\'s registry '
                  f'and downloads nothing (timm.create_model({name!r}) fetches its config from the hub)',
                  file=sys.stderr)
            return 1
        name = registered
    if not timm.is_model(name.split('.')[0]):
        close = visionattn.list_models(f'*{name.split(".")[0]}*')
        hint = f'; similar: {", ".join(close[:8])}' if close else ''
        print(f'unknown model {name!r}{hint}', file=sys.stderr)
        return 1
    try:
        cfg = timm.models.get_pretrained_cfg(name)
    except RuntimeError as err:  # an unknown pretrained tag: name the tags there are
        tags = timm.list_pretrained(f'{name.split(".")[0]}.*')
        print(f'{err} Available: {", ".join(tags) if tags else "none (no pretrained weights)"}', file=sys.stderr)
        return 1
    try:
        measured, unmeasured = measure(name), None
    except MeasurementError as error:  # a timm model outside the zoo that the meta device cannot run
        measured, unmeasured = None, error
    facts = paper_facts(name)
    origin = 'adopted from timm' if is_adopted(name) else ('visionattn' if visionattn.list_models(
        name.split('.')[0], adopted=False) else 'timm (not part of the zoo)')
    print(f'model:        {name}')
    print(f'family:       {family(name) or "—"} ({origin})')
    if measured is not None:
        print(f'params:       {measured.params:,} ({measured.params_m:.2f} M)')
        print(f'GMACs:        {measured.gmacs:.3f} at {"x".join(map(str, measured.input_size))}')
    else:
        print(f'params/GMACs: not measured ({unmeasured})')
    if facts is not None:
        paper = ', '.join(f'{label} {value}' for label, value in (
            ('params (M)', facts.params_m), ('GFLOPs', facts.gflops), ('top-1', facts.top1)) if value is not None)
        print(f'paper:        {paper or "—"}{f" (counted with {facts.counting})" if facts.counting else ""}')
        if facts.reference_params is not None:
            print(f'reference:    {facts.reference_params:,} params ({facts.reference_source})')
    print(f'weights:      {weight_source(name)}')
    if cfg is not None:
        print(f'licence:      {cfg.license or "—"}')
        source = cfg.hf_hub_id or cfg.url or cfg.file
        if source:
            print(f'source:       {source}')
        if cfg.url and not cfg.hf_hub_id:
            print(f'checksum:     {_checksum_status(cfg.url)}')
        print('pretrained cfg:')
        for key, value in cfg.to_dict(remove_source=True).items():
            print(f'  {key}: {json.dumps(value, default=str)}')
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='visionattn', description=visionattn.__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest='command', required=True)
    models = sub.add_parser('models', help='the zoo table: measured params/GMACs beside the papers\' figures')
    models.add_argument('pattern', nargs='?', default='*',
                        help='wildcard on the model name (default: all); with a tag (*.in1k) the weights of that tag')
    models.add_argument('--own', action='store_true', help='only visionattn\'s families, not the adopted timm ones')
    models.add_argument('--names', action='store_true', help='print the names only (no measuring)')
    models.set_defaults(func=_models)
    info = sub.add_parser('info', help='config, params, GMACs, weights and their source of one model')
    info.add_argument('model', help='model name, optionally with a pretrained tag (eca_resnet50.in1k), or the '
                      'hf-hub:<id> of registered weights')
    info.set_defaults(func=_info)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == '__main__':
    sys.exit(main())
