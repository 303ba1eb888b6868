"""instances.purged_at: when the retention policy removed an image's pixels

With TRIAGE_RETENTION_DAYS set, a read study's spooled DICOM copy and its preview, heat map and full-size PNGs are
deleted once they are old enough; the row, its result and the spool path (a record of where the copy was) stay, and
purged_at says when the pictures went, so the API answers 410 Gone instead of a bare 404. A re-sent copy clears it.
Null for every existing row (nothing was ever purged). Batch mode for SQLite.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06 07:30:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('instances', schema=None) as batch_op:
        batch_op.add_column(sa.Column('purged_at', sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('instances', schema=None) as batch_op:
        batch_op.drop_column('purged_at')
