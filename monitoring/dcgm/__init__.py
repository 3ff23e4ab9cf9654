"""dcgm-exporter configuration: the counters it exports and their parser."""
