"""study context and the flag order

The worklist shows each study's context from its headers (patient age in years, sex, modality, institution,
station, the order's priority) and orders unread flagged studies newest flag first, so a study records when its
flag went up. Existing flagged studies get their last result's time as that moment, and existing studies the
modality of their first image (the rest of the context was never stored). Batch mode for SQLite.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01 09:00:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('studies', schema=None) as batch_op:
        batch_op.add_column(sa.Column('patient_age_years', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('patient_sex', sa.String(length=1), nullable=True))
        batch_op.add_column(sa.Column('modality', sa.Text(), nullable=True))
        batch_op.add_column(sa.Column('institution', sa.Text(), nullable=True))
        batch_op.add_column(sa.Column('station', sa.Text(), nullable=True))
        batch_op.add_column(sa.Column('priority', sa.String(length=8), nullable=True))
        batch_op.add_column(sa.Column('flag_raised_at', sa.DateTime(timezone=True), nullable=True))
    studies = sa.table('studies', sa.column('id', sa.Integer()), sa.column('flag', sa.Boolean()),
                       sa.column('flagged_at', sa.DateTime(timezone=True)),
                       sa.column('received_at', sa.DateTime(timezone=True)),
                       sa.column('flag_raised_at', sa.DateTime(timezone=True)), sa.column('modality', sa.Text()))
    instances = sa.table('instances', sa.column('id', sa.Integer()), sa.column('study_id', sa.Integer()),
                         sa.column('modality', sa.Text()))
    op.execute(studies.update().where(studies.c.flag.is_(True))
               .values(flag_raised_at=sa.func.coalesce(studies.c.flagged_at, studies.c.received_at)))
    first_modality = (sa.select(instances.c.modality)
                      .where(instances.c.study_id == studies.c.id, instances.c.modality != '')
                      .order_by(instances.c.id).limit(1).scalar_subquery())
    op.execute(studies.update().values(modality=first_modality))


def downgrade() -> None:
    with op.batch_alter_table('studies', schema=None) as batch_op:
        for column in ('flag_raised_at', 'priority', 'station', 'institution', 'modality', 'patient_sex',
                       'patient_age_years'):
            batch_op.drop_column(column)
