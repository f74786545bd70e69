"""The first schema of a labeling project: prompts, responses, comparisons, annotators, assignments, judgments.

Revision ID: 0001
Revises:
Create Date: 2026-12-02
"""
from alembic import op
import sqlalchemy as sa


revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table("annotators",
    sa.Column("id", sa.Integer(), nullable=False),
    sa.Column("name", sa.String(length=64), nullable=False),
    sa.Column("password_hash", sa.String(length=300), nullable=False),
    sa.Column("is_admin", sa.Boolean(), nullable=False),
    sa.Column("failed_logins", sa.Integer(), nullable=False),
    sa.Column("last_failed_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint("id", name=op.f("pk_annotators")),
    sa.UniqueConstraint("name", name=op.f("uq_annotators_name"))
    )
    op.create_table("prompts",
    sa.Column("id", sa.Integer(), nullable=False),
    sa.Column("text", sa.Text(), nullable=True),
    sa.Column("messages_json", sa.Text(), nullable=True),
    sa.Column("source", sa.String(length=500), nullable=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint("id", name=op.f("pk_prompts"))
    )
    op.create_table("settings",
    sa.Column("key", sa.String(length=64), nullable=False),
    sa.Column("value", sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint("key", name=op.f("pk_settings"))
    )
    op.create_table("comparisons",
    sa.Column("id", sa.Integer(), nullable=False),
    sa.Column("prompt_id", sa.Integer(), nullable=False),
    sa.Column("kind", sa.String(length=8), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(["prompt_id"], ["prompts.id"], name=op.f("fk_comparisons_prompt_id_prompts")),
    sa.PrimaryKeyConstraint("id", name=op.f("pk_comparisons"))
    )
    with op.batch_alter_table("comparisons", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_comparisons_prompt_id"), ["prompt_id"], unique=False)

    op.create_table("responses",
    sa.Column("id", sa.Integer(), nullable=False),
    sa.Column("prompt_id", sa.Integer(), nullable=False),
    sa.Column("text", sa.Text(), nullable=False),
    sa.Column("model", sa.String(length=500), nullable=True),
    sa.Column("settings_json", sa.Text(), nullable=True),
    sa.Column("seed", sa.Integer(), nullable=True),
    sa.Column("truncated", sa.Boolean(), nullable=False),
    sa.Column("source", sa.String(length=500), nullable=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(["prompt_id"], ["prompts.id"], name=op.f("fk_responses_prompt_id_prompts")),
    sa.PrimaryKeyConstraint("id", name=op.f("pk_responses"))
    )
    with op.batch_alter_table("responses", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_responses_prompt_id"), ["prompt_id"], unique=False)

    op.create_table("assignments",
    sa.Column("id", sa.Integer(), nullable=False),
    sa.Column("comparison_id", sa.Integer(), nullable=False),
    sa.Column("annotator_id", sa.Integer(), nullable=False),
    sa.Column("shown_order_json", sa.Text(), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(["annotator_id"], ["annotators.id"], name=op.f("fk_assignments_annotator_id_annotators")),
    sa.ForeignKeyConstraint(["comparison_id"], ["comparisons.id"], name=op.f("fk_assignments_comparison_id_comparisons")),
    sa.PrimaryKeyConstraint("id", name=op.f("pk_assignments")),
    sa.UniqueConstraint("comparison_id", "annotator_id", name="uq_assignment_once")
    )
    with op.batch_alter_table("assignments", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_assignments_annotator_id"), ["annotator_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_assignments_comparison_id"), ["comparison_id"], unique=False)

    op.create_table("comparison_responses",
    sa.Column("comparison_id", sa.Integer(), nullable=False),
    sa.Column("position", sa.Integer(), nullable=False),
    sa.Column("response_id", sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(["comparison_id"], ["comparisons.id"], name=op.f("fk_comparison_responses_comparison_id_comparisons")),
    sa.ForeignKeyConstraint(["response_id"], ["responses.id"], name=op.f("fk_comparison_responses_response_id_responses")),
    sa.PrimaryKeyConstraint("comparison_id", "position", name=op.f("pk_comparison_responses"))
    )
    op.create_table("judgments",
    sa.Column("id", sa.Integer(), nullable=False),
    sa.Column("assignment_id", sa.Integer(), nullable=False),
    sa.Column("comparison_id", sa.Integer(), nullable=False),
    sa.Column("annotator_id", sa.Integer(), nullable=False),
    sa.Column("choice", sa.String(length=16), nullable=False),
    sa.Column("ranking_json", sa.Text(), nullable=True),
    sa.Column("chosen_response_id", sa.Integer(), nullable=True),
    sa.Column("strength", sa.String(length=16), nullable=True),
    sa.Column("reason", sa.Text(), nullable=True),
    sa.Column("edited_text", sa.Text(), nullable=True),
    sa.Column("seconds", sa.Float(), nullable=True),
    sa.Column("shown_order_json", sa.Text(), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("undone_at", sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(["annotator_id"], ["annotators.id"], name=op.f("fk_judgments_annotator_id_annotators")),
    sa.ForeignKeyConstraint(["assignment_id"], ["assignments.id"], name=op.f("fk_judgments_assignment_id_assignments")),
    sa.ForeignKeyConstraint(["chosen_response_id"], ["responses.id"], name=op.f("fk_judgments_chosen_response_id_responses")),
    sa.ForeignKeyConstraint(["comparison_id"], ["comparisons.id"], name=op.f("fk_judgments_comparison_id_comparisons")),
    sa.PrimaryKeyConstraint("id", name=op.f("pk_judgments"))
    )
    with op.batch_alter_table("judgments", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_judgments_annotator_id"), ["annotator_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_judgments_comparison_id"), ["comparison_id"], unique=False)
        batch_op.create_index("uq_live_judgment", ["assignment_id"], unique=True, sqlite_where=sa.text("undone_at IS NULL"), postgresql_where=sa.text("undone_at IS NULL"))



def downgrade() -> None:
    with op.batch_alter_table("judgments", schema=None) as batch_op:
        batch_op.drop_index("uq_live_judgment", sqlite_where=sa.text("undone_at IS NULL"), postgresql_where=sa.text("undone_at IS NULL"))
        batch_op.drop_index(batch_op.f("ix_judgments_comparison_id"))
        batch_op.drop_index(batch_op.f("ix_judgments_annotator_id"))

    op.drop_table("judgments")
    op.drop_table("comparison_responses")
    with op.batch_alter_table("assignments", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_assignments_comparison_id"))
        batch_op.drop_index(batch_op.f("ix_assignments_annotator_id"))

    op.drop_table("assignments")
    with op.batch_alter_table("responses", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_responses_prompt_id"))

    op.drop_table("responses")
    with op.batch_alter_table("comparisons", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_comparisons_prompt_id"))

    op.drop_table("comparisons")
    op.drop_table("settings")
    op.drop_table("prompts")
    op.drop_table("annotators")
