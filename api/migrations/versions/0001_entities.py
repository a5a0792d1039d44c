"""The entity table: every resource as one row (kind, id, namespace, name, timestamps, the wire JSON).

This is the schema the API created before its migrations existed: a database made then is stamped
with this revision when first opened, and upgraded from it.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "entities",
        sa.Column("id", sa.String(128), primary_key=True),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("namespace", sa.String(256), nullable=False),
        sa.Column("name", sa.String(512), nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("updated_at", sa.DateTime, nullable=False),
        sa.Column("data", sa.JSON, nullable=False),
        sa.UniqueConstraint("kind", "namespace", "name", name="uq_kind_namespace_name"),
    )
    op.create_index("ix_entities_kind", "entities", ["kind"])


def downgrade() -> None:
    op.drop_index("ix_entities_kind", table_name="entities")
    op.drop_table("entities")
