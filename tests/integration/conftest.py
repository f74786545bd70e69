# The database fixtures of the `dpokit label` tests (label_db.py), available to every test in this folder.
from label_db import label_db, postgres_server  # noqa: F401
