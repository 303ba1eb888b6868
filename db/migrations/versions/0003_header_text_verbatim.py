"""header text kept verbatim

PostgreSQL refused instances whose header text broke a VR length (a 100-character PatientID, a 20-character
Modality): the listener answered 0xA700 "retry" forever for data that could never be stored. Header text columns
become TEXT, so any value is kept as sent (UIDs stay 64: longer ones are refused with 0xC212 before they get here).
On SQLite the lengths were never enforced; batch mode rebuilds the tables there.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30 07:30:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None

WIDENED = {
    'studies': {'patient_name': 324, 'patient_id': 64, 'accession_number': 64, 'study_description': 256},
    'instances': {'modality': 16, 'body_part': 64, 'view_position': 16},
}


def upgrade() -> None:
    for table, columns in WIDENED.items():
        with op.batch_alter_table(table, schema=None) as batch_op:
            for column, length in columns.items():
                batch_op.alter_column(column, existing_type=sa.String(length), type_=sa.Text(),
                                      existing_nullable=False)


def downgrade() -> None:
    for table, columns in WIDENED.items():
        with op.batch_alter_table(table, schema=None) as batch_op:
            for column, length in columns.items():
                batch_op.alter_column(column, existing_type=sa.Text(), type_=sa.String(length),
                                      existing_nullable=False)
