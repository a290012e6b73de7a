"""``metactl data``: fetch, preprocess, inspect datasets and draw fixed episode files."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from metactl.cli.common import MirrorOption, RootOption, human_size, print_json, say

app = typer.Typer(help="Download, verify and preprocess datasets; draw episode files.",
                  no_args_is_help=True)

DatasetArgument = Annotated[str, typer.Argument(help="Dataset name, e.g. omniglot.")]
SchemeOption = Annotated[
    str | None,
    typer.Option("--scheme", help="Split scheme: vinyals (default) or background.",
                 show_default=False),
]
OldSchemeOption = Annotated[
    str | None,
    typer.Option("--split", help="Deprecated spelling of --scheme.", hidden=True,
                 show_default=False),
]


def _scheme(scheme: str | None, old_spelling: str | None) -> str | None:
    """``--scheme``, or the deprecated ``--split`` that used to name the scheme here."""
    if old_spelling is not None:
        say("note: --split here is now --scheme (--split names train, val or test in every "
            "command); the old spelling will be removed")
    return scheme or old_spelling
SizeOption = Annotated[
    int | None,
    typer.Option("--size", help="Image side in pixels (default from the card: 28 for Omniglot).",
                 show_default=False),
]


@app.command("list")
def list_command(root: RootOption = None,
                 as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False):
    """Show the registered and imported datasets, their packages, where they live and their
    state, and the plugins that failed to load."""
    from metactl.data.manage import list_datasets
    from metactl.plugins import load_plugins

    statuses = list_datasets(root)
    failures = load_plugins().failures
    if as_json:  # broken plugins are in `metactl plugins list --json`
        print_json([_status_json(status) for status in statuses])
        return
    for status in statuses:
        if status.state == "synthetic":
            typer.echo(f"{status.name:<14} {'synthetic':<13} {status.summary}  "
                       f"[{status.package}]")
            continue
        typer.echo(f"{status.name:<14} {status.state:<13} downloads "
                   f"{human_size(status.download_bytes):>9}  {status.folder}  [{status.package}]")
        for path, size in status.stores:
            typer.echo(f"{'':<14} {'store':<13} {human_size(size):>19}  {path.name}")
    if failures:
        typer.echo("\nBroken plugins (what they register is unavailable):")
        for failure in failures:
            typer.echo(f"  {failure.plugin} [{failure.distribution}]: {failure.error}")


def _status_json(status) -> dict:
    return {"name": status.name, "title": status.title, "summary": status.summary,
            "package": status.package, "state": status.state,
            "folder": str(status.folder) if status.state != "synthetic" else None,
            "download_bytes": status.download_bytes,
            "stores": [{"path": str(p), "bytes": n} for p, n in status.stores]}


@app.command()
def fetch(dataset: DatasetArgument, root: RootOption = None, mirror: MirrorOption = None,
          force: Annotated[bool, typer.Option("--force", help="Download and rebuild "
                                              "everything again.")] = False):
    """Download, verify, extract and preprocess a dataset."""
    from metactl.data.manage import fetch_dataset

    fetch_dataset(dataset, root=root, mirror=mirror, force=force, report=say)


@app.command()
def preprocess(dataset: DatasetArgument, root: RootOption = None, scheme: SchemeOption = None,
               size: SizeOption = None,
               force: Annotated[bool, typer.Option("--force", help="Rebuild an existing "
                                                   "store.")] = False,
               old_scheme: OldSchemeOption = None):
    """Build the HDF5 store of a fetched dataset for a split scheme and image size."""
    from metactl.data.manage import preprocess_dataset

    preprocess_dataset(dataset, root=root, scheme=_scheme(scheme, old_scheme), size=size,
                       force=force, report=say)


@app.command()
def split(
    dataset: DatasetArgument,
    output: Annotated[Path, typer.Option("-o", "--output", help="Episode file to write (JSON).")],
    way: Annotated[int, typer.Option(help="Classes per task.")] = 5,
    shot: Annotated[int, typer.Option(help="Support images per class.")] = 1,
    query: Annotated[int, typer.Option(help="Query images per class.")] = 15,
    episodes: Annotated[int, typer.Option(help="Number of tasks.")] = 1000,
    split_name: Annotated[str, typer.Option("--split", help="train, val or test.")] = "test",
    seed: Annotated[int, typer.Option(help="Random seed; the same seed gives the same file.")] = 0,
    scheme: SchemeOption = None,
    size: SizeOption = None,
    root: RootOption = None,
):
    """Write a fixed episode file so that every algorithm is evaluated on the same tasks."""
    from metactl.data.manage import draw_episodes
    from metactl.errors import check_positive
    from metactl.fileio import check_output_file

    check_positive(query=query)
    check_output_file(output, "--output")
    episode_set = draw_episodes(dataset, split=split_name, way=way, shot=shot, query=query,
                                episodes=episodes, seed=seed, root=root, scheme=scheme, size=size)
    episode_set.save(output)
    say(f"wrote {episode_set.episodes} {way}-way {shot}-shot episodes "
        f"({query} queries per class, {split_name} split, seed {seed}) to {output}")


@app.command()
def info(dataset: DatasetArgument, root: RootOption = None, scheme: SchemeOption = None,
         size: SizeOption = None,
         as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
         old_scheme: OldSchemeOption = None):
    """Print a store's splits, classes, images, shapes and provenance."""
    from metactl.data.hdf5 import open_store
    from metactl.data.manage import layout_for
    from metactl.errors import check_positive

    check_positive(size=size)
    layout = layout_for(dataset, root)
    scheme_name = layout.card.split_scheme(_scheme(scheme, old_scheme)).name
    summary = open_store(layout.store_path(scheme_name, size)).summary()
    if as_json:
        print_json(summary)
        return
    _print_summary(summary)


