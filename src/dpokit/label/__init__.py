"""`dpokit label`: a self-hosted preference-labeling app.

A project is a folder (PROJECT/label.db, or a PostgreSQL URL in PROJECT/project.yaml) holding prompts, candidate
responses, comparisons, annotators, their assignments and judgments (store). Candidates are imported or generated
(candidates), annotators compare them in the browser (server, tasks), the admin page measures agreement (agreement,
stats), and export writes the pairs `dpokit dpo` trains on (export).
"""
