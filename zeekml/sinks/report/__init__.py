"""Reports of one run's output directory: a self-contained HTML file and a terminal view."""
from zeekml.sinks.report.html import render_html, write_html
from zeekml.sinks.report.run import RunData, load_run
from zeekml.sinks.report.terminal import print_incidents

__all__ = ["RunData", "load_run", "print_incidents", "render_html", "write_html"]
