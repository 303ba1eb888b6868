"""association refusals

Associations the listener turns away before any C-STORE (calling AE title not allowed, wrong called AE title, the
association limit, a non-loopback caller with no allowlist) get a durable row, so /metrics can count them and a
person can see which sender is misconfigured.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06 05:00:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'association_refusals',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('refused_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('reason', sa.String(length=32), nullable=False),
        sa.Column('calling_ae', sa.String(length=16), nullable=False),
        sa.Column('called_ae', sa.String(length=16), nullable=False),
        sa.Column('peer', sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint('id'),
    )


def downgrade() -> None:
    op.drop_table('association_refusals')
