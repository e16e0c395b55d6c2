"""The hub process: stations, content, schedules, signed bundles, reports."""
