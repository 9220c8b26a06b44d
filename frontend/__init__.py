"""Static dashboard files (HTML, ES modules, CSS) served by the backend; no build step."""
