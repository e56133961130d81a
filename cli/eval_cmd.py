"""``om3db eval``: instance AP (from a database or prediction files) and semantic mIoU / hIoU."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from om3db.errors import ConfigError
from om3db.query import DEFAULT_TEMPLATE, check_template

from .db_cmds import _Bars
from .options import DbOpt, local_path

GT_HELP = (
    "Ground truth: a folder of <scene>.txt (one id label*1000+instance+1 per point) or of scans with gt/instances.txt."
)
VOCAB_HELP = "'scannet200', a classes.json ([{id, name}]), a scan folder with gt/classes.json, or a text file of names."
EXCLUDE_HELP = "Class prompted but not evaluated (its GT points are void); repeat. Default: wall, floor."
PlotOpt = Annotated[
    str | None,
    typer.Option("--plot", help="Also write PNG figures (matplotlib) into this folder (docs/cli.md, eval)."),
]


def _choices(values: list[str] | None, option: str, allowed: tuple[str, ...]) -> tuple[str, ...]:
    """The values of a repeatable choice option (all of ``allowed`` when not given), each once, in order."""
    for v in values or ():
        if v not in allowed:
            raise ConfigError(f"{option} {v!r}: not a choice; choose {' or '.join(allowed)}")
    return tuple(dict.fromkeys(values)) if values else allowed


def _vocabulary(spec: str, exclude: list[str] | None):
    """The vocabulary; a class named by --exclude must be one of its names ('' alone: exclude nothing)."""
    from om3db.evaluate import load_vocabulary

    if exclude is None:
        return load_vocabulary(spec)  # its default: wall, floor
    names = tuple(e for e in exclude if e != "")
    vocab = load_vocabulary(spec, exclude=names)
    unknown = [e for e in names if e not in vocab.names]
    if unknown:
        raise ConfigError(
            f"--exclude {unknown[0]!r}: not a class of the vocabulary {spec}; give one of its names "
            "(--exclude '' evaluates every class)"
        )
    return vocab


def _check_plot(plot):
    if plot is not None:
        from om3db.plots import check_plot_dir

        check_plot_dir(plot)
    return plot


def _wrote(paths) -> None:
    for p in paths:
        typer.echo(f"wrote {p}", err=True)


def _fmt(x: float | None) -> str:
    return "-" if x is None or x != x else f"{100 * x:.1f}"


def _instance_tables(results: dict, *, per_class: bool) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    summary = Table(title="Instance segmentation AP (%)")
    first = next(iter(results.values()))
    for col in ("protocol", "AP", "AP50", "AP25", *first.splits):
        summary.add_column(col, justify="left" if col == "protocol" else "right")
    for key, r in results.items():
        summary.add_row(key, _fmt(r.ap), _fmt(r.ap50), _fmt(r.ap25), *(_fmt(s["ap"]) for s in r.splits.values()))
    console.print(summary)
    if per_class:
        table = Table(title="Per class AP50 (%) (classes with ground truth)")
        table.add_column("class")
        table.add_column("GT", justify="right")
        for key in results:
            table.add_column(key, justify="right")
        for i, c in enumerate(first.classes):
            if c.num_gt:
                table.add_row(c.name, str(c.num_gt), *(_fmt(r.classes[i].ap50) for r in results.values()))
        console.print(table)
    r = first
    console.print(
        f"{len(r.scenes)} scenes, {r.num_predictions} predictions evaluated, "
        f"{r.dropped_small} under the minimum size, {r.dropped_not_evaluated} of classes not evaluated"
    )


def register(app: typer.Typer) -> None:
    ev = typer.Typer(
        help="Evaluate against ground truth: ScanNet200 instance AP, semantic mIoU / hIoU.", no_args_is_help=True
    )
    app.add_typer(ev, name="eval")

    @ev.command("instances")
    def instances(
        gt: Annotated[str, typer.Option("--gt", help=GT_HELP)],
        db: DbOpt = None,
        vocabulary: Annotated[str, typer.Option("--vocabulary", help=VOCAB_HELP)] = "scannet200",
        exclude: Annotated[list[str] | None, typer.Option("--exclude", help=EXCLUDE_HELP)] = None,
        template: Annotated[
            str, typer.Option("--template", help="Prompt template; {} is the class name.")
        ] = DEFAULT_TEMPLATE,
        protocol: Annotated[
            list[str] | None, typer.Option("--protocol", help="constant | similarity; repeat. Default: both.")
        ] = None,
        aggregation: Annotated[
            list[str] | None, typer.Option("--aggregation", help="mean | max; repeat. Default: both.")
        ] = None,
        per_class: Annotated[
            bool, typer.Option("--per-class/--no-per-class", help="Print the per-class table.")
        ] = True,
        json_out: Annotated[bool, typer.Option("--json", help="Print the full report as JSON.")] = False,
        plot: PlotOpt = None,
    ) -> None:
        """Label every GT scan's instances in the database and report AP under both scoring protocols."""
        from om3db import connect
        from om3db.evaluate import evaluate_database

        gt, plot = local_path(gt, "--gt"), _check_plot(local_path(plot, "--plot"))
        check_template(template)
        protocols = _choices(protocol, "--protocol", ("constant", "similarity"))
        aggregations = _choices(aggregation, "--aggregation", ("mean", "max"))
        vocab = _vocabulary(vocabulary, exclude)
        database = connect(db, create=False)
        try:
            with _Bars(enabled=not json_out) as bars:
                report = evaluate_database(
                    database,
                    gt,
                    vocab,
                    template=template,
                    protocols=protocols,
                    aggregations=aggregations,
                    progress=bars.update,
                )
        finally:
            database.close()
        if plot is not None:
            from om3db.plots import plot_instance

            _wrote(plot_instance(report.results, plot, splits=vocab.splits))
        if json_out:
            typer.echo(json.dumps(report.to_dict(), indent=1))
            return
        _instance_tables(report.results, per_class=per_class)
        for note in report.notes:
            typer.echo(f"note: {note}")

    @ev.command("files")
    def files(
        predictions: Annotated[
            str, typer.Argument(help="A <scene>.npz / ScanNet <scene>.txt file or a folder of them.")
        ],
        gt: Annotated[str, typer.Option("--gt", help=GT_HELP)],
        vocabulary: Annotated[str, typer.Option("--vocabulary", help=VOCAB_HELP)] = "scannet200",
        exclude: Annotated[list[str] | None, typer.Option("--exclude", help=EXCLUDE_HELP)] = None,
        min_region_size: Annotated[
            int,
            typer.Option("--min-region-size", help="GT regions and predictions under this many points are ignored."),
        ] = 100,
        per_class: Annotated[
            bool, typer.Option("--per-class/--no-per-class", help="Print the per-class table.")
        ] = True,
        json_out: Annotated[bool, typer.Option("--json", help="Print the full result as JSON.")] = False,
        plot: PlotOpt = None,
    ) -> None:
        """Score another system's predictions (points x masks, class ids, scores) with the same protocol."""
        from om3db.evaluate import instance_ap, load_gt, load_predictions

        predictions, gt = local_path(predictions, "PREDICTIONS"), local_path(gt, "--gt")
        plot = _check_plot(local_path(plot, "--plot"))
        if min_region_size < 0:
            raise ConfigError(f"--min-region-size {min_region_size}: must be >= 0 (points)")
        vocab = _vocabulary(vocabulary, exclude)
        result = instance_ap(
            load_predictions(predictions), load_gt(gt), vocabulary=vocab, min_region_size=min_region_size
        )
        if plot is not None:
            from om3db.plots import plot_instance

            _wrote(plot_instance({"files": result}, plot, splits=vocab.splits))
        if json_out:
            typer.echo(json.dumps(result.to_dict(), indent=1))
            return
        _instance_tables({"files": result}, per_class=per_class)

    @ev.command("semantic")
    def semantic(
        gt: Annotated[str, typer.Option("--gt", help=GT_HELP)],
        db: DbOpt = None,
        vocabulary: Annotated[str, typer.Option("--vocabulary", help=VOCAB_HELP)] = "scannet200",
        novel: Annotated[
            str | None,
            typer.Option(
                "--novel", help="Novel class names (JSON list or one per line): adds base/novel mIoU and hIoU."
            ),
        ] = None,
        template: Annotated[
            str, typer.Option("--template", help="Prompt template; {} is the class name.")
        ] = DEFAULT_TEMPLATE,
        aggregation: Annotated[str, typer.Option("--aggregation", help="mean | max.")] = "mean",
        fill: Annotated[
            str,
            typer.Option(
                "--fill", help="none: points in no instance stay unlabelled; nearest: nearest labelled point's class."
            ),
        ] = "none",
        export: Annotated[
            str | None, typer.Option("--export", help="Write per-point labels to this folder, one file per scan.")
        ] = None,
        export_format: Annotated[
            str, typer.Option("--format", help="npy (int labels, -1 unlabelled) or ply (coloured per class).")
        ] = "npy",
        json_out: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
        plot: PlotOpt = None,
    ) -> None:
        """Per-point labels from instance labels: mIoU over the vocabulary, hIoU over a base / novel split."""
        from om3db import connect
        from om3db.evaluate import load_vocabulary, semantic_from_database
        from om3db.evaluate.from_database import check_export_dir

        gt, plot = local_path(gt, "--gt"), _check_plot(local_path(plot, "--plot"))
        novel, export = local_path(novel, "--novel"), local_path(export, "--export")
        check_template(template)
        _choices([aggregation], "--aggregation", ("mean", "max"))
        _choices([fill], "--fill", ("none", "nearest"))
        _choices([export_format], "--format", ("npy", "ply"))
        if export is not None:
            check_export_dir(export)
        vocab = load_vocabulary(vocabulary, exclude=())  # semantic IoU counts every class
        database = connect(db, create=False)
        try:
            with _Bars(enabled=not json_out) as bars:
                report = semantic_from_database(
                    database,
                    gt,
                    vocab,
                    template=template,
                    aggregation=aggregation,
                    fill=fill,
                    novel=novel,
                    export=export,
                    export_format=export_format,
                    progress=bars.update,
                )
        finally:
            database.close()
        if plot is not None:
            from om3db.plots import plot_semantic

            _wrote(plot_semantic(report.result, plot, pred=report.predicted, truth=report.truth))
        if json_out:
            typer.echo(json.dumps(report.to_dict(), indent=1))
            return
        from rich.console import Console
        from rich.table import Table

        res = report.result
        sem = getattr(res, "semantic", res)
        table = Table(title="Semantic IoU (%) (classes with ground truth or predictions)")
        table.add_column("class")
        table.add_column("IoU", justify="right")
        for name, iou in sem.per_class.items():
            if iou == iou:
                table.add_row(name, _fmt(iou))
        console = Console()
        console.print(table)
        line = f"mIoU {_fmt(sem.miou)}"
        if sem is not res:
            line += f"  base {_fmt(res.base_miou)}  novel {_fmt(res.novel_miou)}  hIoU {_fmt(res.hiou)}"
        console.print(line)
        for p in report.exported:
            typer.echo(f"wrote {p}")
