"""The report base moved to converters/reporting.py (shared with the conversion report); these
names stay importable from here."""
from ..reporting import Report, fmt, html_table, text_table

__all__ = ["Report", "fmt", "html_table", "text_table"]
