"""Sphinx extension: every page loads each of its scripts once.

Under Jupyter Book 1 (sphinx-thebe 0.3) the thebe configuration script is registered twice, so
each page declares `const THEBE_JS_URL` twice and the browser throws on the second one (an
uncaught exception that book/check_site.py reports). This drops exact repeats from a page's
script list, keeping the first.
"""


def _once(app, pagename, templatename, context, doctree):
    scripts = context.get("script_files")
    if not scripts:
        return
    seen, unique = set(), []
    for js in scripts:
        # an inline script's filename is None or "" depending on who registered it
        key = (getattr(js, "filename", js) or "", tuple(sorted(getattr(js, "attributes", {}).items())))
        if key not in seen:
            seen.add(key)
            unique.append(js)
    context["script_files"] = unique


def setup(app):
    app.connect("html-page-context", _once)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
