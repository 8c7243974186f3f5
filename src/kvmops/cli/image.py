"""`kvmops image` commands: argument handling and printing over
:mod:`kvmops.services.images`.

An existing image is read as the format named with ``--format``, else the one kvmops
recorded when it wrote the image, else raw: never a format guessed from its bytes."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any

import typer

from kvmops.cli.common import from_cwd
from kvmops.cli.output import info, percent_progress, print_fields, print_json, print_table, warn
from kvmops.services import images
from kvmops.services.caller import Caller
from kvmops.services.images import CheckResult, ImageInfo, SnapshotInfo
from kvmops.sizes import format_size

app = typer.Typer(help="Create, inspect, convert and snapshot disk images.", no_args_is_help=True)
snapshot_app = typer.Typer(help="Internal qcow2 snapshots.", no_args_is_help=True)
app.add_typer(snapshot_app, name="snapshot")


PathArg = Annotated[Path, typer.Argument(help="image file", callback=from_cwd)]
JsonOpt = Annotated[bool, typer.Option("--json", help="print JSON")]
FormatOpt = Annotated[
    str | None,
    typer.Option("--format", "-f", help="format of the image (raw or qcow2); default: the "
                 "format kvmops recorded when it wrote the image, else raw (never guessed)"),
]


def _size(num: int | None) -> str | None:
    return None if num is None else f"{format_size(num)} ({num} bytes)"


def _info_fields(image: ImageInfo) -> list[tuple[str, Any]]:
    fields: list[tuple[str, Any]] = [
        ("file", image.filename),
        ("format", image.format),
        ("virtual size", _size(image.virtual_size)),
        ("disk size", _size(image.actual_size)),
    ]
    if image.cluster_size is not None:
        fields.append(("cluster size", _size(image.cluster_size)))
    if image.backing_filename:
        fields.append(("backing file", image.full_backing_filename or image.backing_filename))
        fields.append(("backing format", image.backing_format))
    if image.compat:
        fields.append(("compat", image.compat))
    fields.append(("snapshots", len(image.snapshots)))
    fields.append(("dirty", "yes" if image.dirty else "no"))
    if image.corrupt is not None:
        fields.append(("corrupt", "yes" if image.corrupt else "no"))
    return fields


def _snapshot_rows(snapshots: Iterable[SnapshotInfo]) -> list[tuple[Any, ...]]:
    return [
        (
            s.id,
            s.name,
            format_size(s.vm_state_size),
            s.date.astimezone().strftime("%Y-%m-%d %H:%M:%S"),
            f"{s.vm_clock_seconds:.3f}s",
        )
        for s in snapshots
    ]


@app.command()
def create(
    path: PathArg,
    size: Annotated[
        str | None, typer.Option("--size", "-s", help="virtual size, e.g. 10G")
    ] = None,
    fmt: Annotated[str, typer.Option("--format", "-f", help="image format")] = "qcow2",
    backing: Annotated[
        Path | None, typer.Option("--backing", "-b", help="backing file (makes an overlay)")
    ] = None,
    backing_format: Annotated[
        str | None, typer.Option("--backing-format", "-F", help="backing file format")
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Create a new disk image (never overwrites)."""
    image = images.create(Caller.local(), path, size, fmt, backing=backing,
                          backing_fmt=backing_format)
    if json_out:
        print_json(image)
    else:
        info(f"created {image.filename} ({image.format}, {format_size(image.virtual_size)})")


@app.command("info")
def info_cmd(
    path: PathArg,
    fmt: FormatOpt = None,
    json_out: JsonOpt = False,
    backing_chain: Annotated[
        bool, typer.Option("--backing-chain", help="also show the backing images")
    ] = False,
) -> None:
    """Show format, sizes, backing file and snapshots of an image."""
    image = images.info(Caller.local(), path, fmt, backing_chain=backing_chain)
    if json_out:
        print_json(image)
        return
    for note in image.notes:
        warn(note)
    print_fields(_info_fields(image))
    for below in image.backing_chain:
        info("")
        print_fields(_info_fields(below))


@app.command()
def check(path: PathArg, fmt: FormatOpt = None, json_out: JsonOpt = False) -> None:
    """Check an image's consistency (exits non-zero when it is corrupt)."""
    result: CheckResult = images.check(Caller.local(), path, fmt)
    if json_out:
        print_json(result)
    else:
        print_fields(
            [
                ("file", result.filename),
                ("format", result.format),
                ("status", result.status),
                ("corruptions", result.corruptions),
                ("leaked clusters", result.leaks),
                ("allocated clusters", result.allocated_clusters),
                ("total clusters", result.total_clusters),
                ("image end offset", result.image_end_offset),
            ]
        )
    if result.status == "leaks":
        warn(f"{result.filename} has {result.leaks} leaked cluster(s) (wasted space, no data loss)")
    error = result.error()
    if error is not None:
        raise error


