"""Database commands: ingest, search, scans, show, export, rm, reindex, info, db upgrade.

Thin: parse options, call one public API function, render (rich tables, or JSON with ``--json``).
Heavy packages load inside the commands so ``om3db --help`` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from om3db.query import DEFAULT_TEMPLATE

from .options import DbOpt, JsonOpt, local_path, table
from .options import echo_json as _echo_json

_table = table


def _connect(db: Path | None, *, create: bool = False):
    """Open the database; only ``ingest`` and ``db upgrade`` may create one."""
    import om3db

    return om3db.connect(db, create=create)


def _model(spec: str | None):
    """'none' disables an optional model; anything else is a hub id or a directory."""
    if spec is None:
        return None
    return False if spec.lower() == "none" else spec


def _fmt(v: tuple) -> str:
    return "(" + ", ".join(f"{x:.2f}" for x in v) + ")"


def _hits_table(title: str, hits) -> None:
    _table(
        title,
        ["#", "instance", "scan", "score", "points", "centroid", "frame", "crop box"],
        [
            [i, h.instance_id, h.scan, f"{h.score:.4f}", h.point_count, _fmt(h.centroid), h.frame_id, h.crop_box]
            for i, h in enumerate(hits, 1)
        ],
    )


def _query(
    db,
    text,
    image,
    *,
    k,
    aggregation,
    scan=None,
    min_points=0,
    region=None,
    region_mode="intersects",
    min_score=None,
    template=DEFAULT_TEMPLATE,
    model=None,
    space=None,
    with_points=False,
):
    """The CLI's search options as one om3db.Query."""
    from om3db.errors import ConfigError
    from om3db.query import parse_region

    if (text is None) == (image is None):
        raise ConfigError("give a TEXT query or --image FILE (one of them)")
    return (
        db.query(text=text, image=image)
        .where(
            scans=scan or None,
            min_points=min_points,
            region=parse_region(region) if region else None,
            region_mode=region_mode,
            min_score=min_score,
        )
        .limit(k)
        .aggregate(aggregation)
        .with_points(with_points)
        .using(model, space=space, template=template)
    )


def _scenes_table(scenes) -> None:
    rows = []
    for m in scenes:
        for h in m.hits:
            ev = h.evidence
            rows.append([
                m.scan, f"{h.score:.4f}", h.subject.instance_id, "" if h.object is None else h.object.instance_id,
                h.relation or "", "" if not ev else f"{ev['distance']:.3f}", "" if not ev else f"{ev['gap']:.3f}",
                "" if not ev else f"{ev['overlap']:.2f}", h.subject.frame_id,
            ])  # fmt: skip
    _table(
        f"{len(scenes)} scans",
        ["scan", "score", "subject", "object", "relation", "distance", "gap", "overlap", "frame"],
        rows,
    )


def _read_phrase(text, image, rel: list, without: list):
    """The subject text, relations, excluded phrases and the phrase's reading (None: not read) of a
    TEXT argument: "a mug on a table" is read as subject 'a mug', relation ('on', 'a table')."""
    from om3db.relations.query import parse_phrase

    # a blank text is the query's own error ("the text query is empty"), not the phrase grammar's
    reading = parse_phrase(text) if text is not None and image is None and text.strip() else None
    rel = list(rel)
    if reading is not None and reading.relation is not None:
        rel.append((reading.relation, reading.object))
    if reading is not None and (reading.relation is not None or reading.without):
        text = reading.subject
    excluded = [*(reading.without if reading is not None else ()), *without]
    return text, rel, excluded, reading


def _subjects(scenes) -> list:
    """The subject hits of a relational query's scans, best first, each instance once."""
    seen, hits = set(), []
    for m in scenes:
        for h in m.hits:
            if h.subject.instance_id not in seen:
                seen.add(h.subject.instance_id)
                hits.append(h.subject)
    return hits


