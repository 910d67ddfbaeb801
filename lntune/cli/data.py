"""`lntune data check | show`: look at training data before a long job, and at what the model sees."""

from __future__ import annotations

import json

from lntune.cli.command import Command
from lntune.cli.config_flags import add_config_flags, config_flags, data_sources, given_values

_CHECK_FIELDS = ("image_folder", "types", "template", "max_length")
"""The DataConfig fields `data check` takes as flags (the rest are training's concerns)."""


def _check_flags():
    from lntune.config import DataConfig

    return config_flags(DataConfig, "data", only=_CHECK_FIELDS)


def _data_arguments(parser):
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    check = actions.add_parser("check", help="report on data before a long job",
                               description="counts, images, token lengths and the label-mask self-check")
    check.add_argument("specs", nargs="+", metavar="[TYPE=]PATH[:COUNT]")
    check.add_argument("--model", help="a built model: adds token lengths and the label-mask self-check")
    add_config_flags(check, _check_flags())
    check.add_argument("--stage", default="finetune")
    check.add_argument("--limit", type=int, help="check only the first N selected samples")
    check.add_argument("--json", action="store_true")
    show = actions.add_parser(
        "show", help="what the model sees: text, ids and labels of samples, or a benchmark's generation prompts",
        description="Training view (--data FILE): each sample's rendered text, input_ids and labels exactly as "
                    "`lntune train` builds them. Generation view (--bench B --data FILE): each question's ids exactly "
                    "as `lntune eval` builds them. Supervised spans are marked ⟦ ⟧ in the readable view.")
    show.add_argument("--model", required=True, help="a built model (its tokenizer, image token count, template)")
    show.add_argument("--data", required=True, help="a LLaVA data file, or with --bench the benchmark's files")
    show.add_argument("--bench", help="show generation prompts of this benchmark (mme, vqav2, coco, flickr30k, pope)")
    show.add_argument("--image-folder", "--images", dest="image_folder",
                      help="image folder (benchmarks that find their images through it need it)")
    show.add_argument("--index", type=int, nargs="+", action="extend", help="sample / item positions (repeatable; "
                      "default: all)")
    show.add_argument("--template", default="auto")
    show.add_argument("--stage", default="finetune", help="pretrain or finetune (decides what `auto` means)")
    show.add_argument("--system", help="system prompt (as in training)")
    show.add_argument("--image-placement", default="front", help="front (LLaVA) or keep")
    show.add_argument("--max-length", type=int, default=2048)
    show.add_argument("--prompt", help="benchmarks: prompt template with {question}, as in lntune eval")
    show.add_argument("--json", action="store_true", help="a JSON list of {index, id, text, input_ids, labels} "
                      "(training) or {index, question_id, text, input_ids} (--bench)")


def _data_run(args) -> int:
    return _data_show(args) if args.action == "show" else _data_check(args)


def _data_check(args) -> int:
    from lntune.config import DataConfig, config_from_dict
    from lntune.data.check import check_data, format_report

    fields = {key.partition(".")[2]: value for key, value in given_values(args, _check_flags()).items()}
    data_config = config_from_dict(DataConfig, dict(fields, sources=data_sources(args.specs)), "command line")
    report = check_data(data_config, model=args.model, stage=args.stage, limit=args.limit)
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0 if report["ok"] else 1


def _data_show(args) -> int:
    from lntune.data.show import ShowRequest, format_rows, show
    from lntune.model.load import load_llava_config, load_processor

    request = ShowRequest(
        model=args.model, data=args.data, indices=tuple(args.index) if args.index else None,
        image_folder=args.image_folder, bench=args.bench, template=args.template, stage=args.stage,
        system=args.system, image_placement=args.image_placement, max_length=args.max_length, prompt=args.prompt,
    )
    rows = show(request)
    if args.json:
        print(json.dumps(rows, ensure_ascii=False))
    else:
        print(format_rows(rows, load_processor(args.model).tokenizer, load_llava_config(args.model).image_token_id))
    return 0


DATA = Command(_data_arguments, _data_run, "check LLaVA-format data before training, or show what the model sees")