@app.command()
def convert(
    src: Annotated[Path, typer.Argument(help="source image", callback=from_cwd)],
    dst: Annotated[Path, typer.Argument(help="new image", callback=from_cwd)],
    src_fmt: FormatOpt = None,
    out_fmt: Annotated[str, typer.Option("-O", "--output-format", help="format of DST")] = "qcow2",
    compress: Annotated[bool, typer.Option("--compress", "-c", help="compress (qcow2)")] = False,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="replace DST if it exists")
    ] = False,
    json_out: JsonOpt = False,
) -> None:
    """Convert SRC into a new image DST, showing progress."""
    with percent_progress(transient=json_out) as bar:
        task = bar.add_task(f"converting {src.name}", total=100)
        image = images.convert(
            Caller.local(), src, dst, out_fmt, source_fmt=src_fmt, compress=compress,
            overwrite=overwrite, progress=lambda pct: bar.update(task, completed=pct),
        )
        bar.update(task, completed=100)
    if json_out:
        print_json(image)
    else:
        for note in image.notes:
            warn(note)
        info(f"converted {src} to {image.filename} ({image.format})")


# ignore_unknown_options: lets "-1G" through as SIZE instead of an unknown option.
@app.command(context_settings={"ignore_unknown_options": True})
def resize(
    path: PathArg,
    size: Annotated[str, typer.Argument(help="new size (20G) or change (+1G, -512M)")],
    fmt: FormatOpt = None,
    shrink: Annotated[
        bool, typer.Option("--shrink", help="allow making the image smaller")
    ] = False,
) -> None:
    """Grow (or with --shrink, shrink) an image's virtual size."""
    result = images.resize(Caller.local(), path, size, fmt, shrink=shrink)
    if result.changed:
        info(f"resized {result.path} from {format_size(result.old_size)} "
             f"to {format_size(result.new_size)}")
    else:
        info(f"{result.path} is already {format_size(result.new_size)}; nothing to do")


@app.command()
def rebase(
    path: PathArg,
    backing: Annotated[str, typer.Argument(help="new backing file ('' for none)")],
    fmt: FormatOpt = None,
    unsafe: Annotated[
        bool, typer.Option("--unsafe", help="only rewrite the reference, copy no data")
    ] = False,
    backing_format: Annotated[
        str | None, typer.Option("--backing-format", "-F", help="format of BACKING")
    ] = None,
) -> None:
    """Point an image at a different backing file."""
    image = images.rebase(Caller.local(), path, backing or None, fmt, unsafe=unsafe,
                          backing_fmt=backing_format)
    target = image.full_backing_filename or image.backing_filename or "no backing file"
    info(f"rebased {image.filename} onto {target}")


@app.command()
def commit(
    path: PathArg,
    fmt: FormatOpt = None,
    base: Annotated[
        Path | None, typer.Option("--base", "-b", help="commit down to this image in the chain")
    ] = None,
) -> None:
    """Merge an overlay's changes into its backing file."""
    target = images.commit(Caller.local(), path, fmt, base=base)
    info(f"committed {path} into {target}")


# Snapshots -----------------------------------------------------------------


@snapshot_app.command("create")
def snapshot_create(
    path: PathArg, name: Annotated[str, typer.Argument(help="snapshot name")]
) -> None:
    """Take an internal snapshot of a qcow2 image."""
    snap = images.snapshot_create(Caller.local(), path, name)
    info(f"created snapshot '{snap.name}' (id {snap.id}) of {path}")


@snapshot_app.command("list")
def snapshot_list(path: PathArg, json_out: JsonOpt = False) -> None:
    """List the internal snapshots of a qcow2 image."""
    snapshots = images.snapshot_list(Caller.local(), path)
    if json_out:
        print_json(snapshots)
    elif not snapshots:
        info(f"{path} has no snapshots")
    else:
        print_table(("ID", "NAME", "VM STATE", "DATE", "VM CLOCK"), _snapshot_rows(snapshots))


@snapshot_app.command("apply")
def snapshot_apply(
    path: PathArg, name: Annotated[str, typer.Argument(help="snapshot name")]
) -> None:
    """Revert a qcow2 image to an internal snapshot."""
    snap = images.snapshot_apply(Caller.local(), path, name)
    info(f"reverted {path} to snapshot '{snap.name}'")


@snapshot_app.command("delete")
def snapshot_delete(
    path: PathArg, name: Annotated[str, typer.Argument(help="snapshot name")]
) -> None:
    """Delete an internal snapshot."""
    snap = images.snapshot_delete(Caller.local(), path, name)
    info(f"deleted snapshot '{snap.name}' of {path}")
