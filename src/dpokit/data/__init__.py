"""Data loading: any accepted file and row shape → checked ``PreferencePair``s."""
from dpokit.data.io import Record, read_records
from dpokit.data.validate import LoadReport, Problem, format_report, load_pairs

__all__ = ["LoadReport", "Problem", "Record", "format_report", "load_pairs", "read_records"]