def _relational(q, rel: list, excluded: list, *, within=None, count_at_least=None, match=None):
    """The query with the relational options given (the query refuses those that need a relation)."""
    import dataclasses

    from om3db.errors import ConfigError

    if len(rel) > 1:
        raise ConfigError(f"one relation per query, got {', '.join(n for n, _ in rel)}")
    if rel:
        q = q.related(*rel[0])
    if within is not None:
        q = q.within(within)
    for t in excluded:
        q = q.without(t)
    if count_at_least is not None:
        q = q.count_at_least(count_at_least)
    if match is None:
        return q
    q = dataclasses.replace(q, match=match)  # the query checks its range
    if not q.is_relational:  # (the query cannot tell a --match 0.5 from its default)
        raise ConfigError(
            f"--match {match:g} applies only to spatial queries (a phrase such as 'a mug on a table', or --on, "
            "--near, ..., --without, --count-at-least): a plain search ranks every instance. Drop --match or add a relation"
        )
    return q


def register(app: typer.Typer) -> None:
    db_app = typer.Typer(name="db", help="Database maintenance (schema upgrades).", no_args_is_help=True)
    app.add_typer(db_app, name="db")

    @app.command()
    def ingest(
        scans_dir: Annotated[str, typer.Argument(help="A scan folder, or a folder of scans (searched recursively).")],
        db: DbOpt = None,
        siglip: Annotated[
            Optional[str],
            typer.Option(
                "--siglip",
                help="SigLIP hub id or local directory. Default: the database's model, else google/siglip-so400m-patch14-384.",
            ),
        ] = None,
        dinov2: Annotated[
            Optional[str],
            typer.Option(
                "--dinov2",
                help="DINOv2 hub id or local directory, or 'none' to skip image-image vectors. Default: the database's model, else facebook/dinov2-large.",
            ),
        ] = None,
        sam: Annotated[
            Optional[str],
            typer.Option(
                "--sam",
                help="SAM for SAM-refined crops: a segment-anything checkpoint (.pth) or a transformers SAM hub "
                "id / directory; 'none' for box crops. Default: the --models preset's, else none.",
            ),
        ] = None,
        frame_step: Annotated[int, typer.Option("--frame-step", help="Use every n-th frame.")] = 10,
        dtype: Annotated[
            str,
            typer.Option(
                "--dtype",
                help="Compute dtype of the encoders and SAM: auto (bfloat16 only where the CPU computes it "
                "natively, or on CUDA), float32, bfloat16, float16.",
            ),
        ] = "auto",
        models: Annotated[
            Optional[str],
            typer.Option(
                "--models",
                help="Model preset for a new database: full (SigLIP-SO400M, DINOv2-L, SAM ViT-H) or cpu "
                "(SigLIP-B/16, DINOv2-S, box crops). Explicit --siglip / --dinov2 / --sam win.",
            ),
        ] = None,
        capture_format: Annotated[
            str,
            typer.Option(
                "--format",
                help="Capture format: auto (recognised from each folder), scannet, nerfstudio, record3d, "
                "arkitscenes, replica, scannetpp, scanner3d.",
            ),
        ] = "auto",
        pose_scale: Annotated[
            Optional[float],
            typer.Option(
                "--pose-scale",
                help="Metres per pose unit of nerfstudio captures with non-metric (COLMAP) poses; needed without depth.",
            ),
        ] = None,
        force: Annotated[bool, typer.Option("--force", help="Re-ingest scans even when unchanged.")] = False,
        refine_masks: Annotated[
            bool,
            typer.Option(
                "--refine-masks",
                help="MOSS: grow / trim masks from mask files with the superpoints their 2D masks (masks2d/ or SAM) cover.",
            ),
        ] = False,
        diverse: Annotated[
            bool, typer.Option("--diverse", help="OpenMask3D++ diverse views instead of the top-k most visible.")
        ] = False,
        ray: Annotated[
            Optional[str],
            typer.Option(
                "--ray",
                help="Run the per-scan work on Ray: 'local' starts Ray on this machine; else the address of a cluster (auto, HOST:PORT, ray://HOST:PORT). This process still commits scan by scan.",
            ),
        ] = None,
        ray_workers: Annotated[
            Optional[int],
            typer.Option("--ray-workers", help="Ray actors holding the models. Default: one per GPU, else per CPU."),
        ] = None,
        json_out: JsonOpt = False,
    ) -> None:
        """Ingest every scan below SCANS_DIR (unchanged scans are skipped; each scan commits atomically).

        Scans without a mask file get om3db's own proposals from masks2d/<frame>.png or SAM automatic masks;
        scans without depth/ get depth rendered from their mesh."""
        from om3db.ingest import IngestConfig, check_ingest_request

        config = IngestConfig(frame_step=frame_step, refine_masks=refine_masks, diverse=diverse)
        scans_path = local_path(scans_dir, "SCANS_DIR")
        sam_spec = None if sam is None else False if sam.lower() == "none" else local_path(sam, "--sam")
        for name, value in (("--siglip", siglip), ("--dinov2", dinov2)):
            local_path(value, name)  # a hub id or a folder: neither is empty nor a URL
        from om3db.captures.base import check_pose_scale
        from om3db.errors import ConfigError

        check_pose_scale(pose_scale)  # a bad --pose-scale is refused before the database is created
        check_ingest_request(scans_dir, format=capture_format, dtype=dtype, models=models)  # likewise
        if ray_workers is not None and ray is None:
            raise ConfigError(f"--ray-workers {ray_workers}: needs --ray (local, or the address of a Ray cluster)")
        if ray_workers is not None and ray_workers < 1:
            raise ConfigError(f"--ray-workers {ray_workers}: must be >= 1 (Ray actors)")
        if ray is not None:
            from om3db.distributed import check_ray_address

            check_ray_address(ray)  # before the database is created
        with _connect(db, create=True) as database, _Bars(enabled=not json_out) as bars:
            out = database.ingest(
                scans_path,
                config=config,
                siglip=_model(siglip),
                dinov2=_model(dinov2),
                sam=sam_spec,
                force=force,
                format=capture_format,
                pose_scale=pose_scale,
                dtype=dtype,
                models=models,
                progress=bars.update,
                ray=ray,
                ray_workers=ray_workers,
            )
        if json_out:
            _echo_json([o.to_dict() for o in out])
        else:
            _table(
                f"ingest into {database.path}",
                ["scan", "status", "instances", "seconds"],
                [[o.scan, o.status, o.instances, f"{o.seconds:.1f}"] for o in out],
            )
            for o in out:  # a scan that stored nothing is committed, but the user should know why
                reason = o.report.empty_reason() if o.report is not None else None
                if reason:
                    typer.echo(f"Note: {o.scan}: no instance stored: {reason}", err=True)
        failed = [o for o in out if o.status == "failed"]
        if failed:  # the other scans are committed; these are not
            typer.echo(
                f"Error: {len(failed)} scan(s) failed: " + "; ".join(f"{o.scan}: {o.error}" for o in failed), err=True
            )
            raise typer.Exit(1)

    @app.command()
    def search(
        text: Annotated[Optional[str], typer.Argument(help="What to look for, e.g. 'mug'.")] = None,
        image: Annotated[
            Optional[str], typer.Option("--image", help="Search by an example photo instead (DINOv2).")
        ] = None,
        db: DbOpt = None,
        k: Annotated[int, typer.Option("-k", "--k", help="Number of results.")] = 10,
        aggregation: Annotated[
            str, typer.Option("--aggregation", help="mean (instance vector) or max (best view).")
        ] = "mean",
        scan: Annotated[Optional[list[str]], typer.Option("--scan", help="Only this scan (repeatable).")] = None,
        min_points: Annotated[int, typer.Option("--min-points", help="Minimum instance point count.")] = 0,
        region: Annotated[
            Optional[str], typer.Option("--region", help="Box xmin,ymin,zmin,xmax,ymax,zmax in metres.")
        ] = None,
        region_mode: Annotated[
            str, typer.Option("--region-mode", help="intersects (bbox overlaps) or centroid (inside).")
        ] = "intersects",
        min_score: Annotated[
            Optional[float], typer.Option("--min-score", help="Drop hits with a lower similarity.")
        ] = None,
        template: Annotated[
            str, typer.Option("--template", help="Prompt template for text queries.")
        ] = DEFAULT_TEMPLATE,
        model: Annotated[
            Optional[str],
            typer.Option(
                "--model", help="Query encoder (hub id or directory). Default: the model the space was built with."
            ),
        ] = None,
        space: Annotated[
            Optional[str],
            typer.Option("--space", help="Vector space: siglip (text default) or dinov2 (image default)."),
        ] = None,
        with_points: Annotated[bool, typer.Option("--with-points", help="Include point indices (JSON).")] = False,
        on: Annotated[
            Optional[str], typer.Option("--on", help="Only subjects resting on this (a noun phrase).")
        ] = None,
        near: Annotated[Optional[str], typer.Option("--near", help="Only subjects near this (see --within).")] = None,
        inside: Annotated[Optional[str], typer.Option("--inside", help="Only subjects inside this.")] = None,
        above: Annotated[Optional[str], typer.Option("--above", help="Only subjects above this.")] = None,
        below: Annotated[Optional[str], typer.Option("--below", help="Only subjects below this.")] = None,
        next_to: Annotated[Optional[str], typer.Option("--next-to", help="Only subjects next to this.")] = None,
        within: Annotated[
            Optional[float], typer.Option("--within", help="Metres: the relation's distance at most this.")
        ] = None,
        without: Annotated[
            Optional[list[str]], typer.Option("--without", help="Drop scans holding a match for this (repeatable).")
        ] = None,
        count_at_least: Annotated[
            Optional[int], typer.Option("--count-at-least", help="Only scans with at least N matching subjects.")
        ] = None,
        match: Annotated[
            Optional[float],
            typer.Option(
                "--match", help="Spatial queries: a noun phrase matches at this fraction of its best similarity (0.5)."
            ),
        ] = None,
        explain: Annotated[
            bool, typer.Option("--explain", help="Say how the phrase was read (subject, relation, object).")
        ] = False,
        json_out: JsonOpt = False,
    ) -> None:
        """Find instances by text (SigLIP) or by an example image (DINOv2) across all scans.

        Spatial phrases ("a mug on a table", "a desk but no chair") or --on/--near/... return scans."""
        image_path = local_path(image, "--image")
        rel = [(n, t) for n, t in (("on", on), ("near", near), ("in", inside), ("above", above), ("below", below),
                                   ("next_to", next_to)) if t is not None]  # fmt: skip
        text, rel, excluded, reading = _read_phrase(text, image_path, rel, without or [])
        if explain and reading is not None:
            typer.echo(
                "read as: " + type(reading)(text, *(rel[0] if rel else (None, None)), tuple(excluded)).explain(),
                err=json_out,
            )
        with _connect(db) as database:
            q = _query(database, text, image_path, k=k, aggregation=aggregation, scan=scan, min_points=min_points,
                       region=region, region_mode=region_mode, min_score=min_score, template=template,
                       model=model, space=space, with_points=with_points)  # fmt: skip
            q = _relational(q, rel, excluded, within=within, count_at_least=count_at_least, match=match)
            found = q.to_list()
        if q.is_relational:
            if json_out:
                _echo_json([m.to_dict() for m in found])
                return
            _scenes_table(found)
            return
        if json_out:
            _echo_json([h.to_dict() for h in found])
            return
        _hits_table(f"{len(found)} hits for {text if text is not None else image_path}", found)

    @app.command()
    def scans(db: DbOpt = None, json_out: JsonOpt = False) -> None:
        """List the scans in the database."""
        with _connect(db) as database:
            rows = database.scans()
        if json_out:
            _echo_json([s.to_dict() for s in rows])
            return
        _table(
            f"{len(rows)} scans in {database.path}",
            ["scan", "format", "instances", "frames", "points", "masks", "updated", "path"],
            [
                [s.name, s.source_format, s.instances, s.frame_count, s.num_points, s.masks, s.updated_at, s.path]
                for s in rows
            ],
        )

    @app.command(context_settings={"ignore_unknown_options": True})  # so "-1" reaches the id check
    def show(
        instance: Annotated[int, typer.Argument(help="Instance id (from search).")],
        db: DbOpt = None,
        json_out: JsonOpt = False,
    ) -> None:
        """Show one instance: geometry, views and crop boxes."""
        with _connect(db) as database:
            inst = database.instance(instance)
            geometry = database.instance_geometry(instance)
            gravity = database.gravity(inst.scan)
        if json_out:
            _echo_json({**inst.to_dict(), "gravity": gravity, "geometry": geometry})
            return
        typer.echo(
            f"instance {inst.id} of scan {inst.scan} (mask {inst.mask_index}, {inst.point_count} points, "
            f"score {inst.score:.3f})"
        )
        typer.echo(f"bbox {_fmt(inst.bbox_min)} - {_fmt(inst.bbox_max)}, centroid {_fmt(inst.centroid)}")
        if gravity is not None and geometry is not None:
            typer.echo(
                f"up axis {_fmt(gravity['up'])} ({gravity['source']}); gravity frame: z {_fmt(geometry['z_range'])}, "
                f"box {_fmt(geometry['box']['extent'])} yaw {geometry['yaw']:.2f}, footprint "
                f"{geometry['footprint_area']:.3f} m2, volume {geometry['volume']:.4f} m3"
            )
        _table(
            "views",
            ["frame", "visible pixels", "crop boxes", "inlier"],
            [[v.frame_id, v.visible_pixels, v.crop_boxes, v.inlier] for v in inst.views],
        )

    @app.command()
    def export(
        text: Annotated[
            Optional[str],
            typer.Argument(help="Text query whose hits to export (a spatial phrase exports its subjects)."),
        ] = None,
        out: Annotated[str, typer.Option("--out", help="Folder to write into (created).")] = "om3db-export",
        image: Annotated[Optional[str], typer.Option("--image", help="Image query instead of text.")] = None,
        db: DbOpt = None,
        k: Annotated[int, typer.Option("-k", "--k", help="Number of hits (spatial phrases: of scans).")] = 5,
        aggregation: Annotated[str, typer.Option("--aggregation", help="mean or max.")] = "mean",
        scan: Annotated[Optional[list[str]], typer.Option("--scan", help="Only this scan (repeatable).")] = None,
        json_out: JsonOpt = False,
    ) -> None:
        """Search, then write each scan's points as PLY with the hits highlighted and each hit's best crop as PNG."""
        out_path, image_path = local_path(out, "--out"), local_path(image, "--image")
        text, rel, excluded, _ = _read_phrase(text, image_path, [], [])
        with _connect(db) as database, _Bars(enabled=not json_out) as bars:
            bars.busy("search")
            q = _relational(_query(database, text, image_path, k=k, aggregation=aggregation, scan=scan), rel, excluded)
            found = q.to_list()
            hits = _subjects(found) if q.is_relational else found
            bars.busy(f"export {len(hits)} hits")
            files = database.export(hits, out_path)
        if json_out:
            data = {"hits": [h.to_dict() for h in hits], "files": [str(f) for f in files]}
            if q.is_relational:
                data["scenes"] = [m.to_dict() for m in found]
            _echo_json(data)
            return
        for f in files:
            typer.echo(f"wrote {f}")

    @app.command("rm")
    def rm(
        scan: Annotated[str, typer.Argument(help="Scan name (see om3db scans).")],
        db: DbOpt = None,
        json_out: JsonOpt = False,
    ) -> None:
        """Remove a scan, its instances and its vectors."""
        with _connect(db) as database:
            n = database.remove(scan)
        if json_out:
            _echo_json({"scan": scan, "instances_removed": n})
        else:
            typer.echo(f"removed scan {scan} ({n} instances)")

    @app.command()
    def relations(
        scan: Annotated[str, typer.Argument(help="Scan name (see om3db scans).")],
        db: DbOpt = None,
        json_out: JsonOpt = False,
    ) -> None:
        """List a scan's spatial relations (subject, relation, object, score, evidence) and its up axis."""
        with _connect(db) as database:
            rows = database.relations(scan)
            gravity = database.gravity(scan)
        if json_out:
            _echo_json({"scan": scan, "gravity": gravity, "relations": rows})
            return
        typer.echo(f"up axis {_fmt(gravity['up'])} ({gravity['source']})")
        _table(
            f"{len(rows)} relations in {scan}",
            ["subject", "relation", "object", "score", "distance", "gap", "overlap"],
            [
                [
                    r["subject_id"],
                    r["relation"],
                    r["object_id"],
                    f"{r['score']:.3f}",
                    f"{r['distance']:.3f}",
                    f"{r['gap']:.3f}",
                    f"{r['overlap']:.2f}",
                ]
                for r in rows
            ],  # fmt: skip
        )

    @app.command()
    def reindex(db: DbOpt = None, json_out: JsonOpt = False) -> None:
        """Rebuild every vector index from the database (re-choosing exact or IVF search)."""
        with _connect(db) as database, _Bars(enabled=not json_out) as bars:
            bars.busy("reindex")
            spaces = database.reindex()
            kinds = database.index_kinds()
            built, failed = database.relations_built, database.relations_failed
        if json_out:
            _echo_json({"rebuilt": spaces, "index": kinds, "relations_built": built, "relations_failed": failed})
        else:
            typer.echo(f"rebuilt {len(spaces)} indexes: " + ", ".join(f"{s} ({kinds[s]})" for s in spaces))
            if built:
                typer.echo(f"built spatial relations of {len(built)} scans: {', '.join(built)}")
        for scan, why in failed.items():  # the indexes and the other scans' relations are built; these are not
            typer.echo(f"Error: no spatial relations for scan {scan}: {why}", err=True)
        if failed:
            raise typer.Exit(1)

    @app.command()
    def check(db: DbOpt = None, json_out: JsonOpt = False) -> None:
        """Check the database without changing it: SQLite integrity, every stored blob, every vector index.
        Exit status 1 when something is damaged (each problem is printed with its repair)."""
        import om3db

        with om3db.connect(db, create=False, repair=False) as database:  # look, change nothing
            report = database.check()
        if json_out:
            _echo_json(report.to_dict())
        else:
            typer.echo(
                f"checked {report.scans} scans, {report.instances} instances, {report.vectors} vectors, "
                f"{report.indexes} indexes, {report.relations} relations: "
                + ("ok" if report.ok else f"{len(report.problems)} problems")
            )
            for p in report.problems:
                typer.echo(str(p))
        if not report.ok:
            raise typer.Exit(1)

    @app.command()
    def info(db: DbOpt = None, json_out: JsonOpt = False) -> None:
        """Versions, faiss build, GPUs and database counts."""
        with _connect(db) as database:
            data = database.info()
        if json_out:
            _echo_json(data)
            return
        _table("om3db", ["key", "value"], [[k, v] for k, v in data.items() if k != "spaces"])
        _table(
            "vector spaces",
            ["space", "level", "model", "dim", "vectors", "index", "queries use"],
            [
                [s["name"], s["level"], s["model_id"], s["dim"], s["vectors"], s["index"], s["query_encoder"]]
                for s in data["spaces"]
            ],
        )

    @db_app.command("upgrade")
    def db_upgrade(db: DbOpt = None, json_out: JsonOpt = False) -> None:
        """Upgrade the database schema to this version of om3db."""
        from om3db.database import upgrade_database

        before, after = upgrade_database(db)
        if json_out:
            _echo_json({"from": before, "to": after})
        elif before == after:
            typer.echo(f"database schema already at revision {after}")
        else:
            typer.echo(f"upgraded database schema from revision {before} to {after}")


