"""full-size display image

The study page's zoom shows the display image the model saw at its full resolution, not the 512 px preview: the
worker keeps it as a PNG beside the preview and records its path. Older instances have none (the zoom falls back
to the preview). Batch mode for SQLite.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06 05:10:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('instances', schema=None) as batch_op:
        batch_op.add_column(sa.Column('display_path', sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('instances', schema=None) as batch_op:
        batch_op.drop_column('display_path')
