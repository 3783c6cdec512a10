"""Small Sphinx fixes for the book (loaded through ``local_extensions`` in _config.yml)."""

from __future__ import annotations


def _drop_repeated_scripts(app, pagename, templatename, context, doctree) -> None:
    """sphinx-thebe adds its inline settings script once more per page under Sphinx 7.4; a
    second copy redeclares its constants and the browser reports an error on every page."""
    scripts = context.get("script_files")
    if not scripts:
        return
    seen, kept = set(), []
    for script in scripts:
        # the copies differ in priority only: compare what the page would load or run
        key = (str(getattr(script, "filename", script) or ""),
               getattr(script, "attributes", {}).get("body"))
        if key not in seen:
            seen.add(key)
            kept.append(script)
    scripts[:] = kept


def setup(app):
    app.connect("html-page-context", _drop_repeated_scripts, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