class _Bars:
    """Rich progress bars on stderr fed by the library's progress(scan, stage, done, total) callback;
    none when stderr is not a terminal (logs, pipes, tests) or JSON is asked for."""

    def __init__(self, *, enabled: bool) -> None:
        import sys

        self.enabled = enabled and sys.stderr.isatty()
        self._tasks: dict[str, int] = {}
        self._progress = None

    def __enter__(self) -> _Bars:
        if self.enabled:
            from rich.console import Console
            from rich.progress import Progress

            self._progress = Progress(console=Console(stderr=True), transient=True)
            self._progress.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self._progress.stop()

    def busy(self, label: str) -> None:
        """A bar without a total (pulsing) for a step the library reports no progress of."""
        if self._progress is None:
            return
        if "busy" not in self._tasks:
            self._tasks["busy"] = self._progress.add_task(label, total=None)
        self._progress.update(self._tasks["busy"], description=label)

    def update(self, scan: str, stage: str, done: int, total: int) -> None:
        if self._progress is None:
            return
        key = "scans" if stage == "scans" else stage
        if key not in self._tasks:
            self._tasks[key] = self._progress.add_task(key, total=total)
        label = "scans" if stage == "scans" else f"{scan} {stage}"
        self._progress.update(self._tasks[key], completed=done, total=total, description=label)
