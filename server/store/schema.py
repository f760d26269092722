"""Run-store tables and their versioned migrations.

The tables below are the *current* schema, defined once. Each migration names the tables and
columns it introduced, so the schema as of any older version is derived from the same
definitions (a column added by migration 3 is left out when building version 2). Opening a
store applies every migration above the version recorded in `schema_version`, in order.
Times are UTC epoch seconds (float); node ids are strings (Flower's are unsigned 64-bit).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import sqlalchemy as sa
from sqlalchemy.schema import CreateColumn

metadata = sa.MetaData()

schema_version = sa.Table(
    "schema_version",
    metadata,
    sa.Column("version", sa.Integer, nullable=False),
)

runs = sa.Table(
    "runs",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("state", sa.String(20), nullable=False),
    sa.Column("config", sa.JSON, nullable=False),
    sa.Column("num_rounds", sa.Integer, nullable=True),
    sa.Column("started_at", sa.Float, nullable=False),
    sa.Column("ended_at", sa.Float, nullable=True),
    sa.Column("current_round", sa.Integer, nullable=True),
    sa.Column("current_phase", sa.String(40), nullable=True),
)

rounds = sa.Table(
    "rounds",
    metadata,
    sa.Column("run_id", sa.Integer, sa.ForeignKey("runs.id"), primary_key=True),
    sa.Column("round", sa.Integer, primary_key=True),
    sa.Column("phase", sa.String(40), nullable=False),
    sa.Column("started_at", sa.Float, nullable=False),
    sa.Column("ended_at", sa.Float, nullable=True),
    sa.Column("seconds", sa.Float, nullable=True),
)

tasks = sa.Table(
    "tasks",
    metadata,
    sa.Column("run_id", sa.Integer, sa.ForeignKey("runs.id"), primary_key=True),
    sa.Column("task", sa.String(80), primary_key=True),
    sa.Column("first_round", sa.Integer, nullable=True),
)

clients = sa.Table(
    "clients",
    metadata,
    sa.Column("run_id", sa.Integer, sa.ForeignKey("runs.id"), primary_key=True),
    sa.Column("site_id", sa.String(120), primary_key=True),
    sa.Column("node_id", sa.String(40), nullable=True),
    sa.Column("task", sa.String(80), nullable=True),
    sa.Column("first_seen", sa.Float, nullable=False),
    sa.Column("last_seen", sa.Float, nullable=False),
    sa.Column("online", sa.Boolean, nullable=False, server_default=sa.true()),
)

task_metrics = sa.Table(
    "task_metrics",
    metadata,
    sa.Column("run_id", sa.Integer, sa.ForeignKey("runs.id"), primary_key=True),
    sa.Column("round", sa.Integer, primary_key=True),
    sa.Column("task", sa.String(80), primary_key=True),
    sa.Column("name", sa.String(80), primary_key=True),
    sa.Column("value", sa.Float, nullable=True),
)

client_rounds = sa.Table(
    "client_rounds",
    metadata,
    sa.Column("run_id", sa.Integer, sa.ForeignKey("runs.id"), primary_key=True),
    sa.Column("round", sa.Integer, primary_key=True),
    sa.Column("site_id", sa.String(120), primary_key=True),
    sa.Column("node_id", sa.String(40), nullable=True),
    sa.Column("task", sa.String(80), nullable=True),
    sa.Column("num_examples", sa.Integer, nullable=False),
    sa.Column("bytes_in", sa.BigInteger, nullable=False),
    sa.Column("bytes_out", sa.BigInteger, nullable=False),
    sa.Column("metrics", sa.JSON, nullable=False),
    sa.Column("dropped", sa.String(200), nullable=True),
    sa.Column("failed", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("recorded_at", sa.Float, nullable=False),
)

body_throughput = sa.Table(
    "body_throughput",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("run_id", sa.Integer, sa.ForeignKey("runs.id"), nullable=False, index=True),
    sa.Column("round", sa.Integer, nullable=False),
    sa.Column("tokens_per_s", sa.Float, nullable=False),
    sa.Column("steps", sa.Integer, nullable=False),
    sa.Column("recorded_at", sa.Float, nullable=False),
)

restoration = sa.Table(
    "restoration",
    metadata,
    sa.Column("run_id", sa.Integer, sa.ForeignKey("runs.id"), primary_key=True),
    sa.Column("round", sa.Integer, primary_key=True),
    sa.Column("site_id", sa.String(120), primary_key=True),
    sa.Column("restored", sa.Integer, nullable=False),
    sa.Column("pending", sa.Integer, nullable=False),
    sa.Column("quarantined", sa.Integer, nullable=False),
    sa.Column("recorded_at", sa.Float, nullable=False),
)

events = sa.Table(
    "events",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("run_id", sa.Integer, sa.ForeignKey("runs.id"), nullable=False, index=True),
    sa.Column("at", sa.Float, nullable=False),
    sa.Column("kind", sa.String(40), nullable=False),
    sa.Column("message", sa.Text, nullable=False),
    sa.Column("node_id", sa.String(40), nullable=True),
    sa.Column("site_id", sa.String(120), nullable=True),
)

checkpoints = sa.Table(
    "checkpoints",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("run_id", sa.Integer, sa.ForeignKey("runs.id"), nullable=False, index=True),
    sa.Column("round", sa.Integer, nullable=False),
    sa.Column("path", sa.Text, nullable=False),
    sa.Column("at", sa.Float, nullable=False),
)

admin_actions = sa.Table(
    "admin_actions",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("run_id", sa.Integer, sa.ForeignKey("runs.id"), nullable=False, index=True),
    sa.Column("kind", sa.String(20), nullable=False),
    sa.Column("site_id", sa.String(120), nullable=True),
    sa.Column("requested_at", sa.Float, nullable=False),
    sa.Column("done_at", sa.Float, nullable=True),
)


@dataclass(frozen=True)
class Migration:
    """One schema step: tables it creates, columns it adds to older tables, extra work."""

    version: int
    description: str
    add_tables: tuple[str, ...] = ()
    add_columns: dict[str, tuple[str, ...]] = field(default_factory=dict)
    extra: Callable[[sa.Connection], None] | None = None


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "initial run store",
        add_tables=(
            "runs",
            "rounds",
            "tasks",
            "clients",
            "task_metrics",
            "client_rounds",
            "body_throughput",
            "restoration",
            "events",
            "checkpoints",
        ),
    ),
    Migration(
        2,
        "admin actions; client liveness; failed rounds apart from dropped ones",
        add_tables=("admin_actions",),
        add_columns={"clients": ("online",), "client_rounds": ("failed",)},
    ),
)

SCHEMA_VERSION = MIGRATIONS[-1].version


def _columns_added_after(version: int) -> dict[str, set[str]]:
    later: dict[str, set[str]] = {}
    for step in MIGRATIONS:
        if step.version > version:
            for table, cols in step.add_columns.items():
                later.setdefault(table, set()).update(cols)
    return later


def _table_as_of(name: str, version: int, into: sa.MetaData) -> sa.Table:
    """`name` as it looked at `version`: the current definition minus later columns."""
    current = metadata.tables[name]
    skip = _columns_added_after(version).get(name, set())
    # Column._copy is what Table.to_metadata uses; it keeps types, keys, defaults, indexes.
    return sa.Table(name, into, *[c._copy() for c in current.columns if c.name not in skip])


def _apply(conn: sa.Connection, step: Migration) -> None:
    md = sa.MetaData()
    for name in step.add_tables:
        _table_as_of(name, step.version, md).create(conn)
    for table, cols in step.add_columns.items():
        for col_name in cols:
            col = metadata.tables[table].c[col_name]._copy()
            ddl = CreateColumn(col).compile(dialect=conn.dialect)
            conn.execute(sa.text(f"ALTER TABLE {table} ADD COLUMN {ddl}"))
    if step.extra is not None:
        step.extra(conn)


class SchemaTooNewError(RuntimeError):
    """The store was written by a newer festa than this one; refusing to touch it."""


def current_version(conn: sa.Connection) -> int:
    """Schema version recorded in the database (0 for an empty database)."""
    if not sa.inspect(conn).has_table("schema_version"):
        return 0
    value = conn.execute(sa.select(sa.func.max(schema_version.c.version))).scalar()
    return int(value or 0)


def migrate(conn: sa.Connection, target: int = SCHEMA_VERSION) -> int:
    """Bring the database up to `target`, one migration at a time; returns the new version.

    Raises SchemaTooNewError when the database is already beyond what this code knows.
    """
    found = current_version(conn)
    if found > SCHEMA_VERSION:
        raise SchemaTooNewError(
            f"run store has schema version {found}, this festa knows up to {SCHEMA_VERSION}; "
            "upgrade festa to read it"
        )
    if found == 0:
        schema_version.create(conn, checkfirst=True)
    for step in MIGRATIONS:
        if found < step.version <= target:
            _apply(conn, step)
            conn.execute(sa.delete(schema_version))
            conn.execute(sa.insert(schema_version).values(version=step.version))
            found = step.version
    return found
