"""ZoomDx: the Look-Closer-Then-Diagnose method as a tested library for the workbook notebooks."""
__version__ = "0.1.0"
