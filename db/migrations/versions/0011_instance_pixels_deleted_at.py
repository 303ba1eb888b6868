"""instances.pixels_deleted_at: when retention's deletion of an image's files was done; an index on finished_at

Retention marks an instance purged (purged_at) before it deletes any file, and now keeps the picture paths until
the files are gone: a crash in between leaves the instance pending (purged_at set, pixels_deleted_at null), and the
next pass finds its files by those paths and deletes them, then NULLs the paths and sets pixels_deleted_at. Rows
already purged lost their paths when they were marked, so they get their purged_at (nothing more can be done for
them). Retention selects by finished_at and looks for pending purges every hour: an index on finished_at and a
partial one on the pending rows. Batch mode for SQLite.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-06 09:00:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None

PURGE_PENDING = 'purged_at IS NOT NULL AND pixels_deleted_at IS NULL'  # as db.models.PURGE_PENDING (frozen here)


def upgrade() -> None:
    with op.batch_alter_table('instances', schema=None) as batch_op:
        batch_op.add_column(sa.Column('pixels_deleted_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.create_index(batch_op.f('ix_instances_finished_at'), ['finished_at'], unique=False)
        batch_op.create_index('ix_instances_purge_pending', ['id'], unique=False,
                              sqlite_where=sa.text(PURGE_PENDING), postgresql_where=sa.text(PURGE_PENDING))
    instances = sa.table('instances', sa.column('purged_at', sa.DateTime(timezone=True)),
                         sa.column('pixels_deleted_at', sa.DateTime(timezone=True)))
    op.execute(instances.update().where(instances.c.purged_at.is_not(None))
               .values(pixels_deleted_at=instances.c.purged_at))


def downgrade() -> None:
    with op.batch_alter_table('instances', schema=None) as batch_op:
        batch_op.drop_index('ix_instances_purge_pending')
        batch_op.drop_index(batch_op.f('ix_instances_finished_at'))
        batch_op.drop_column('pixels_deleted_at')