def _print_summary(summary: dict) -> None:
    typer.echo(f"store:       {summary['path']} ({human_size(summary['size_bytes'])})")
    typer.echo(f"fingerprint: {summary['fingerprint']}")
    typer.echo(f"{'split':<7}{'classes':>9}{'rotations':>11}{'sampling classes':>18}"
               f"{'images':>9}  {'shape':<10}images/class")
    for split in summary["splits"]:
        per_class = split["images_per_class"]
        count = (str(per_class["min"]) if per_class["min"] == per_class["max"]
                 else f"{per_class['min']}-{per_class['max']}")
        shape = "x".join(str(side) for side in split["image_shape"])
        typer.echo(f"{split['name']:<7}{split['classes']:>9}{len(split['rotations']):>11}"
                   f"{split['sampling_classes']:>18}{split['images']:>9}  {shape:<10}{count}")
    typer.echo("provenance:")
    for key, value in summary["provenance"].items():
        if isinstance(value, dict):
            typer.echo(f"  {key}:")
            for inner_key, inner_value in value.items():
                typer.echo(f"    {inner_key}: {inner_value}")
        else:
            typer.echo(f"  {key}: {value}")


@app.command()
def show(
    dataset: DatasetArgument,
    output: Annotated[Path, typer.Option("-o", "--output", help="PNG to write.")] = Path(
        "episode.png"),
    episode: Annotated[int, typer.Option("--episode", help="Which episode of the file "
                                         "(or of the seeded draw) to render.")] = 0,
    episode_file: Annotated[Path | None, typer.Option("--episode-file", help="Render from "
                                                      "this episode file.")] = None,
    way: Annotated[int, typer.Option(help="Classes per task (without --episode-file).")] = 5,
    shot: Annotated[int, typer.Option(help="Support images per class.")] = 1,
    query: Annotated[int, typer.Option(help="Query images per class.")] = 5,
    split_name: Annotated[str, typer.Option("--split", help="train, val or test.")] = "test",
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    root: RootOption = None,
):
    """Render one episode (support and query grid) to a PNG."""
    from metactl.data.episodes import EpisodeSet
    from metactl.data.manage import draw_episodes, open_split
    from metactl.data.render import save_episode_png
    from metactl.errors import UsageError, check_positive
    from metactl.fileio import check_output_file

    if episode < 0:
        raise UsageError(f"--episode must not be negative, got {episode}",
                         "episodes are numbered from 0")
    check_positive(query=query)
    check_output_file(output, "--output")
    if episode_file is not None:
        episode_set = EpisodeSet.load(episode_file)
    else:
        episode_set = draw_episodes(dataset, split=split_name, way=way, shot=shot, query=query,
                                    episodes=episode + 1, seed=seed, root=root)
    if not 0 <= episode < episode_set.episodes:
        raise UsageError(f"--episode {episode} is outside 0..{episode_set.episodes - 1}",
                         "pick an episode the file has")
    data = open_split(episode_set.dataset, episode_set.split, root=root,
                      scheme=episode_set.scheme, size=episode_set.size).unnormalised()
    batches = episode_set.batches(data)
    for _ in range(episode):
        next(batches)
    save_episode_png(next(batches), output)
    say(f"wrote episode {episode} ({episode_set.way}-way {episode_set.shot}-shot, "
        f"{episode_set.query} queries per class) to {output}")


@app.command("import")
def import_command(
    folder: Annotated[Path, typer.Argument(help="Folder of class folders (any image format "
                                           "and size).")],
    name: Annotated[str, typer.Option("--name", help="Name of the new dataset.")],
    split_by: Annotated[str, typer.Option("--split-by", help="class: a seeded random split of "
                                          "the classes; folder: FOLDER/train, val, test hold "
                                          "the class folders.")] = "class",
    size: Annotated[int, typer.Option("--size", help="Side of the stored images.")] = 84,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the class split.")] = 0,
    fractions: Annotated[str, typer.Option("--fractions", help="Shares of the classes for "
                                           "train, val and test (--split-by class).")
                         ] = "0.6,0.2,0.2",
    way: Annotated[int, typer.Option("--way", help="Every split must supply tasks of this "
                                     "many classes.")] = 5,
    min_images: Annotated[int, typer.Option("--min-images", help="Images every class needs "
                                            "at least.")] = 2,
    root: RootOption = None,
):
    """Turn a folder of class folders into a dataset: train, evaluate and predict then work on
    it like on any other (`metactl train prototypical --dataset NAME`)."""
    from metactl.data.folders import ImportRequest, import_folder, parse_fractions

    request = ImportRequest(folder, name, split_by, size, seed, parse_fractions(fractions), way,
                            min_images)
    store = import_folder(request, root=root, report=say)
    say(f"imported {folder} as {name}: {store}")
