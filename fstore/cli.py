"""The ``fstore`` command line: one entry point for every job.

Each subcommand lives in ``fstore/commands/<name>.py`` and imports its heavy dependencies (Delta, Kafka,
Spark, Feast) inside the command body, so ``fstore --help`` stays fast.
"""

from __future__ import annotations

import click

from examples.synth.cli import generate
from fstore import __version__
from fstore.commands.apply import apply, plan
from fstore.commands.backfill import backfill
from fstore.commands.batch import batch
from fstore.commands.check_consistency import check_consistency
from fstore.commands.compact import compact
from fstore.commands.ingest import ingest
from fstore.commands.publish import publish
from fstore.commands.repair import repair
from fstore.commands.schedule import schedule
from fstore.commands.serve import serve
from fstore.commands.services import services
from fstore.commands.stream import stream


class _Main(click.Group):
    """The command group; an invalid ``FSTORE_*`` setting is a user's mistake: one line naming the
    variable (``Error: invalid settings: FSTORE_API_PORT: ...``, exit code 1), not a traceback. Commands
    with an exit code of their own for it (``fstore batch``: 78) catch it first."""

    def invoke(self, ctx: click.Context) -> object:
        from fstore.settings import SettingsError

        try:
            return super().invoke(ctx)
        except SettingsError as exc:
            raise click.ClickException(str(exc)) from None


@click.group(cls=_Main, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="fstore")
def main() -> None:
    """fstore — a Lambda-architecture feature store (Kafka + Faust speed layer, Spark batch layer,
    Redis online store, Delta Lake offline store, Feast registry).

    Configuration comes from FSTORE_* environment variables and .fstore/services.env (written by
    `fstore services up`). Run `fstore COMMAND --help` for the options of each command.
    """


_COMMANDS = (
    services,
    plan,
    apply,
    backfill,
    generate,
    publish,
    ingest,
    stream,
    batch,
    compact,
    serve,
    check_consistency,
    repair,
    schedule,
)
for _cmd in _COMMANDS:
    main.add_command(_cmd)
