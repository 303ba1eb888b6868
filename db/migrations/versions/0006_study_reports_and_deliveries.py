"""study reports and their deliveries

Results go back to the PACS (DICOM SR by C-STORE or STOW-RS) and the RIS (HL7 ORU): one row per report version of a
study, one per (version, destination) in the delivery outbox, and a flag on studies whose result may need a new
version.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30 10:20:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('studies', schema=None) as batch_op:
        batch_op.add_column(sa.Column('report_due', sa.Boolean(), server_default='0', nullable=False))
        batch_op.create_index(batch_op.f('ix_studies_report_due'), ['report_due'], unique=False)
    op.create_table('study_reports',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('study_id', sa.Integer(), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('signature', sa.String(length=64), nullable=False),
    sa.Column('snapshot', sa.JSON(), nullable=False),
    sa.Column('series_instance_uid', sa.String(length=64), nullable=False),
    sa.Column('sop_instance_uid', sa.String(length=64), nullable=False),
    sa.Column('files', sa.JSON(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['study_id'], ['studies.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('sop_instance_uid'),
    sa.UniqueConstraint('study_id', 'version', name='uq_study_reports_study_version')
    )
    with op.batch_alter_table('study_reports', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_study_reports_study_id'), ['study_id'], unique=False)
    op.create_table('deliveries',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('report_id', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('destination', sa.String(length=512), nullable=False),
    sa.Column('status', sa.Enum('PENDING', 'SENDING', 'DELIVERED', 'DEAD', 'SUPERSEDED', name='delivery_status',
                                native_enum=False, length=16), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('next_attempt_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('claimed_until', sa.DateTime(timezone=True), nullable=True),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('delivered_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['report_id'], ['study_reports.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('report_id', 'destination', name='uq_deliveries_report_destination')
    )
    with op.batch_alter_table('deliveries', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_deliveries_report_id'), ['report_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_deliveries_status'), ['status'], unique=False)
        batch_op.create_index(batch_op.f('ix_deliveries_next_attempt_at'), ['next_attempt_at'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('deliveries', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_deliveries_next_attempt_at'))
        batch_op.drop_index(batch_op.f('ix_deliveries_status'))
        batch_op.drop_index(batch_op.f('ix_deliveries_report_id'))
    op.drop_table('deliveries')
    with op.batch_alter_table('study_reports', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_study_reports_study_id'))
    op.drop_table('study_reports')
    with op.batch_alter_table('studies', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_studies_report_due'))
        batch_op.drop_column('report_due')
