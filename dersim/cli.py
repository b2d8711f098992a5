"""The `dersim` command line: the top-level group, which assembles the commands each stage
defines."""

from __future__ import annotations

from typing import Any

import click

from dersim.errors import DersimError


class DersimGroup(click.Group):
    """A click group that prints a `DersimError` as one line and exits with status 2."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except DersimError as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(2)


@click.group(cls=DersimGroup)
@click.version_option(package_name="dersim")
def main() -> None:
    """dersim: Dynamic Ensemble Reasoning (DER) over an exact offline cache of LLM expert answers.

    Build a cache once (every expert on every question and on every distinct previous answer),
    then replay routes from it as array lookups.
    """


def _register_commands() -> None:
    """Commands defined next to the stage they drive (builder, cache, importers, trainer,
    evaluation, routers, experiments, live routing)."""
    from dersim.builder.commands import build_cache_command, models_group
    from dersim.cache.commands import cache_group
    from dersim.evaluation.commands import eval_command
    from dersim.experiments.commands import reproduce_command
    from dersim.importers.commands import import_group
    from dersim.live.commands import route_command, serve_command
    from dersim.routers.commands import routers_command
    from dersim.trainer.commands import train_command

    cache_group.add_command(import_group)
    main.add_command(build_cache_command)
    main.add_command(cache_group)
    main.add_command(models_group)
    main.add_command(train_command)
    main.add_command(eval_command)
    main.add_command(route_command)
    main.add_command(serve_command)
    main.add_command(routers_command)
    main.add_command(reproduce_command)


_register_commands()
