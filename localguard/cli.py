"""The `localguard` command line. It only parses options and calls the stages.

Errors the user can fix (LocalguardError) print one line and exit 2; anything else is a bug and
exits 1, with the traceback only under --debug.
"""

from __future__ import annotations

import json
import sys
import traceback
from typing import Any

import click

from localguard import __version__, blas
from localguard.errors import LocalguardError


class GuardedGroup(click.Group):
    """A click group that turns localguard's exceptions into exit codes 2 (user) and 1 (bug)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except LocalguardError as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(2)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except Exception as exc:
            if (ctx.obj or {}).get("debug"):
                traceback.print_exc()
            else:
                click.echo(
                    f"internal error: {type(exc).__name__}: {exc} "
                    "(run with --debug for the traceback)",
                    err=True,
                )
            ctx.exit(1)


@click.group(cls=GuardedGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="localguard")
@click.option("--debug", is_flag=True, help="Show tracebacks of internal errors.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Fine-tune local language models without losing their safety, and guard them at every
    token.

    Start with `localguard doctor`, then `localguard run recipes/demo.toml`.
    """
    ctx.obj = {"debug": debug}


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--no-measure", is_flag=True, help="Skip the matmul throughput measurement.")
def doctor(as_json: bool, no_measure: bool) -> None:
    """Show the platform, MLX device, BLAS, llama.cpp build, caches and package versions."""
    from localguard.doctor import collect, format_report

    report = collect(measure=not no_measure)
    click.echo(json.dumps(report, indent=2) if as_json else format_report(report))


@cli.command()
@click.argument("recipe", type=click.Path(dir_okay=False))
@click.option("--dry-run", is_flag=True, help="Validate the recipe and print the plan only.")
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="SECTION.KEY=VALUE",
    help="Override a recipe value (TOML syntax; repeatable).",
)
def run(recipe: str, dry_run: bool, overrides: tuple[str, ...]) -> None:
    """Run every stage of RECIPE (a TOML file) into its run folder."""
    from localguard.plan import build_plan, format_plan
    from localguard.recipe import load_recipe
    from localguard.runner import run_plan

    loaded = load_recipe(recipe, list(overrides))
    plan = build_plan(loaded)
    click.echo(format_plan(loaded, plan))
    if not dry_run:
        run_plan(loaded, plan)


@cli.group()
def starter() -> None:
    """The starter world: a tiny aligned chat model and its data, built offline."""


@starter.command("build")
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    help="Folder to build into (default: LOCALGUARD_HOME/starter/SIZE-seedN).",
)
@click.option(
    "--size",
    type=click.Choice(["test", "demo"]),
    default="demo",
    show_default=True,
    help="test: builds in about a minute; demo: the aligned model the demo uses.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for data and weights.")
@click.option("--force", is_flag=True, help="Rebuild even when a finished build exists.")
def starter_build(out: str | None, size: str, seed: int, force: bool) -> None:
    """Generate the corpus, train the tokenizer and the model, and report its quality.

    Prints the model folder, which mlx_lm.load and localguard's stages take like any model.
    """
    from pathlib import Path

    from localguard.starter.build import build

    click.echo(build(size, seed, force, Path(out) if out else None))


def main() -> None:
    """Console entry point: arrange a fast BLAS (Linux), then run the CLI."""
    blas.reexec_with_fast_blas()
    cli(prog_name="localguard")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
