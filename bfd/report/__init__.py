"""Figures and a static dashboard of the named queries' results."""

from bfd.report.dashboard import build_dashboard as build_dashboard
from bfd.report.figures import compare_figure as compare_figure
from bfd.report.figures import depth_overview_figure as depth_overview_figure
from bfd.report.figures import head_map_figure as head_map_figure
from bfd.report.figures import layer_profile_figure as layer_profile_figure
