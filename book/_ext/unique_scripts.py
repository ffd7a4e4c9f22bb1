"""Emit each <script> once per page.

Sphinx 7.4 keeps an inline script added after the builder started twice (once with the file
name None, once with ''), so sphinx-thebe's ``const THEBE_JS_URL`` is declared twice and every
page logs a SyntaxError.
"""


def _unique_scripts(app, pagename, templatename, context, doctree):
    seen, unique = set(), []
    for script in context.get("script_files", []):
        key = (script.filename or "", tuple(sorted(script.attributes.items())))
        if key not in seen:
            seen.add(key)
            unique.append(script)
    context["script_files"] = unique


def setup(app):
    app.connect("html-page-context", _unique_scripts, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
