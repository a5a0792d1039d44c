"""An index on (kind, created_at): every listing reads one kind's rows in creation order.

Revision ID: 0002
Revises: 0001
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_entities_kind_created_at", "entities", ["kind", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_entities_kind_created_at", table_name="entities")
